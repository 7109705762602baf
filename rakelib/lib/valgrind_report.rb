# frozen_string_literal: true

# Reads valgrind's XML output and sorts each error into :ours (fails the
# task), :suspect (printed, does not fail) or :other (Ruby's; counted). A
# small regexp reader: the format is flat and rexml is not in the bundle.
class ValgrindReport
  INVALID = %w[InvalidRead InvalidWrite InvalidFree MismatchedFree InvalidJump InvalidMemPool
               Overlap FishyValue ClientCheck].freeze
  UNINIT = %w[UninitCondition UninitValue SyscallParam].freeze
  LEAK = %w[Leak_DefinitelyLost].freeze
  UNINIT_DEPTH = 4
  ALLOCATOR_FN = /\A(malloc|calloc|realloc|reallocarray|memalign|posix_memalign|aligned_alloc|valloc|strn?dup)\z/
  RUBY_ALLOC_FN = /\A(ruby_x|rb_xmalloc|rb_data_(typed_)?object_(z)?alloc|rb_data_(typed_)?object_make|rb_alloc_tmp_buffer)/
  Error = Struct.new(:file, :kind, :what, :stacks, :suppression, keyword_init: true)

  attr_reader :files

  def initialize(files)
    @files = files
    @by_verdict = files.flat_map { |f| parse(f) }.group_by { |e| verdict(e) }
  end

  def ours = @by_verdict.fetch(:ours, [])
  def suspect = @by_verdict.fetch(:suspect, [])
  def others = @by_verdict.fetch(:other, [])

  def verdict(error)
    case error.kind
    when *INVALID then error.stacks.flatten.any? { |f| our?(f) } ? :ours : :other
    when *UNINIT then uninit_verdict(error.stacks.first.to_a)
    when *LEAK then leaked_by_us?(error.stacks.first.to_a) ? :ours : :other
    else :other
    end
  end

  # Ours: our code used the value (our frame innermost), or handed it to
  # libc/liburing/a syscall within UNINIT_DEPTH frames. With libruby frames
  # between it is usually the conservative GC scanning our stack frame (a
  # call of ours that allocated), but may be a Ruby API we passed garbage to:
  # suspect.
  def uninit_verdict(stack)
    index = stack.first(UNINIT_DEPTH).index { |f| our?(f) }
    return :other unless index
    return :ours if stack.first(index).none? { |f| obj(f).start_with?("libruby") }

    :suspect
  end

  # Ruby 3.1 frees no object memory at exit, so Ruby's own "definite leaks"
  # include what it allocated *for* us (rb_define_method in Init_, a String
  # we returned). Ours is a block whose allocation, read from the innermost
  # frame out, reaches our code through nothing but the allocator, Ruby's
  # xmalloc wrappers (named, or anonymous libruby frames) and liburing: the
  # first frame that is none of those decides.
  def leaked_by_us?(stack)
    decisive = stack.find do |f|
      next false if f[:fn].to_s.match?(ALLOCATOR_FN) || obj(f).start_with?("vgpreload_", "liburing")
      next false if obj(f).start_with?("libruby") && (f[:fn].nil? || f[:fn].match?(RUBY_ALLOC_FN))

      true
    end
    decisive ? our?(decisive) : false
  end

  def obj(frame)
    File.basename(frame[:obj].to_s)
  end

  def our?(frame)
    obj(frame).start_with?("hyperion_io_uring")
  end

  def parse(file)
    File.read(file).scan(%r{<error>(.*?)</error>}m).map do |(body)|
      stacks = body.scan(%r{<stack>(.*?)</stack>}m).map do |(stack)|
        stack.scan(%r{<frame>(.*?)</frame>}m).map { |(frame)| frame_of(frame) }
      end
      what = body[%r{<what>(.*?)</what>}m, 1] || body[%r{<xwhat>\s*<text>(.*?)</text>}m, 1]
      Error.new(file: file, kind: body[%r{<kind>(.*?)</kind>}, 1], what: unescape(what.to_s),
                stacks: stacks, suppression: body[%r{<rawtext>\s*<!\[CDATA\[(.*?)\]\]>}m, 1])
    end
  end

  def frame_of(xml)
    %w[obj fn file line].to_h { |k| [k.to_sym, xml[%r{<#{k}>(.*?)</#{k}>}m, 1]&.then { |v| unescape(v) }] }
  end

  def unescape(text)
    text.gsub("&lt;", "<").gsub("&gt;", ">").gsub("&quot;", '"').gsub("&apos;", "'").gsub("&amp;", "&")
  end

  def print
    dir = File.dirname(@files.first)
    File.write(File.join(dir, "other.supp"), (others + suspect).map(&:suppression).compact.uniq.join("\n"))
    puts "spec:valgrind: #{@files.size} process(es) checked (#{dir}); #{others.size} error record(s) " \
         "of Ruby's own ignored (their suppressions: other.supp)"
    unless suspect.empty?
      puts "spec:valgrind: #{suspect.size} uninitialised-value record(s) inside Ruby under a call of ours " \
           "(most likely the GC scanning our stack; not failing). First ones:"
      suspect.first(3).each { |e| show(e, frames: 8) }
    end
    ours.each { |e| show(e) }
    puts "spec:valgrind: no errors in hyperion_io_uring" if ours.empty?
    $stdout.flush
  end

  def show(error, frames: 12)
    puts "", "#{error.kind}: #{error.what}  [#{File.basename(error.file)}]"
    error.stacks.each_with_index do |stack, i|
      puts "  --" if i.positive?
      stack.first(frames).each do |f|
        where = f[:file] ? "#{f[:file]}:#{f[:line]}" : obj(f)
        puts "    #{f[:fn] || '???'} (#{where})"
      end
    end
  end
end
