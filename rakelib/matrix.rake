# frozen_string_literal: true

# The other Debian stacks CI tests, each in a cached chroot of this machine
# (.ci/leg has the recipe): the README's two commands, then gem build +
# install into an empty GEM_HOME. Needs root.
MATRIX_LEGS = {
  "trixie" => "Debian 13: Ruby 3.3, liburing 2.9, gcc 14",
  "sid" => "Debian sid: Ruby 3.3, liburing 2.15",
  "ruby3.4" => "Debian sid with Ruby 3.4 (experimental) as its only Ruby"
}.freeze

namespace :matrix do
  MATRIX_LEGS.each do |leg, what|
    desc "CI leg in a chroot: #{what}"
    task(leg) { sh File.join(__dir__, "..", ".ci", "leg"), leg }
  end

  desc "All chroot legs, one after the other"
  task all: MATRIX_LEGS.keys
end
