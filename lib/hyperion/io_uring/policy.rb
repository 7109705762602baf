# frozen_string_literal: true

module Hyperion
  module IOUring
    # Errors of a probe that say nothing about the host: a signal, a
    # momentary shortage of memory, fds or ports. The probes retry them a
    # few times; a probe that still fails with one answers false but is not
    # cached, so the next call probes again. (ENOMEM is among them: on
    # kernels before 5.12 it means RLIMIT_MEMLOCK and will not go away,
    # which costs a failed setup per call there; caching it would turn a
    # moment of memory pressure into a slow path for the life of the
    # process.)
    TRANSIENT_ERRNOS = %w[EINTR EAGAIN EBUSY ENOMEM ENOBUFS EMFILE ENFILE EADDRINUSE EADDRNOTAVAIL]
                       .filter_map { |n| Errno.const_get(n)::Errno if Errno.const_defined?(n) }.uniq.freeze

    class << self
      # Whether this host can use io_uring: Linux, a kernel of at least
      # {MIN_LINUX_KERNEL}, an extension built with liburing, and a ring that
      # really sets up. Probed once and cached; {reset!} clears the cache.
      # A failure with a transient error ({TRANSIENT_ERRNOS}) is not cached.
      # Never raises.
      #
      # @return [Boolean]
      def supported?
        return @supported unless @supported.nil?

        value = compute_supported
        @supported = value unless @supported_transient
        value
      end

      # Whether the hot path ({HotpathRing}) works here: {supported?}, and a
      # small ring with a provided-buffer ring really completes a multishot
      # accept and a multishot recv on a loopback connection. Cached, except
      # a failure with a transient error (a signal never fails it).
      #
      # @return [Boolean]
      def hotpath_supported?
        return @hotpath_supported unless @hotpath_supported.nil?

        value = compute_hotpath_supported
        @hotpath_supported = value unless @hotpath_transient
        value
      end

      # Whether errno (an Integer) is one of {TRANSIENT_ERRNOS}.
      #
      # @return [Boolean]
      def transient_errno?(errno)
        TRANSIENT_ERRNOS.include?(errno)
      end

      # Why io_uring cannot be used here, or nil when {supported?} is true.
      #
      # @return [String, nil]
      def unsupported_reason
        supported?
        @unsupported_reason
      end

      # Why the hot path cannot be used here, or nil when
      # {hotpath_supported?} is true.
      #
      # @return [String, nil]
      def hotpath_unsupported_reason
        hotpath_supported?
        @hotpath_unsupported_reason
      end

      # Test seam: forget every cached probe result.
      #
      # @return [nil]
      def reset!
        @supported = nil
        @hotpath_supported = nil
        @unsupported_reason = nil
        @hotpath_unsupported_reason = nil
        @supported_transient = nil
        @hotpath_transient = nil
        nil
      end

      # Runs the gates of {supported?} without the cache.
      #
      # @return [Boolean]
      def compute_supported
        @supported_transient = false
        @unsupported_reason = probe_reason
        @unsupported_reason.nil?
      rescue StandardError => e
        @supported_transient = e.is_a?(SystemCallError) && transient_errno?(e.errno)
        @unsupported_reason = "io_uring probe failed: #{e.class}: #{e.message}"
        false
      end

      # Runs the gates of {hotpath_supported?} without the cache.
      #
      # @return [Boolean]
      def compute_hotpath_supported
        @hotpath_transient = false
        @hotpath_unsupported_reason = hotpath_probe_reason
        @hotpath_unsupported_reason.nil?
      rescue StandardError => e
        # HotpathRing.native_probe raises Errno::* for a step that kept
        # failing with a transient error.
        @hotpath_transient = e.is_a?(SystemCallError) && transient_errno?(e.errno)
        @hotpath_unsupported_reason = "hotpath probe failed: #{e.class}: #{e.message}"
        false
      end

      # Whether Ruby's M:N thread scheduler (Ruby 3.3+, RUBY_MN_THREADS=1)
      # runs this process's threads. Then a Ruby Thread may move from one
      # native thread to another between calls, while a ring belongs to the
      # kernel task that made it (IORING_SETUP_SINGLE_ISSUER; owner.c): the
      # kernel would refuse the moved thread with EEXIST, or the owner check
      # with ThreadError, at random. So {supported?} is false then. Ruby
      # reads the variable once at boot (`atoi(...) > 0`); this reads ENV,
      # which says the same unless the application changed it since.
      #
      # @return [Boolean]
      def mn_threads?(env = ENV, version = RUBY_VERSION)
        (version.split(".").map(&:to_i) <=> [3, 3]) >= 0 && env["RUBY_MN_THREADS"].to_s.to_i.positive?
      end

      # @return [Boolean] whether Etc.uname says Linux
      def linux?
        Etc.uname[:sysname] == "Linux"
      rescue StandardError
        false
      end

      # @return [Boolean] whether the running kernel is at least {MIN_LINUX_KERNEL}
      def kernel_supports_io_uring?
        return false unless linux?

        release = parse_kernel_release
        return false unless release

        (release <=> MIN_LINUX_KERNEL) >= 0
      end

      # The running kernel's [major, minor], from Etc.uname (falling back to
      # /proc/sys/kernel/osrelease), or nil when it cannot be read.
      #
      # @return [Array(Integer, Integer), nil]
      def parse_kernel_release
        release = kernel_release
        m = release.match(/\A(\d+)\.(\d+)/)
        m && [m[1].to_i, m[2].to_i]
      rescue StandardError
        nil
      end

      # @return [String] the kernel release string ("" when unknown)
      def kernel_release
        release = Etc.uname[:release].to_s
        if release.empty? && File.exist?("/proc/sys/kernel/osrelease")
          release = File.read("/proc/sys/kernel/osrelease").strip
        end
        release
      end

      # Whether the native extension was built against liburing (not the stub).
      #
      # @return [Boolean]
      def native?
        NATIVE_LIBURING == true
      end

      # Upstream loads its Rust library with Fiddle here. This gem's native
      # part is an ordinary extension loaded by `require`, so this only
      # reports it: a truthy handle (the IOUring module) when the extension
      # with liburing is loaded, nil otherwise. Never raises.
      #
      # @return [Module, nil]
      def load!
        native? ? self : nil
      end

      # Upstream's list of places to look for its shared library. Here: the
      # compiled extension's path(s) that exist or would be loaded.
      #
      # @return [Array<String>]
      def candidate_paths
        dir = File.expand_path("io_uring", __dir__.sub(%r{/io_uring\z}, ""))
        %w[so bundle].map { |ext| File.join(dir, "hyperion_io_uring.#{ext}") }
      end

      # The value of /proc/sys/kernel/io_uring_disabled (6.6+), or nil.
      #
      # @return [Integer, nil]
      def io_uring_disabled
        path = "/proc/sys/kernel/io_uring_disabled"
        File.exist?(path) ? Integer(File.read(path).strip, exception: false) : nil
      rescue StandardError
        nil
      end

      # Resolves the operator's io_uring policy into "use it or not".
      #
      # @param policy [Symbol, Boolean, nil] :off, :auto or :on (nil/false
      #   mean :off, true means :on)
      # @return [Boolean]
      # @raise [Unsupported] for :on on a host that cannot
      # @raise [ArgumentError] for anything else
      def resolve_policy!(policy)
        case policy
        when :off, nil, false then false
        when :auto then supported?
        when :on, true
          unless supported?
            raise Unsupported,
                  "io_uring required (io_uring: :on) but not supported on this host " \
                  "(linux=#{linux?}, kernel_ok=#{kernel_supports_io_uring?}, lib_loaded=#{native?}): " \
                  "#{unsupported_reason}"
          end
          true
        else
          raise ArgumentError, "io_uring must be :off, :auto, or :on (got #{policy.inspect})"
        end
      end

      # Resolves the operator's hot-path policy; the same rules as
      # {resolve_policy!}, for {HotpathRing}.
      #
      # @param policy [Symbol, Boolean, nil]
      # @return [Boolean]
      # @raise [Unsupported] for :on on a host that cannot
      # @raise [ArgumentError] for anything else
      def resolve_hotpath_policy!(policy)
        case policy
        when :off, nil, false then false
        when :auto then hotpath_supported?
        when :on, true
          unless hotpath_supported?
            raise Unsupported,
                  "io_uring hotpath required (io_uring_hotpath: :on) but unsupported on this host " \
                  "(linux=#{linux?}, kernel_ok=#{kernel_supports_io_uring?}, " \
                  "hotpath_supported=#{hotpath_supported?}): #{hotpath_unsupported_reason}"
          end
          true
        else
          raise ArgumentError, "io_uring_hotpath must be :off, :auto, or :on (got #{policy.inspect})"
        end
      end

      # Reads a policy from the environment: :on, :off or :auto (also
      # 1/0, true/false, yes/no, any case), or nil when unset or empty. Any
      # other value warns once on stderr and gives nil, so the caller keeps
      # its default.
      #
      # @param name [String] HYPERION_IO_URING or HYPERION_IO_URING_HOTPATH
      # @return [Symbol, nil]
      def env_policy(name = "HYPERION_IO_URING")
        raw = ENV[name]
        return nil if raw.nil? || raw.strip.empty?

        word = POLICY_WORDS[raw.strip.downcase]
        return word if word

        warn_once(name, raw,
                  "[hyperion-io_uring] ignoring #{name}=#{raw.inspect}: expected on, off or auto " \
                  "(or 1/0, true/false, yes/no)")
        nil
      end

      # Reads a positive Integer setting from the environment (used for
      # HYPERION_IO_URING_HOTPATH_BUFS, _BUF_SIZE and
      # HYPERION_IO_URING_SEND_BUFFER_LIMIT). A value that is not an
      # Integer, or fails +valid+, warns once and gives +default+.
      #
      # @return [Integer]
      def env_integer(name, default, &valid)
        raw = ENV[name]
        return default if raw.nil? || raw.strip.empty?

        value = Integer(raw.strip, 10, exception: false)
        return value if value && (valid.nil? || valid.call(value))

        warn_once(name, raw, "[hyperion-io_uring] ignoring #{name}=#{raw.inspect}: keeping #{default}")
        default
      end

      # A Hash for operators: the kernel, the io_uring_disabled sysctl, the
      # liburing the extension was built against, each probe and the reason.
      #
      # @return [Hash{Symbol => Object}]
      def diagnostics
        {
          gem_version: VERSION,
          ruby: RUBY_DESCRIPTION,
          sysname: (Etc.uname[:sysname] rescue nil),
          kernel_release: kernel_release,
          linux: linux?,
          kernel_supports_io_uring: kernel_supports_io_uring?,
          io_uring_disabled: io_uring_disabled,
          native_extension: native?,
          liburing_version: LIBURING_VERSION,
          stub_reason: STUB_REASON,
          supported: supported?,
          unsupported_reason: unsupported_reason,
          setup_flags: (native? && respond_to?(:native_setup_flags) ? native_setup_flags : nil),
          hotpath_supported: hotpath_supported?,
          hotpath_unsupported_reason: hotpath_unsupported_reason,
          upstream: Upstream.status,
          env: ENV.select { |k, _| k.start_with?("HYPERION_IO_URING") }
        }
      end

      private

      def probe_reason
        return "not Linux (#{Etc.uname[:sysname]}): io_uring is Linux-only" unless linux?
        unless kernel_supports_io_uring?
          return "kernel #{kernel_release.inspect} is older than #{MIN_LINUX_KERNEL.join('.')}, " \
                 "the first with a stable IORING_OP_ACCEPT"
        end
        return "extension built without liburing: #{STUB_REASON}" unless native?
        if mn_threads?
          return "RUBY_MN_THREADS=#{ENV['RUBY_MN_THREADS']}: Ruby's M:N threads may move a Thread between " \
                 "native threads, and a ring belongs to one (unset RUBY_MN_THREADS to use io_uring)"
        end

        errno = native_probe
        return nil if errno.zero?

        @supported_transient = transient_errno?(errno)
        setup_errno_reason(errno)
      end

      def setup_errno_reason(errno)
        err = SystemCallError.new(nil, errno)
        case err
        when Errno::EPERM
          disabled = io_uring_disabled
          sysctl = disabled.nil? ? "" : " (kernel.io_uring_disabled=#{disabled})"
          "io_uring_setup failed with EPERM#{sysctl}: io_uring is disabled for this process " \
            "by a sysctl or a seccomp filter (Docker's default profile blocks it)"
        when Errno::ENOSYS
          "io_uring_setup failed with ENOSYS: blocked, e.g. by a container's seccomp profile, " \
            "or a kernel built without io_uring"
        when Errno::ENOMEM
          "io_uring_setup failed with ENOMEM: ring memory exceeds RLIMIT_MEMLOCK " \
            "(kernels before 5.12 count it); raise `ulimit -l`"
        else
          "io_uring_setup failed: #{err.class.name.split('::').last} (#{err.message})"
        end
      end

      def hotpath_probe_reason
        unless supported?
          # Not cached when supported? was not: the next call tries again.
          @hotpath_transient = @supported_transient
          return "io_uring unsupported: #{@unsupported_reason}"
        end
        return "extension has no hot path" unless const_defined?(:HotpathRing, false)

        HotpathRing.native_probe
      end

      def warn_once(name, raw, message)
        @warned ||= {}
        return if @warned[[name, raw]]

        @warned[[name, raw]] = true
        warn message
      end
    end
  end
end
