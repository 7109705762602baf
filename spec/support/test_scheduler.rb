# frozen_string_literal: true

require "fiber"
require "io/nonblock"

# A small Fiber scheduler for specs: IO.select over the fds fibers wait on,
# sleeps and block/unblock. Enough to prove the rings wait through
# Fiber.scheduler instead of blocking the thread. Written here so the specs
# do not depend on one gem's scheduler only.
class TestScheduler
  def initialize
    @readable = {}   # io => fiber
    @writable = {}
    @waiting = {}    # fiber => wake-up time
    @ready = []
    @blocked = 0
    @timeouts = []   # [deadline, fiber, exception class, message] (Timeout.timeout)
    @raises = []     # [fiber, exception] queued by #cancel
    @lock = Thread::Mutex.new
    @wake_r, @wake_w = IO.pipe
    @closed = false
  end

  def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def run
    while @readable.any? || @writable.any? || @waiting.any? || @blocked.positive? || @ready.any? || @raises.any?
      timeout = @ready.any? || @raises.any? ? 0 : next_timeout
      r, w, = IO.select([@wake_r, *@readable.keys], @writable.keys, [], timeout)
      @wake_r.read_nonblock(64, exception: false) if r&.delete(@wake_r)
      r&.each { |io| resume(@readable.delete(io)) }
      w&.each { |io| resume(@writable.delete(io)) }
      due = @waiting.select { |_, t| t <= now }.keys
      due.each { |f| @waiting.delete(f); resume(f) }
      ready = @lock.synchronize { @ready.slice!(0..) }
      ready.each { |f| resume(f) }
      fire_timeouts
      @raises.slice!(0..).each { |f, e| f.raise(e) if f.alive? }
    end
  end

  # Raises +exception+ in +fiber+ (suspended in a wait) from the run loop,
  # as a scheduler cancelling a task does (Async's Task#stop).
  def cancel(fiber, exception = Cancelled)
    @raises << [fiber, exception]
  end

  class Cancelled < StandardError; end

  # Timeout.timeout under this scheduler (Ruby calls it when defined): the
  # exception is raised in the fiber from the run loop, wherever it waits.
  def timeout_after(duration, klass, message)
    entry = [now + duration, Fiber.current, klass, message]
    @timeouts << entry
    yield duration
  ensure
    @timeouts.delete(entry)
  end

  def fire_timeouts
    due = @timeouts.select { |t, *| t <= now }
    due.each do |entry|
      @timeouts.delete(entry)
      _, fiber, klass, message = entry
      fiber.raise(klass, message) if fiber.alive?
    end
  end

  def resume(fiber)
    fiber.resume if fiber&.alive?
  end

  def next_timeout
    t = (@waiting.values + @timeouts.map(&:first)).min
    return nil unless t

    [t - now, 0].max
  end

  def close
    return if @closed

    run
    @closed = true
    @wake_r.close
    @wake_w.close
  end

  def closed? = @closed

  def fiber(&block)
    f = Fiber.new(blocking: false, &block)
    f.resume
    f
  end

  def io_wait(io, events, timeout)
    fiber = Fiber.current
    @readable[io] = fiber if events.anybits?(IO::READABLE)
    @writable[io] = fiber if events.anybits?(IO::WRITABLE)
    @waiting[fiber] = now + timeout if timeout
    Fiber.yield
    events
  ensure
    @readable.delete(io)
    @writable.delete(io)
    @waiting.delete(fiber)
  end

  def kernel_sleep(duration = nil)
    fiber = Fiber.current
    @waiting[fiber] = now + duration if duration
    @blocked += 1 unless duration
    Fiber.yield
  ensure
    @waiting.delete(fiber)
    @blocked -= 1 unless duration
  end

  def block(_blocker, timeout = nil)
    fiber = Fiber.current
    if timeout
      @waiting[fiber] = now + timeout
    else
      @blocked += 1
    end
    Fiber.yield
  ensure
    @waiting.delete(fiber)
    @blocked -= 1 unless timeout
  end

  def unblock(_blocker, fiber)
    @lock.synchronize { @ready << fiber }
    @wake_w.write_nonblock(".", exception: false)
  end

  def address_resolve(hostname)
    Addrinfo.getaddrinfo(hostname, nil).map(&:ip_address).uniq
  end
end
