# frozen_string_literal: true

# spec:asan and spec:valgrind. Both run the same suite as `rake spec` (or
# the files in SPEC="a_spec.rb b_spec.rb"); SPEC_OPTS is honoured by rspec
# itself. Both set HYPERION_IO_URING_SPEC_UNDER (asan or valgrind) so a spec
# can widen a timing bound that instrumentation makes unfair. The plumbing
# is in rakelib/lib/: spec_under.rb (what both share), spec_under/asan.rb,
# spec_under/valgrind.rb, and valgrind_report.rb (which errors are ours).

require_relative "lib/spec_under"

namespace :spec do
  desc "Run the suite against an ASan+UBSan build of the extension (built in tmp/asan; SPEC= to narrow)"
  task :asan do
    SpecUnder.run_asan
  end

  desc "Run the suite under valgrind memcheck; fails on invalid access, uninitialised use or definite leaks in our .so"
  task valgrind: :compile do
    SpecUnder.run_valgrind
  end
end
