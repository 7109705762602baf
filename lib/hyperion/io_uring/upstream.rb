# frozen_string_literal: true

module Hyperion
  module IOUring
    # Living beside upstream Hyperion (the hyperion-rb gem), whose
    # lib/hyperion/io_uring.rb defines this same module over its Rust
    # library with Fiddle and is loaded by `require_relative` from
    # lib/hyperion.rb.
    module Upstream
      GEM_NAME = "hyperion-rb"

      class << self
        # Upstream's io_uring.rb files that could redefine Hyperion::IOUring:
        # those of every installed hyperion-rb, and any other
        # hyperion/io_uring.rb on $LOAD_PATH than ours.
        #
        # @return [Array<String>] absolute paths
        def io_uring_paths
          ours = File.expand_path("../io_uring.rb", __dir__)
          from_gems = begin
            Gem::Specification.find_all_by_name(GEM_NAME).map { |s| File.join(s.full_gem_path, "lib/hyperion/io_uring.rb") }
          rescue StandardError
            []
          end
          from_path = $LOAD_PATH.map { |dir| File.expand_path("hyperion/io_uring.rb", dir.to_s) }
          (from_gems + from_path).uniq.select { |p| p != ours && File.file?(p) }
        end

        # Marks upstream's io_uring.rb as loaded, so its `require_relative`
        # from lib/hyperion.rb is a no-op and this gem's Hyperion::IOUring
        # stays the one in use. Called when this gem is required.
        #
        # @return [Array<String>] the paths it shadowed
        def shadow!
          paths = io_uring_paths.reject { |p| $LOADED_FEATURES.include?(p) }
          paths.each { |p| $LOADED_FEATURES << p }
          paths
        end

        # Whether upstream's io_uring.rb defined Hyperion::IOUring before this
        # gem was required (its Unsupported is not ours).
        def loaded_first?
          return false unless IOUring.const_defined?(:Unsupported, false)

          !(IOUring.const_defined?(:Error, false) && IOUring::Unsupported < IOUring::Error)
        end

        # Upstream's Rust library, when it is mapped into this process
        # (Fiddle.dlopen'ed by upstream's load!), else nil.
        def rust_library_loaded
          lib = IOUring.instance_variable_get(:@lib) if IOUring.instance_variable_defined?(:@lib)
          mapped = begin
            File.foreach("/proc/self/maps").find { |l| l.include?("/libhyperion_io_uring.") }&.split&.last
          rescue SystemCallError
            nil
          end
          mapped || (lib && "(Fiddle handle #{lib.inspect})")
        end

        # Upstream's rings still open in this process.
        def open_upstream_rings
          %i[Ring HotpathRing].sum do |name|
            next 0 unless IOUring.const_defined?(name, false)

            ObjectSpace.each_object(IOUring.const_get(name, false)).count { |r| !(r.respond_to?(:closed?) && r.closed?) }
          end
        end

        # Makes Hyperion::IOUring this gem's when upstream's io_uring.rb was
        # loaded first (`hyperion` loads it before config.ru runs), as long as
        # upstream never used it: its Rust library is not loaded and no
        # upstream ring is open. Its constants, module functions and cached
        # probe results are removed; this gem then defines its own. Otherwise
        # raises a LoadError that says why. Called when this gem is required.
        #
        # @return [Hash, nil] what was replaced, or nil when nothing was
        # @raise [LoadError] when upstream's module is already in use
        def take_over!
          return nil unless loaded_first?

          if (lib = rust_library_loaded)
            raise LoadError,
                  "upstream Hyperion's Hyperion::IOUring is already in use (its Rust library #{lib} is loaded), " \
                  "so hyperion-io_uring cannot replace it; require \"hyperion-io_uring\" before anything probes " \
                  "io_uring: in config/hyperion.rb or the first line of config.ru (see docs/MIGRATING.md)"
          end
          if (n = open_upstream_rings).positive?
            raise LoadError, "upstream Hyperion's Hyperion::IOUring has #{n} ring(s) open; hyperion-io_uring cannot replace it " \
                             "(require \"hyperion-io_uring\" first: see docs/MIGRATING.md)"
          end

          @took_over = evict!
        end

        # What {take_over!} replaced ({from:, constants:, methods:}), or nil.
        attr_reader :took_over

        # The hyperion-rb versions this process can load, newest first.
        def hyperion_versions
          Gem::Specification.find_all_by_name(GEM_NAME).map { |s| s.version.to_s }.uniq
        rescue StandardError
          []
        end

        # How this gem relates to upstream's module in this process, in words.
        def status
          if took_over
            "replaced upstream's unused Hyperion::IOUring (#{took_over[:from] || "loaded first"})"
          elsif hyperion_versions.empty?
            "hyperion-rb not installed here"
          else
            "in use; upstream's io_uring.rb (hyperion-rb #{hyperion_versions.join(", ")}) is shadowed"
          end
        end

        LOADER = /^\s*require\s*\(?\s*["']hyperion-io_uring["']/
        private_constant :LOADER

        # Which Hyperion::IOUring `hyperion RACKUP` would run on from the
        # current directory: this gem when RUBYOPT, the config file Hyperion
        # reads (config/hyperion.rb) or the rackup file requires
        # "hyperion-io_uring"; otherwise upstream's own module. Static: it
        # reads the files, it does not boot the app.
        #
        # @return [Hash] :hyperion_rb (versions), :loaded_by (where the
        #   require was found, or nil), :checked (what was looked at)
        def hyperion_report(rackup: "config.ru", config: "config/hyperion.rb")
          checked = []
          found = nil
          if ENV.fetch("RUBYOPT", "").split.any? { |o| o.match?(/\A-r\s*hyperion-io_uring\z/) }
            found = "RUBYOPT"
          end
          checked << "RUBYOPT"
          [config, rackup].compact.each do |file|
            checked << file
            next unless File.file?(file)

            found ||= file if File.foreach(file).any? { |line| line.match?(LOADER) }
          end
          { hyperion_rb: hyperion_versions, loaded_by: found, checked: checked }
        end

        private

        def evict!
          from = $LOADED_FEATURES.find { |f| io_uring_paths.include?(f) }
          consts = IOUring.constants(false) - %i[Upstream VERSION]
          consts.each { |c| IOUring.send(:remove_const, c) }
          meths = IOUring.singleton_methods(false)
          meths.each { |m| IOUring.singleton_class.send(:remove_method, m) }
          IOUring.instance_variables.each { |iv| IOUring.remove_instance_variable(iv) }
          { from: from, constants: consts, methods: meths }
        end
      end
    end
  end
end
