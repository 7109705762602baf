#!/usr/bin/env ruby
# frozen_string_literal: true

# Runs the benchmarks (see bench/harness.rb and bench/README.md).
#
#   ruby bench/run.rb [--quick] [--only accept,http,percall,conns,bodies]
#   ruby bench/run.rb --render bench/results/latest.json   (report again)
#
# `rake bench` and `rake bench:quick` call this after compiling.
$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "optparse"
require_relative "harness"

mode = :full
only = Bench::WORKLOADS
render = nil
OptionParser.new do |o|
  o.on("--render JSON", "write the .md and .svg again from a run's .json") { |v| render = v }
  o.on("--quick", "a few seconds per variant, one round (CI)") { mode = :quick }
  o.on("--only LIST", Array, "a subset of #{Bench::WORKLOADS.join(',')}") { |v| only = v }
end.parse!(ARGV)
unknown = only - Bench::WORKLOADS
abort "bench: unknown workload(s) #{unknown.join(', ')}" unless unknown.empty?

%w[INT TERM HUP].each do |sig|
  trap(sig) do
    Bench::Procs.stop_all
    exit!(128 + Signal.list.fetch(sig))
  end
end

begin
  if render
    Bench.render(render)
    exit
  end
  Bench.run(mode, only: only)
rescue Bench::Error => e
  abort "bench: #{e.message}"
end
