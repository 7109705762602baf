# frozen_string_literal: true

# Loaded by rakelib/bench.rake.
#
#   bundle exec rake soak                    60 s, 200 clients
#   SOAK_SECONDS=600 bundle exec rake soak   ten minutes
#
# SOAK_CLIENTS and SOAK_INTERVAL (seconds between samples) are passed on
# too. See bench/soak.rb for what it checks; it exits non-zero (and the task
# fails) on a wrong byte, a leaked fd or RSS that keeps growing.
desc "Soak the HotpathRing echo server (200 clients connecting, echoing, resetting) for SOAK_SECONDS (60); fails on leaks or a wrong byte"
task soak: :compile do
  args = { "SOAK_SECONDS" => "--seconds", "SOAK_CLIENTS" => "--clients", "SOAK_INTERVAL" => "--interval" }
         .filter_map { |env, flag| [flag, ENV[env]] unless ENV[env].to_s.strip.empty? }.flatten
  ruby File.join(__dir__, "soak.rb"), *args
end
