# frozen_string_literal: true

# Upstream Hyperion's real server on this gem: spec/integration/setup.rb
# installs hyperion-rb 2.17.0, async-http and this gem (gem build + gem
# install) into a private GEM_HOME, then spec/integration/hyperion_integration.rb
# boots `bundle exec hyperion` in every io_uring mode under io-event's EPoll
# and URing selectors. Needs Ruby >= 3.3 (hyperion-rb's floor), RubyGems
# access and libssl-dev; CI runs it in the trixie leg. INTEGRATION_GEM_HOME
# keeps the installed gems between runs.
desc "Upstream Hyperion 2.17.0 on this gem, every io_uring mode, both io-event selectors (Ruby >= 3.3)"
task :integration do
  ruby File.expand_path("../spec/integration/setup.rb", __dir__)
end
