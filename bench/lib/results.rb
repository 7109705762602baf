# frozen_string_literal: true

require "json"

# The samples of a run and the statistics made of them.
module Bench
  def self.median(values)
    v = values.compact.sort
    return nil if v.empty?

    v.size.odd? ? v[v.size / 2] : (v[v.size / 2 - 1] + v[v.size / 2]) / 2.0
  end

  def self.ratio(a, b) = a && b && b.positive? ? a.fdiv(b) : nil

  # Collects samples: results[workload][row][variant][metric] = [values].
  # Every run's metrics: data[workload][row][variant] = [metrics, ...]. A
  # run is quiet when other processes used at most +max_other+ of the CPUs
  # during it; statistics use the quiet runs of a variant, or all of its
  # runs when none was quiet (the report says which).
  class Results
    attr_reader :data, :meta

    def initialize(max_other = 1.0)
      @data = Hash.new { |h, k| h[k] = Hash.new { |h2, k2| h2[k2] = Hash.new { |h3, k3| h3[k3] = [] } } }
      @meta = {}
      @max_other = max_other
    end

    def add(workload, row, variant, metrics)
      @data[workload][row][variant] << metrics
    end

    def runs(workload, row, variant) = @data.dig(workload, row, variant) || []

    def quiet?(run) = run[:other].nil? || run[:other] <= @max_other

    def quiet_count(workload, row, variant) = runs(workload, row, variant).count { |r| quiet?(r) }

    # The runs statistics use.
    def used(workload, row, variant)
      all = runs(workload, row, variant)
      quiet = all.select { |r| quiet?(r) }
      quiet.empty? ? all : quiet
    end

    def samples(workload, row, variant, metric) = used(workload, row, variant).map { |r| r[metric] }.compact

    def med(workload, row, variant, metric) = Bench.median(samples(workload, row, variant, metric))

    def to_h = JSON.parse(JSON.generate(@data))
  end
end
