use clap::Args;

use crate::{build, cmd};

/// Build, then show the forwarder working in a throw-away lab of network
/// namespaces (a client, the forwarder, two nodes with a NodePort web
/// server): requests to the VIP in snat and preserve mode, which node
/// answered and which client address it saw; then `forwarder service list`,
/// `stats` and `flows` against the running daemon. Cleans up after itself.
#[derive(Debug, Args)]
pub struct Demo {
    /// Leave the lab and the daemon running, to try the CLI by hand, until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

impl Demo {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { keep } = self;
        let binary = build::for_lab()?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        cmd::run(
            cmd::as_root(cargo)
                .current_dir(cmd::workspace_root())
                .env("FORWARDER_BIN", binary)
                .args(["run", "--quiet", "--release", "--package", "forwarder-tests", "--bin", "demo", "--"])
                .args(keep.then_some("--keep")),
        )
    }
}
