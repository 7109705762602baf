# frozen_string_literal: true

# Skipping where the host cannot use io_uring, and looking at a ring from the
# kernel's side.
module IOUringHelpers
  # Skips the example, with the reason, where io_uring cannot be used.
  def require_io_uring!
    return if Hyperion::IOUring.supported?

    skip "io_uring unsupported here: #{Hyperion::IOUring.unsupported_reason}"
  end

  # What the kernel says about a ring in /proc/self/fdinfo/<ring fd>:
  # SqMask/SqHead/SqTail, CqMask/CqHead/CqTail as Integers and :polls, the requests armed
  # and waiting (the PollList; absent on kernels that do not print it).
  def ring_fdinfo(ring)
    info = {}
    section = nil
    File.foreach("/proc/self/fdinfo/#{ring.fileno}") do |line|
      if line.start_with?(" ", "\t") && section
        info[section] << line.strip
      elsif (m = line.match(/\A(\w+):\s*(\S*)/))
        section = nil
        case m[1]
        when "SqMask", "SqHead", "SqTail", "CqMask", "CqHead", "CqTail" then info[m[1]] = Integer(m[2])
        when "PollList" then info[:polls] = []
        end
        section = :polls if m[1] == "PollList"
      end
    end
    info
  end

  # The ring has no request in flight, no completion left unreaped and
  # nothing queued unsubmitted: what an interrupted or timed-out call must
  # leave behind.
  def expect_ring_idle(ring)
    info = ring_fdinfo(ring)
    expect(info["SqHead"]).to eq(info["SqTail"]), "unsubmitted SQEs: #{info.inspect}"
    expect(info["CqHead"]).to eq(info["CqTail"]), "unreaped CQEs: #{info.inspect}"
    expect(info[:polls]).to eq([]), "requests still armed: #{info.inspect}" if info.key?(:polls)
  end
end
