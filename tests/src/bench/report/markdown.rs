//! The report as markdown: tables, targets, method.

use super::*;

impl Report {
    pub fn new(quick: bool) -> anyhow::Result<Self> {
        Ok(Self {
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            quick,
            machine: machine()?,
            targets: Vec::new(),
            packet_rates: Vec::new(),
            http: Vec::new(),
            costs: Vec::new(),
            scaling: Vec::new(),
            control: None,
            churn: Vec::new(),
            verifier: Vec::new(),
            generator: None,
        })
    }

    fn rate(&self, case: Case) -> f64 {
        self.packet_rates.iter().find(|r| r.case == case).map_or(f64::NAN, |r| r.mpps)
    }

    /// The rate of `case` over that of `base`: the median of each round's
    /// ratio, since a round measures the cases back to back and a slow
    /// moment of the shared machine then weighs on both.
    fn rate_ratio(&self, case: Case, base: Case) -> f64 {
        let runs = |case: Case| self.packet_rates.iter().find(|r| r.case == case).map(|r| r.runs.clone());
        let (Some(a), Some(b)) = (runs(case), runs(base)) else { return f64::NAN };
        median(a.iter().zip(&b).map(|(a, b)| a / b))
    }

    /// Nanoseconds a packet of `case` costs beyond generating it and
    /// handing it to the forwarder's interface (what XDP_DROP costs).
    fn added_ns(&self, case: Case) -> f64 {
        1e3 / self.rate(case) - 1e3 / self.rate(Case::XdpDrop)
    }

    fn http_rate(&self, path: HttpPath) -> f64 {
        self.http.iter().find(|r| r.path == path).map_or(f64::NAN, |r| r.per_second)
    }

    fn scale(&self, axis: &str, value: &str) -> Option<&ScaleRow> {
        self.scaling.iter().find(|r| r.axis == axis && r.value == value)
    }

    /// Checks the targets against the medians.
    pub fn evaluate(&mut self) {
        let mut targets = Vec::new();
        let mut ratio = |name: String, value: f64, goal: f64| {
            if !value.is_finite() {
                return; // a part that did not run
            }
            targets.push(Target {
                name,
                measured: format!("{value:.2}x"),
                goal: format!(">= {goal}x"),
                holds: value >= goal,
            });
        };
        for (mode, case) in
            [("snat", Case::ForwarderSnatEstablished), ("preserve", Case::ForwarderPreserveEstablished)]
        {
            ratio(
                format!("{mode} established packet rate / trivial XDP forwarder"),
                self.rate_ratio(case, Case::TrivialForwarder),
                0.85,
            );
            ratio(
                format!("{mode} established packet rate / nftables DNAT"),
                self.rate_ratio(case, Case::NftablesDnat),
                5.0,
            );
            ratio(
                format!("nftables DNAT / {mode} established, CPU time per packet beyond the generator"),
                self.added_ns(Case::NftablesDnat) / self.added_ns(case),
                5.0,
            );
            ratio(
                format!("{mode} established packet rate / nginx (UDP)"),
                self.rate_ratio(case, Case::NginxUdp),
                20.0,
            );
        }
        let snat_http = self.http_rate(HttpPath::ForwarderSnat);
        ratio(
            "snat HTTP connections/s / HAProxy (no UDP proxy: HTTP instead)".to_owned(),
            snat_http / self.http_rate(HttpPath::HaproxyTcp),
            20.0,
        );
        ratio(
            "snat HTTP connections/s / nginx (TCP)".to_owned(),
            snat_http / self.http_rate(HttpPath::NginxTcp),
            20.0,
        );
        // (name, axis, from, to, metric)
        type Metric = fn(&ScaleRow) -> Option<f64>;
        let established: Metric = |r| Some(r.established_ns);
        let without_lookup: Metric = |r| r.after_lookup_ns;
        let new_flow: Metric = |r| r.new_flow_ns;
        let flat: [(&str, &str, &str, &str, Metric); 6] = [
            ("established cost, 1 -> 10,000 services", "services", "1", "10,000", established),
            ("new-flow cost, 1 -> 10,000 services", "services", "1", "10,000", new_flow),
            ("established cost, 2 -> 1,000 backends", "backends", "2", "1,000", established),
            ("new-flow cost, 2 -> 1,000 backends", "backends", "2", "1,000", new_flow),
            ("established cost, 1,000 -> 1,000,000 flows", "flows", "1,000", "1,000,000", established),
            (
                "the rest of the established cost (after the flow lookup), 1,000 -> 1,000,000 flows",
                "flows",
                "1,000",
                "1,000,000",
                without_lookup,
            ),
        ];
        for (name, axis, from, to, metric) in flat {
            let (Some(from), Some(to)) =
                (self.scale(axis, from).and_then(metric), self.scale(axis, to).and_then(metric))
            else {
                continue;
            };
            let change = to / from - 1.0;
            targets.push(Target {
                name: name.to_owned(),
                measured: format!("{:+.0}% ({from:.0} -> {to:.0} ns)", change * 100.0),
                goal: "within +-10%".to_owned(),
                holds: change.abs() <= 0.10,
            });
        }
        if let Some(control) = self.control {
            let apply = control.parse_ms + control.apply_ms;
            targets.push(Target {
                name: format!("{} services applied (parse + apply)", control::SERVICES),
                measured: format!("{apply:.0} ms"),
                goal: "< 1000 ms".to_owned(),
                holds: apply < 1000.0,
            });
            targets.push(Target {
                name: format!("Maglev table for {} backends", control::MAGLEV_BACKENDS),
                measured: format!("{:.1} ms", control.maglev_ms),
                goal: "< 50 ms".to_owned(),
                holds: control.maglev_ms < 50.0,
            });
        }
        self.targets = targets;
    }

    /// Writes `README.md`, `results.json` and `chart.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("README.md"), self.markdown())?;
        super::super::chart::draw(self, &dir.join("chart.png")).context("drawing the chart")?;
        Ok(())
    }

    /// The whole report as markdown.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# forwarder benchmark\n");
        let _ = writeln!(
            md,
            "{} run of `cargo xtask bench{}`, {}.\n",
            if self.quick { "A quick" } else { "A full" },
            if self.quick { " --quick" } else { "" },
            self.date
        );
        let _ = writeln!(
            md,
            "Machine: {}, {} CPUs, {:.0} GiB, kernel {}, {}.  ",
            m.cpu, m.cpus, m.memory_gib, m.kernel, m.os
        );
        let tools: Vec<String> = m.tools.iter().map(|(name, version)| format!("{name}: {version}")).collect();
        let _ = writeln!(md, "Compared with: {}.\n", tools.join("; "));
        let _ = writeln!(md, "![packet rates and HTTP connection rates](chart.png)\n");

        let _ = writeln!(
            md,
            "## Targets\n\nPacket-rate ratios are the median of each round's ratio (a round measures every case \
             back to back); costs are medians over interleaved rounds.\n\n\
             | target | measured | goal | holds |\n|---|---|---|---|"
        );
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                t.name,
                t.measured,
                t.goal,
                if t.holds { "yes" } else { "**no**" }
            );
        }

        let nft = self.rate(Case::NftablesDnat);
        let _ = writeln!(
            md,
            "\n## Packet rates\n\n60-byte UDP packets from one generator CPU ({}; median of {} runs; see \
             below). \"Beyond the generator\": 1 / rate minus 1 / rate of XDP_DROP, the CPU time each packet costs \
             the forwarder host and the sink.\n\n\
             | case | Mpps | x nftables | ns/packet beyond the generator | runs (Mpps) |\n|---|---:|---:|---:|---|",
            self.generator.as_deref().unwrap_or("XDP live frames"),
            self.packet_rates.first().map_or(0, |r| r.runs.len())
        );
        for r in &self.packet_rates {
            let runs: Vec<String> = r.runs.iter().map(|v| format!("{:.3}", v / 1e6)).collect();
            let added = if r.case == Case::XdpDrop {
                "-".to_owned()
            } else {
                format!("{:.0}", self.added_ns(r.case))
            };
            let _ = writeln!(
                md,
                "| {} | {:.3} | {:.2} | {added} | {} |",
                r.label,
                r.mpps,
                r.mpps / nft,
                runs.join(", ")
            );
        }

        let _ = writeln!(
            md,
            "\n## HTTP through each path\n\n`wrk -t1 -c{} --latency -H \"Connection: close\"`: one TCP connection per \
             request, to nginx on two nodes (median of {} runs). Then latency at a fixed {} requests/s, one new \
             connection each, sent on a schedule (connect to answer).\n\n\
             | path | connections/s | p50 ms | p99 ms | errors / requests | p50 ms at {2}/s | p99 ms at {2}/s | failed |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|",
            http::CONNECTIONS,
            self.http.first().map_or(0, |r| r.runs.len()),
            http::PACED_RATE,
        );
        for r in &self.http {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} | {:.2} | {} / {} | {:.3} | {:.3} | {} |",
                r.label,
                r.per_second,
                r.p50_ms,
                r.p99_ms,
                r.errors,
                r.requests,
                r.paced_p50_ms,
                r.paced_p99_ms,
                r.paced_failed
            );
        }

        let _ = writeln!(
            md,
            "\n## Per-packet cost\n\nNanoseconds of the XDP program per packet, `BPF_PROG_TEST_RUN` with `repeat` \
             (one service, two backends, 1,000 flows for established).\n\n\
             | case | ns/packet | of which parsing and flow lookup |\n|---|---:|---:|"
        );
        for c in &self.costs {
            let _ = writeln!(md, "| {} | {:.0} | {} |", c.case, c.ns, opt(c.lookup_ns));
        }
        if !self.verifier.is_empty() {
            let _ = writeln!(
                md,
                "\nInstructions the verifier walked to load each program (the kernel refuses beyond \
                 1,000,000):\n\n| program | verified instructions |\n|---|---:|"
            );
            for v in &self.verifier {
                let _ = writeln!(md, "| {} | {} |", v.program, v.verified_insns);
            }
        }
        let _ = writeln!(
            md,
            "\n## Scaling\n\nSNAT; services and backends rows with 10,000 established flows, flows rows with \
             64 backends.\n\n\
             | axis | value | established ns | parsing and flow lookup ns | established minus lookup ns | new flow ns |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for s in &self.scaling {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} |",
                s.axis,
                s.value,
                s.established_ns,
                opt(s.lookup_ns),
                opt(s.after_lookup_ns),
                opt(s.new_flow_ns)
            );
        }
        if let Some(c) = self.control {
            let _ = writeln!(
                md,
                "\n## Control plane\n\n| what | ms |\n|---|---:|\n\
                 | parse and validate {} services | {:.0} |\n\
                 | apply them to a fresh datapath | {:.0} |\n\
                 | apply a version where every service changed | {:.0} |\n\
                 | build a Maglev table for {} backends ({} slots) | {:.1} |",
                control::SERVICES,
                c.parse_ms,
                c.apply_ms,
                c.reapply_ms,
                control::MAGLEV_BACKENDS,
                c.maglev_len,
                c.maglev_ms
            );
        }
        if !self.churn.is_empty() {
            let _ = writeln!(
                md,
                "\n## New connections at a fixed rate\n\nOne client, one node, snat, `--attach auto` on \
                 default veths; each connection one request and a whole answer, from {} client threads on a \
                 schedule. SNAT ports towards one node: 31,744.\n\n\
                 | case | rate asked /s | seconds | attempted | failed | made /s | p50 ms | p99 ms | over 1 s | drop_snat_exhausted |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
                crate::bench::churn::THREADS
            );
            for c in &self.churn {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {} |",
                    c.label,
                    c.rate,
                    c.seconds,
                    c.attempted,
                    c.failed,
                    c.achieved,
                    c.p50_ms,
                    c.p99_ms,
                    c.over_a_second,
                    c.snat_exhausted
                );
            }
        }
        let _ = writeln!(md, "\n## How it was measured\n\n{}\n\n{}", pps::METHOD, METHOD);
        md
    }
}

fn opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

const METHOD: &str = "HTTP: the lab of the end-to-end tests (client, forwarder host, \
two nodes behind a bridge, each in its own network namespace); every path runs on the \
forwarder host and is the only one installed while it is measured. The client, the \
forwarder and the nodes share the machine's CPUs, so connection rates measure the whole \
exchange (mostly the client and the servers), not the load balancer alone. Per-packet \
cost: the forwarder's XDP code behind a frame rewrite, timed by the kernel over \
`repeat` runs, the rewrite timed alone and subtracted; each setup in a namespace of its \
own, all setups timed in interleaved rounds, medians reported. Reproduce with \
`cargo xtask bench` (or `--quick`); the JSON next to this file holds every run.";
