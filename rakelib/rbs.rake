# frozen_string_literal: true

# rbs validate: every type the signatures in sig/ name exists (in sig/ or
# Ruby's core signatures) with the right arity. spec/rbs_signature_spec.rb
# checks that they match the methods the loaded gem really has.
desc "Validate the RBS signatures in sig/ (rbs -I sig validate)"
task :rbs do
  root = File.expand_path("..", __dir__)
  # --exit-error-on-syntax-error: also fail on what rbs 3.x only warns about
  # as a future syntax error (void in an argument type, say).
  sh RbConfig.ruby, Gem.bin_path("rbs", "rbs"), "-I", "sig", "validate", "--exit-error-on-syntax-error",
     chdir: root
  puts "rbs validate: #{Dir.glob('sig/**/*.rbs', base: root).size} signature files, no errors"
end
