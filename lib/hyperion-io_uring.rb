# frozen_string_literal: true

# The unambiguous entry point (Bundler's auto-require): upstream Hyperion
# ships a lib/hyperion/io_uring.rb too, so `require "hyperion/io_uring"` could
# find either gem's file depending on $LOAD_PATH order.
require_relative "hyperion/io_uring"
