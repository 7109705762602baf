# frozen_string_literal: true

# HYPERION_IO_URING_SPEC_STRICT=1 (set by .ci/run and the matrix legs): the
# run must prove it exercised the native build against the real kernel. An
# extension that failed to load, or a host or bundle that quietly lacks a
# piece, would otherwise turn a few hundred examples into skips while the
# run stays green.
module StrictMode
  module_function

  def enabled?
    ENV["HYPERION_IO_URING_SPEC_STRICT"] == "1"
  end

  # Why the suite cannot prove anything here, or nil.
  def problem
    io = Hyperion::IOUring
    return "the native extension is not loaded (stub build: #{io::STUB_REASON})" unless io.native?
    return "io_uring is unsupported here: #{io.unsupported_reason}" unless io.supported?
    return "the io_uring hot path is unsupported here: #{io.hotpath_unsupported_reason}" unless io.hotpath_supported?

    nil
  end
end

# Skips for a reason of the environment (a gem or a build option missing):
# a skip normally, a failure in strict mode.
module EnvironmentSkip
  def environment_skip(reason)
    raise "HYPERION_IO_URING_SPEC_STRICT=1, but: #{reason}" if StrictMode.enabled?

    skip reason
  end
end
