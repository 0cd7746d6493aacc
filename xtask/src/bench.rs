use clap::Args;

use crate::{build, cmd, setup};

/// Benchmark the forwarder against the alternatives (nftables DNAT, nginx,
/// HAProxy) in network namespaces, in one run: packet rates, HTTP
/// connection rates and latency, per-packet program cost and its scaling,
/// control-plane timings. Writes README.md (the table), results.json and
/// chart.png into the results folder. Installs nftables, HAProxy, wrk and
/// a font for the chart if they are missing (needs root, as the benchmark
/// itself does).
#[derive(Debug, Args)]
pub struct Bench {
    /// Fewer and shorter runs: under two minutes, for a first look.
    #[arg(long)]
    quick: bool,
    /// Only these parts (repeatable): cost, control, pps, http, churn.
    #[arg(long, value_parser = ["cost", "control", "pps", "http", "churn"])]
    only: Vec<String>,
    /// Where the results go [default: tests/bench-results].
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Instead of the benchmark: time only this mode's new-flow cost, again
    /// and again for `--seconds`, for a profiler to attach to (e.g.
    /// `perf record -a -g -- sleep 10` once it says it is timing); writes no
    /// report.
    #[arg(long, value_parser = ["snat", "preserve"], conflicts_with_all = ["quick", "only", "out"])]
    hold: Option<String>,
    /// How long `--hold` times.
    #[arg(long, default_value_t = 30, requires = "hold")]
    seconds: u64,
}

impl Bench {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { quick, only, out, hold, seconds } = self;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = cmd::as_root(cargo);
        command.current_dir(cmd::workspace_root());
        if hold.is_none() {
            setup::ensure_bench_tools()?;
            command.env("FORWARDER_BIN", build::for_lab()?);
        } else {
            // Neither the tools compared with nor the lab's: only the
            // toolchain, and the build as this user.
            build::release()?;
        }
        command
            .args(["run", "--quiet", "--release", "--package", "forwarder-tests", "--bin", "bench", "--"])
            .args(quick.then_some("--quick"));
        for part in only {
            command.args(["--only", &part]);
        }
        if let Some(mode) = hold {
            command.args(["--hold", &mode, "--seconds", &seconds.to_string()]);
        }
        if let Some(out) = out {
            command.arg("--out").arg(std::path::absolute(out)?);
        }
        let bpffs = crate::bpffs::HostBpffs::note();
        let result = cmd::run(&mut command);
        bpffs.restore();
        result
    }
}
