use clap::Args;

use crate::{cmd, setup};

/// Build the datapath and the daemon in release mode:
/// `target/release/forwarder`.
#[derive(Debug, Args)]
pub struct Build {}

impl Build {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self {} = self;
        release()
    }
}

/// Makes sure the toolchain is there, then builds the release binary.
pub fn release() -> anyhow::Result<()> {
    setup::ensure_toolchain()?;
    cmd::run(cmd::cargo().args(["build", "--release", "--package", "forwarder"]))?;
    eprintln!("built {}", cmd::workspace_root().join("target/release/forwarder").display());
    Ok(())
}

/// What running the lab (tests, demo) needs: the toolchain, the test tools
/// and the release binary, whose path it returns.
pub fn for_lab() -> anyhow::Result<std::path::PathBuf> {
    setup::ensure_test_tools()?;
    release()?;
    Ok(cmd::workspace_root().join("target/release/forwarder"))
}
