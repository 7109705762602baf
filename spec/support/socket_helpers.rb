# frozen_string_literal: true

require "timeout"

# Loopback sockets on 127.0.0.1, always closed.
module SocketHelpers
  # Yields a listening TCPServer on 127.0.0.1 with a kernel-chosen port, and
  # closes it afterwards.
  def with_listener
    server = TCPServer.new("127.0.0.1", 0)
    yield server, server.local_address.ip_port
  ensure
    server&.close
  end

  def connect(port)
    TCPSocket.new("127.0.0.1", port)
  end

  # Wraps an accepted client fd in a Socket (which then owns and closes it).
  def socket_for(fd)
    Socket.for_fd(fd).tap { |s| s.autoclose = true }
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Seconds the block took.
  def elapsed
    t0 = monotonic
    yield
    monotonic - t0
  end
end
