//! `cargo xtask bench`: runs every benchmark case and writes the report.
//!
//! Usage: `bench [--quick] [--only PART]... [--out DIR]` (as root; `FORWARDER_BIN` names
//! the daemon binary for the HTTP cases). The report goes to
//! `tests/bench-results/` unless `--out` says otherwise.

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
            "--out" => config.out = args.next().context("--out needs a directory")?.into(),
            other => bail!("unknown argument {other:?}; usage: bench [--quick] [--only PART]... [--out DIR]"),
        }
    }
    let started = std::time::Instant::now();
    let report = bench::run(&config)?;
    report.write(&config.out)?;
    println!("{}", report.markdown());
    eprintln!("bench: report in {} ({:.0?})", config.out.display(), started.elapsed());
    Ok(())
}
