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

        # Raises a LoadError saying what to do when upstream's io_uring.rb was
        # loaded before this gem (its classes would clash with ours).
        def check_not_loaded_first!
          return unless IOUring.const_defined?(:Unsupported, false)
          return if IOUring.const_defined?(:Error, false) && IOUring::Unsupported < IOUring::Error

          raise LoadError,
                "upstream Hyperion's hyperion/io_uring.rb was loaded before hyperion-io_uring; " \
                "require \"hyperion-io_uring\" before \"hyperion\" (see docs/MIGRATING.md)"
        end
      end
    end
  end
end
