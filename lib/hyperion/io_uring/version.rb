# frozen_string_literal: true

module Hyperion
  module IOUring
    VERSION = "0.1.0"
  end
end
