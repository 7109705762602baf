# frozen_string_literal: true

require "pathname"
require "rbs"

# The signatures in sig/ against the loaded gem: a method, keyword, constant
# or class that one side has and the other lacks fails here (`rake rbs` only
# checks that the signatures are well-formed). Where Ruby cannot tell a C
# method's parameters (argc -1: `[[:rest]]`), its call-seq in the ext source
# stands in for them.
RSpec.describe "the RBS signatures in sig/" do
  root = File.expand_path("..", __dir__)
  io = Hyperion::IOUring
  # Ruby object => [RBS type name, kinds of methods compared, what of it
  # the native extension defines (:all, or those methods)]. The stub build
  # defines none of that; sig/ describes the native build. Entry's singleton
  # methods (members, keyword_init?...) are Struct's.
  subjects = {
    io => ["::Hyperion::IOUring", %i[singleton], %i[native_probe native_setup_flags]],
    io::Ring => ["::Hyperion::IOUring::Ring", %i[instance singleton], :all],
    io::HotpathRing => ["::Hyperion::IOUring::HotpathRing", %i[instance singleton], :all],
    io::FiberRings => ["::Hyperion::IOUring::FiberRings", %i[singleton], []],
    io::FiberRings::Entry => ["::Hyperion::IOUring::FiberRings::Entry", %i[instance], []],
    io::Upstream => ["::Hyperion::IOUring::Upstream", %i[singleton], []]
  }
  # The C files whose call-seq comments document each class's methods.
  call_seq_files = { io::Ring => %w[ring_class.c], io::HotpathRing => %w[hotpath_class.c hotpath_buffers.c] }

  # A parameter list's shape: positional counts, keyword names, rest and
  # block flags. From Ruby's Method#parameters...
  def self.ruby_shape(params)
    kinds = params.map(&:first)
    req = kinds.count(:req)
    {
      min: req, max: kinds.include?(:rest) ? Float::INFINITY : req + kinds.count(:opt),
      keyreq: params.select { |k, _| k == :keyreq }.map(&:last).sort,
      keys: params.select { |k, _| %i[keyreq key].include?(k) }.map(&:last).sort,
      keyrest: kinds.include?(:keyrest), block: kinds.include?(:block)
    }
  end

  # ...and from an RBS method's overloads together: any overload's count
  # is accepted, a keyword is required only when every overload requires it.
  def self.rbs_shape(method_types)
    fns = method_types.map(&:type)
    raise "untyped (...) signature" unless fns.all? { |f| f.is_a?(RBS::Types::Function) }

    required = fns.map { |f| f.required_positionals.size + f.trailing_positionals.size }
    {
      min: required.min,
      max: fns.zip(required).map { |f, n| f.rest_positionals ? Float::INFINITY : n + f.optional_positionals.size }.max,
      keyreq: fns.map { |f| f.required_keywords.keys }.inject(:&).sort,
      keys: fns.flat_map { |f| f.required_keywords.keys + f.optional_keywords.keys }.uniq.sort,
      keyrest: fns.any?(&:rest_keywords), block: method_types.any?(&:block)
    }
  end

  # The call-seq lines of a C file: method name (:initialize for new) =>
  # shapes, one per line. Receivers in capitals are the class itself.
  def self.call_seqs(path)
    seqs = Hash.new { |h, k| h[k] = [] }
    File.read(path).scan(/^ \* call-seq:\n((?: \*   \S.*\n)+)/).flatten.join.each_line do |line|
      m = line.match(/\A \*   (\w+)\.(\w+[?!]?)(?:\(([^)]*)\))?/) or next
      name = m[2] == "new" ? :initialize : m[2].to_sym
      name = :"self.#{name}" if m[1].match?(/\A[A-Z]/) && name != :initialize
      args = m[3].to_s.split(",").map(&:strip)
      keys = args.filter_map { |a| a[/\A(\w+):/, 1]&.to_sym }
      seqs[name] << { positional: args.size - keys.size, keys: keys }
    end
    seqs
  end

  before(:all) do
    loader = RBS::EnvironmentLoader.new
    loader.add(path: Pathname(File.join(root, "sig")))
    @env = RBS::Environment.from_loader(loader).resolve_type_names
    @builder = RBS::DefinitionBuilder.new(env: @env)
  end

  # Ruby's Class#new, not a method of ours: RBS derives it from initialize.
  def derived_methods
    %i[new]
  end

  def skip_unless_native
    return if Hyperion::IOUring.native?

    skip "stub build (#{Hyperion::IOUring::STUB_REASON}): the native methods sig/ declares are not defined"
  end

  def type_name(name)
    RBS::TypeName.parse(name)
  end

  # name => RBS::Definition::Method, for the methods +name+ itself declares
  # (not inherited ones) with the given visibility.
  def rbs_methods(name, kind, accessibility = :public)
    definition = kind == :instance ? @builder.build_instance(type_name(name)) : @builder.build_singleton(type_name(name))
    definition.methods.select { |_, m| m.defined_in == type_name(name) && m.accessibility == accessibility }
  end

  def ruby_methods(object, kind)
    (kind == :instance ? object.public_instance_methods(false) : object.singleton_class.public_instance_methods(false)).sort
  end

  def ruby_method(object, kind, name)
    kind == :instance ? object.instance_method(name) : object.method(name)
  end

  # What RBS declares for +object+ that Ruby defines only in the native build
  # (besides Class#new), when this is the stub build.
  def not_here(kind, native)
    (kind == :singleton ? derived_methods : []) + (Hyperion::IOUring.native? || native == :all ? [] : native)
  end

  def where(object, kind, meth)
    "#{object}#{kind == :instance ? '#' : '.'}#{meth}"
  end

  # A method defined in Ruby: the same positional counts and keywords as
  # Method#parameters, and a block where it takes &block.
  def expect_ruby_parameters(method, rbs, where)
    ruby = self.class.ruby_shape(method.parameters)
    expect(rbs.slice(:min, :max)).to eq(ruby.slice(:min, :max)), "#{where}: positional arguments"
    if ruby[:keyrest]
      # **opts takes any keyword: RBS may name the ones it passes on.
      expect(rbs[:keyreq]).to be_empty, "#{where}: required keywords behind **opts"
    else
      expect(rbs.slice(:keys, :keyreq, :keyrest)).to eq(ruby.slice(:keys, :keyreq, :keyrest)), "#{where}: keywords"
    end
    expect(rbs[:block]).to be(true), "#{where}: takes &#{method.parameters.last.last}" if ruby[:block]
  end

  # A C method: Ruby only knows its arity. A fixed one is that many
  # positional arguments and nothing else; -1 (parsed by rb_scan_args) has
  # optional arguments, keywords or overloads of different lengths.
  def expect_c_arity(method, rbs, where)
    if method.arity >= 0
      fixed = { min: method.arity, max: method.arity, keys: [], keyrest: false }
      expect(rbs).to include(fixed), "#{where} (arity #{method.arity})"
    else
      variadic = rbs[:min] != rbs[:max] || !rbs[:keys].empty? || rbs[:keyrest]
      expect(variadic).to be(true), "#{where} (arity -1) is declared with a fixed signature"
    end
  end

  subjects.each do |object, (name, kinds, native)|
    kinds.each do |kind|
      it "declares exactly the public #{kind} methods of #{object}" do
        skip_unless_native if native == :all
        declared = rbs_methods(name, kind).keys - not_here(kind, native)
        expect(declared.sort).to eq(ruby_methods(object, kind))
      end

      it "matches the parameters of each public #{kind} method of #{object}" do
        skip_unless_native if native == :all
        declared = rbs_methods(name, kind)
        ruby_methods(object, kind).each do |meth|
          method = ruby_method(object, kind, meth)
          rbs = self.class.rbs_shape(declared.fetch(meth) { raise "#{where(object, kind, meth)} not in sig/" }.method_types)
          if method.source_location
            expect_ruby_parameters(method, rbs, where(object, kind, meth))
          else
            expect_c_arity(method, rbs, where(object, kind, meth))
          end
        end
      end
    end
  end

  it "declares initialize of Ring and HotpathRing (Class#new's parameters)" do
    [io::Ring, io::HotpathRing].each do |klass|
      expect(rbs_methods(subjects[klass][0], :instance, :private).keys).to include(:initialize)
    end
  end

  call_seq_files.each do |klass, files|
    it "matches the call-seq of every variadic C method of #{klass} (#{files.join(', ')})" do
      skip_unless_native
      paths = files.map { |f| File.join(root, "ext", "hyperion_io_uring", f) }
      paths.each { |path| skip "#{path} is not here (installed gem without ext sources?)" unless File.exist?(path) }

      seqs = paths.map { |path| self.class.call_seqs(path) }.reduce { |a, b| a.merge(b) { |_, x, y| x + y } }
      file = files.join(" or ")
      name = subjects[klass][0]
      # Methods written in Ruby (each_completion) have their parameters
      # checked against sig/ above; this is for the C ones' call-seq.
      variadic = klass.public_instance_methods(false).select do |m|
        klass.instance_method(m).arity.negative? && klass.instance_method(m).source_location.nil?
      end
      variadic << :initialize if klass.instance_method(:initialize).arity.negative?
      expect(variadic).to include(:initialize)
      variadic.each do |meth|
        expect(seqs).to have_key(meth), "#{klass}##{meth} has no call-seq in #{file}"
        visibility = meth == :initialize ? :private : :public
        rbs = self.class.rbs_shape(rbs_methods(name, :instance, visibility).fetch(meth).method_types)
        documented = seqs[meth]
        expect(rbs[:keys]).to eq(documented.flat_map { |s| s[:keys] }.uniq.sort), "#{klass}##{meth}: keywords"
        expect(rbs.slice(:min, :max)).to eq(min: documented.map { |s| s[:positional] }.min,
                                            max: documented.map { |s| s[:positional] }.max),
                                         "#{klass}##{meth}: positional arguments"
      end
    end
  end

  it "gives fiber_ring and fiber_hotpath_ring the keywords of Ring.new and HotpathRing.new" do
    { fiber_ring: io::Ring, fiber_hotpath_ring: io::HotpathRing }.each do |meth, klass|
      helper = self.class.rbs_shape(rbs_methods("::Hyperion::IOUring", :singleton).fetch(meth).method_types)
      ring = self.class.rbs_shape(rbs_methods(subjects[klass][0], :instance, :private).fetch(:initialize).method_types)
      expect(helper[:keys]).to eq(ring[:keys]), meth.to_s
    end
  end

  subjects.each do |object, (name, _, native)|
    it "declares exactly the constants and classes of #{object}, with their superclasses" do
      skip_unless_native if native == :all
      namespace = type_name(name).to_namespace
      rbs_consts = @env.constant_decls.keys.select { |t| t.namespace == namespace }.map(&:name)
      rbs_classes = @env.class_decls.keys.select { |t| t.namespace == namespace }.map(&:name)
      # Set only when the extension failed to load.
      rbs_consts -= %i[NATIVE_LOAD_ERROR] unless object.const_defined?(:NATIVE_LOAD_ERROR, false)
      expect((rbs_consts + rbs_classes).sort).to eq(object.constants(false).sort)

      rbs_classes.each do |c|
        entry = @env.class_decls[RBS::TypeName.new(name: c, namespace: namespace)]
        ruby_class = object.const_get(c, false)
        expect(ruby_class.is_a?(Class)).to eq(entry.is_a?(RBS::Environment::ClassEntry)), "#{ruby_class}: class or module"
        next unless ruby_class.is_a?(Class)

        super_name = entry.primary.decl.super_class&.name&.to_s || "::Object"
        expect("::#{ruby_class.superclass}").to eq(super_name), "superclass of #{ruby_class}"
      end
    end
  end
end
