# frozen_string_literal: true

require "io/wait"

# Reading and writing exactly N bytes on a plain (nonblocking-capable)
# socket before a deadline (a CLOCK_MONOTONIC time). Plain Ruby, no rspec:
# the specs (through HotpathHelpers) and bench/soak.rb's clients both load
# this one copy.
module FullIO
  module_function

  # Reads exactly n bytes from sock, or raises once deadline passes (or at
  # EOF).
  def read_fully(sock, n, deadline)
    data = +"".b
    while data.bytesize < n
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "read timed out after #{data.bytesize} of #{n} bytes" if left <= 0

      chunk = sock.read_nonblock([n - data.bytesize, 1 << 20].min, exception: false)
      case chunk
      when :wait_readable then sock.wait_readable(left)
      when nil then raise EOFError, "EOF after #{data.bytesize} of #{n} bytes"
      else data << chunk
      end
    end
    data
  end

  # Writes all of data to sock, or raises once deadline passes.
  def write_fully(sock, data, deadline)
    off = 0
    while off < data.bytesize
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "write timed out after #{off} of #{data.bytesize} bytes" if left <= 0

      n = sock.write_nonblock(data.byteslice(off, data.bytesize - off), exception: false)
      n == :wait_writable ? sock.wait_writable(left) : off += n
    end
  end
end
