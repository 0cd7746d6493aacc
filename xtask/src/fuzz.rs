use clap::Args;

use crate::cmd;

/// Fuzz the datapath: random and mutated packets (truncated headers, every
/// IHL and data offset, options, fragments, bad lengths and checksums,
/// ICMP errors with garbage inside, VLAN tags) through the real XDP and TC
/// programs with `BPF_PROG_TEST_RUN`, checking the datapath's invariants
/// on every one (see `tests/fixtures/fuzz.rs`). Runs as root, through sudo
/// if need be. `cargo xtask test` runs a fast subset.
#[derive(Debug, Args)]
pub struct Fuzz {
    /// Packets per hook (XDP, then TC).
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
}

impl Fuzz {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { packets } = self;
        anyhow::ensure!(packets > 0, "--packets must be at least 1");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut run = cmd::as_root(&cargo);
        run.current_dir(cmd::workspace_root())
            .env("FORWARDER_FUZZ_PACKETS", packets.to_string())
            .args(["test", "--release", "--package", "forwarder-tests", "--test", "fixtures", "fuzz::"])
            .args(["--", "--test-threads=1", "--nocapture"]);
        cmd::run(&mut run)
    }
}
