# frozen_string_literal: true

require "hyperion/io_uring"
require "socket"

Dir[File.join(__dir__, "support", "*.rb")].sort.each { |f| require f }

RSpec.configure do |config|
  config.order = :random
  Kernel.srand config.seed

  config.disable_monkey_patching!
  config.expect_with(:rspec) { |c| c.syntax = :expect }
  config.mock_with(:rspec) { |m| m.verify_partial_doubles = true }

  config.include FdHelpers
  config.include SocketHelpers
  config.include IOUringHelpers
  config.include EnvironmentSkip

  config.before(:suite) do
    if StrictMode.enabled? && (problem = StrictMode.problem)
      abort "HYPERION_IO_URING_SPEC_STRICT=1: #{problem}. " \
            "Refusing to run a suite that would skip instead of testing."
    end
  end

  # A spec that stubs the policy layer must not leave its answer cached for
  # the next one.
  config.after { Hyperion::IOUring.reset! }
end
