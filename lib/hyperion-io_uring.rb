# frozen_string_literal: true

require "hyperion/io_uring"
