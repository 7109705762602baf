# frozen_string_literal: true

module Bench
  # The SVG chart of a run's ratios, each bar against its target.
  class Report
    CHART_ACCEPT = { "blocking" => "blocking accept", "ring" => "Ring#accept", "multishot" => "multishot" }.freeze

    # [label, ratio, target, :higher/:lower better, ceiling?]
    def bars
      list = []
      if @only.include?("accept")
        @cfg.accept_loads.each do |row, _c, _waves|
          base = med(:accept, row, "select", :rate)
          { "blocking" => nil, "ring" => 1.2, "multishot" => 1.5 }.each do |v, target|
            target = nil unless row == rate_row
            list << ["accept, #{load_label(row)}: #{CHART_ACCEPT.fetch(v)} vs accept_nonblock, accepts/s",
                     Bench.ratio(med(:accept, row, v, :rate), base), target, :higher]
          end
          list << ["accept, #{load_label(row)}: C accept4 loop (ceiling) vs accept_nonblock, accepts/s",
                   Bench.ratio(med(:accept, row, "c_accept", :rate), base), nil, :higher, true]
        end
      end
      if @only.include?("http")
        @cfg.wrk_conns.each do |c|
          row = "c#{c}"
          list << ["http -c#{c}: HotpathRing vs IO.select, req/s", Bench.ratio(med(:http, row, "hotpath", :rps),
                                                                  med(:http, row, "select", :rps)),
                   c == 50 ? 1.5 : nil, :higher]
          list << ["http -c#{c}: C epoll server (ceiling) vs IO.select, req/s",
                   Bench.ratio(med(:http, row, "c_epoll", :rps), med(:http, row, "select", :rps)), nil, :higher, true]
          list << ["http -c#{c}: HotpathRing vs IO.select, CPU/req", Bench.ratio(med(:http, row, "hotpath", :cpu_us),
                                                                    med(:http, row, "select", :cpu_us)),
                   c == 50 ? 0.7 : nil, :lower]
          list << ["http -c#{c}: HotpathRing vs C epoll server, CPU/req",
                   Bench.ratio(med(:http, row, "hotpath", :cpu_us), med(:http, row, "c_epoll", :cpu_us)),
                   [50, 200].include?(c) ? 1.0 : nil, :lower]
        end
      end
      if @only.include?("percall")
        floor = med(:percall, "ns", "sysread", :ns)
        %w[ring_read read_nonblock each_completion copy_release take_buffer].each do |v|
          list << ["per call vs IO#sysread: #{PERCALL_VARIANTS[v]}", Bench.ratio(med(:percall, "ns", v, :ns), floor),
                   v == "ring_read" ? 2.5 : nil, :lower]
        end
      end
      if @only.include?("percall")
        list << ["per call: 16-byte round trip through the ring vs syswrite + sysread",
                 Bench.ratio(med(:percall, "ns", "ring_rt", :ns), med(:percall, "ns", "pair_rt", :ns)), 1.3, :lower]
      end
      if @only.include?("conns")
        row = conns_row
        list << ["#{fmt(@cfg.conns_n, 0)} conns: HotpathRing vs nio4r, RSS per idle conn",
                 Bench.ratio(med(:conns, row, "hotpath", :rss_idle), med(:conns, row, "nio4r", :rss_idle)), 0.1, :lower]
        list << ["#{fmt(@cfg.conns_n, 0)} conns: HotpathRing vs nio4r, CPU/req",
                 Bench.ratio(med(:conns, row, "hotpath", :cpu_us), med(:conns, row, "nio4r", :cpu_us)), 0.8, :lower]
        list << ["#{fmt(@cfg.conns_n, 0)} conns: C epoll server (ceiling) vs nio4r, CPU/req",
                 Bench.ratio(med(:conns, row, "c_epoll", :cpu_us), med(:conns, row, "nio4r", :cpu_us)), nil, :lower,
                 true]
      end
      if @only.include?("bodies")
        @cfg.body_sizes.each do |size|
          row = Bench.body_row(size)
          list << ["#{Bench.body_label(size)} bodies -c#{@cfg.body_conns}: HotpathRing vs IO.select, CPU/req",
                   Bench.ratio(med(:bodies, row, "hotpath", :cpu_us), med(:bodies, row, "select", :cpu_us)), 0.7,
                   :lower]
        end
      end
      list.reject { |b| b[1].nil? }
    end

    def esc(s) = s.to_s.gsub("&", "&amp;").gsub("<", "&lt;").gsub(">", "&gt;")

    def svg
      list = bars
      # About 6.8 px per character of 12 px sans-serif, plus the arrow.
      label_w = [(list.map { |b| b[0].size }.max.to_i * 6.8 + 30).round, 300].max
      plot_w = 440
      bar_h = 18
      gap = 8
      top = 72
      height = top + list.size * (bar_h + gap) + 40
      width = label_w + plot_w + 80
      max = [[list.map { |b| [b[1], b[2] || 0] }.flatten.max.to_f * 1.1, 2.0].max, 6.0].min
      x = ->(v) { label_w + (plot_w * [v, max].min / max) }
      out = []
      out << %(<svg xmlns="http://www.w3.org/2000/svg" width="#{width}" height="#{height}" ) +
             %(viewBox="0 0 #{width} #{height}" font-family="sans-serif" font-size="12">)
      out << %(<rect width="100%" height="100%" fill="white"/>)
      out << %(<text x="10" y="20" font-size="15" font-weight="bold">hyperion-io_uring: ratios vs plain Ruby I/O ) +
             %((median of #{@meta['rounds']}, #{esc(@meta['date'])})</text>)
      out << %(<text x="10" y="38" fill="#555">\u2191 higher is better, \u2193 lower is better. Green: target met, ) +
             %(red: not met, blue: no target; black tick: the target; dashed: 1.0x (the baseline).</text>)
      if list.any? { |b| b[4] }
        out << %(<text x="10" y="54" fill="#555">Grey: a C server (bench/hello_epoll.c), the ceiling of this ) +
               %(machine and load generator: a reference, not a target.</text>)
      end
      (0..max.floor).each do |t|
        out << %(<line x1="#{x.call(t)}" y1="#{top - 6}" x2="#{x.call(t)}" y2="#{height - 30}" stroke="#{t == 1 ? '#333' : '#ddd'}" ) +
               %(#{t == 1 ? 'stroke-dasharray="4,3"' : ''}/>)
        out << %(<text x="#{x.call(t)}" y="#{height - 16}" text-anchor="middle" fill="#555">#{t}x</text>)
      end
      list.each_with_index do |(label, ratio, target, better, ceiling), i|
        y = top + i * (bar_h + gap)
        color = if ceiling then "#9a9a9a"
                elsif target.nil? then "#4a7fb5"
                elsif better == :higher ? ratio >= target : ratio <= target then "#3a9d4a"
                else "#c8423b"
                end
        arrow = better == :higher ? "\u2191" : "\u2193"
        out << %(<text x="#{label_w - 8}" y="#{y + 13}" text-anchor="end">#{esc(label)} ) +
               %(<tspan fill="#888">#{arrow}</tspan></text>)
        out << %(<rect x="#{label_w}" y="#{y}" width="#{(x.call(ratio) - label_w).round(1)}" height="#{bar_h}" fill="#{color}"/>)
        out << %(<text x="#{x.call(ratio) + 4}" y="#{y + 13}">#{format('%.2fx', ratio)}#{ratio > max ? ' (clipped)' : ''}</text>)
        if target
          out << %(<line x1="#{x.call(target)}" y1="#{y - 3}" x2="#{x.call(target)}" y2="#{y + bar_h + 3}" stroke="black" stroke-width="2"/>)
        end
      end
      out << "</svg>"
      out.join("\n") + "\n"
    end
  end
end
