# frozen_string_literal: true

# bench, bench:quick and soak live beside the bench (bench/bench.rake,
# bench/soak.rake; see bench/README.md).
Dir.glob(File.expand_path("../bench/*.rake", __dir__)).each { |f| load f }
