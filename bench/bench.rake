# frozen_string_literal: true

# Loaded by rakelib/bench.rake. See bench/README.md.
#
#   bundle exec rake bench        full run: 3 interleaved rounds, writes
#                                 bench/results/latest.{md,svg,json}
#   bundle exec rake bench:quick  CI: one short round per variant, proves the
#                                 harness still works; writes tmp/bench/quick.*
#
# BENCH_ONLY=accept,http,percall,conns,bodies narrows either; the BENCH_* variables in
# bench/lib/config.rb (Bench.config) override counts and durations.
bench_run = lambda do |*args|
  only = ENV["BENCH_ONLY"].to_s.strip
  args += ["--only", only] unless only.empty?
  ruby File.join(__dir__, "run.rb"), *args
end

desc "Benchmark the rings against plain Ruby I/O (accept, HTTP hello, per call, 10,000 connections, bodies); writes bench/results/latest.md"
task bench: :compile do
  bench_run.call
end

namespace :bench do
  desc "Quick benchmark run for CI (a few seconds per variant; proves the harness works)"
  task quick: :compile do
    bench_run.call("--quick")
  end
end

namespace :bench do
  desc "Upstream Hyperion 2.17.0 on this gem (ring accept, hot path) vs io_uring off at wrk -c50; writes bench/results/hyperion.md (Ruby 3.3+, wrk)"
  task :hyperion do
    ruby File.join(__dir__, "hyperion.rb")
  end
end
