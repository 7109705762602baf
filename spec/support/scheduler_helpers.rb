# frozen_string_literal: true

begin
  require "async"
  require "io/event"
rescue LoadError => e
  ASYNC_LOAD_ERROR = e
end

# Running spec code inside a Fiber scheduler: spec/support's TestScheduler,
# or the async gem's (with io-event's URing or EPoll selector). Each run gets
# a thread of its own, so rings, schedulers and a hang stay there; the run
# is bounded and its exception re-raised in the example.
module SchedulerHelpers
  # [name, description] of every scheduler the behaviour specs run under.
  SCHEDULERS = [
    [:test, "spec/support's TestScheduler"],
    [:async_uring, "async (io-event URing selector)"],
    [:async_epoll, "async (io-event EPoll selector)"]
  ].freeze

  # Skips (with the reason) when +kind+ cannot run here.
  def require_scheduler!(kind)
    return if kind == :test

    environment_skip "async not loadable: #{ASYNC_LOAD_ERROR.message}" if defined?(ASYNC_LOAD_ERROR)
    if !IO.method_defined?(:timeout) && Gem::Version.new(Async::VERSION) >= Gem::Version.new("2.24")
      # async 2.24.0 claims Ruby >= 3.1 but its io_wait calls IO#timeout
      # (Ruby 3.2+) whenever the wait has no timeout: NoMethodError in every
      # such wait. The Gemfile pins ~> 2.23.0 there; this is a run outside Bundler.
      skip "async #{Async::VERSION} calls IO#timeout, which Ruby #{RUBY_VERSION} lacks (use async ~> 2.23.0: bundle exec)"
    end
    selector = kind == :async_uring ? :URing : :EPoll
    return if IO::Event::Selector.const_defined?(selector)

    # io-event decides when it is compiled: a bundle installed before
    # liburing-dev keeps an io-event without URing (`gem pristine io-event
    # --extensions` rebuilds it).
    environment_skip "io-event was built without its #{selector} selector (no liburing when it was compiled?)"
  end

  # Runs the block as a non-blocking fiber under a fresh scheduler of +kind+
  # on a new thread and returns its value. Fails when the whole run (the
  # block and every fiber it scheduled) takes longer than +limit+ seconds.
  def run_scheduled(kind, limit: 5, &block)
    require_scheduler!(kind)
    result = error = nil
    thread = Thread.new do
      Thread.current.report_on_exception = false
      result = kind == :test ? run_test_scheduler(&block) : run_async(kind, &block)
    rescue Exception => e # rubocop:disable Lint/RescueException
      error = e
    end
    unless thread.join(limit)
      thread.kill
      thread.join(1)
      raise "scheduler run (#{kind}) did not finish within #{limit}s: a fiber is stuck"
    end
    raise error if error

    result
  end

  # Starts a fiber beside the current one under the current scheduler (an
  # Async::Task under async). Returns the Fiber.
  def spawn_fiber(&block)
    Fiber.schedule(&block)
  end

  # Cancels a fiber parked in a wait, the way the scheduler would: Async's
  # Task#stop (Async::Stop), or TestScheduler#cancel.
  def cancel_fiber(fiber)
    if defined?(Async::Task) && fiber.respond_to?(:async_task) && fiber.async_task
      fiber.async_task.stop
    else
      Fiber.scheduler.cancel(fiber)
    end
  end

  # The exception #cancel_fiber raises in the cancelled fiber.
  def cancel_exception_class
    if defined?(Async::Scheduler) && Fiber.scheduler.is_a?(Async::Scheduler)
      Async::Stop
    else
      TestScheduler::Cancelled
    end
  end

  # Waits (scheduler-friendly sleeps) until the block is truthy, at most
  # +seconds+; returns the block's last value.
  def wait_until(seconds = 2, step: 0.005)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
    until (value = yield)
      break if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep step
    end
    value
  end

  # A fiber that records the time of each tick (every +interval+ seconds)
  # until #stop. Under a scheduler that lets waits block the thread, its
  # ticks stop while another fiber waits.
  class Ticker
    attr_reader :ticks, :interval

    def initialize(interval: 0.01, max_ticks: 2000)
      @interval = interval
      @ticks = []
      @stop = false
      @fiber = Fiber.schedule do
        until @stop || @ticks.size >= max_ticks
          @ticks << Process.clock_gettime(Process::CLOCK_MONOTONIC)
          sleep interval
        end
      end
    end

    def stop
      @stop = true
    end

    # Ticks in [t0, t1], and the longest gap between consecutive ticks there
    # (the window edges count as ticks).
    def window(t0, t1)
      inside = @ticks.select { |t| t >= t0 && t <= t1 }
      points = [t0, *inside, t1]
      { count: inside.size, max_gap: points.each_cons(2).map { |a, b| b - a }.max }
    end

    # How many ticks a free-running ticker makes in +seconds+.
    def expected(seconds)
      seconds / @interval
    end
  end

  private

  def run_test_scheduler
    scheduler = TestScheduler.new
    Fiber.set_scheduler(scheduler)
    result = error = nil
    Fiber.schedule do
      result = yield
    rescue Exception => e # rubocop:disable Lint/RescueException
      error = e
    end
    Fiber.set_scheduler(nil) # runs the scheduler until every fiber is done
    raise error if error

    result
  end

  def run_async(kind)
    selector_class = IO::Event::Selector.const_get(kind == :async_uring ? :URing : :EPoll)
    reactor = Async::Reactor.new(selector: selector_class.new(Fiber.current))
    begin
      reactor.run { yield }.wait
    ensure
      Fiber.set_scheduler(nil)
    end
  end
end
