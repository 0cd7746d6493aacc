//! `cargo xtask bench`: runs every benchmark case and writes the report.
//!
//! Usage: `bench [--quick] [--only PART]... [--out DIR]` (as root; `FORWARDER_BIN` names
//! the daemon binary for the HTTP cases). The report goes to
//! `tests/bench-results/` unless `--out` says otherwise.
//!
//! `bench --hold MODE [--seconds N]` times only the new-flow cost of `MODE`
//! (snat, preserve), again and again for N seconds (30 by default), for a
//! profiler to attach to; it writes no report.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use forwarder_tests::bench::{self, Config};

fn main() -> anyhow::Result<()> {
    forwarder_tests::require_root();
    let mut config = Config {
        quick: false,
        only: Vec::new(),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench-results"),
    };
    let mut hold = None;
    let mut seconds = 30;
    let (mut out_given, mut seconds_given) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => config.quick = true,
            "--only" => {
                let part = args.next().context("--only needs a part")?;
                if !bench::PARTS.contains(&part.as_str()) {
                    bail!("unknown part {part:?}; parts: {}", bench::PARTS.join(", "));
                }
                config.only.push(part);
            }
            "--out" => {
                config.out = args.next().context("--out needs a directory")?.into();
                out_given = true;
            }
            "--hold" => hold = Some(args.next().context("--hold needs a mode: snat, preserve")?),
            "--seconds" => {
                let value = args.next().context("--seconds needs a number")?;
                seconds =
                    value.parse().with_context(|| format!("--seconds {value:?}: not a whole number"))?;
                seconds_given = true;
            }
            other => bail!(
                "unknown argument {other:?}; usage: bench [--quick] [--only PART]... [--out DIR] \
                 | bench --hold MODE [--seconds N]"
            ),
        }
    }
    if let Some(mode) = hold {
        if config.quick || !config.only.is_empty() || out_given {
            bail!("--hold times one row and writes no report: no --quick, --only or --out with it");
        }
        return bench::hold_new_flow(&mode, std::time::Duration::from_secs(seconds));
    }
    if seconds_given {
        bail!("--seconds is how long --hold times");
    }
    let started = std::time::Instant::now();
    let report = bench::run(&config)?;
    report.write(&config.out)?;
    println!("{}", report.markdown());
    eprintln!("bench: report in {} ({:.0?})", config.out.display(), started.elapsed());
    Ok(())
}
