use clap::Args;

use crate::{build, cmd, setup};

/// Run every test: host unit tests, then (as root, through sudo if need be)
/// the BPF fixture tests and the end-to-end tests in network namespaces.
#[derive(Debug, Args)]
pub struct Test {
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

impl Test {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { filter } = self;
        setup::ensure_toolchain()?;
        setup::ensure_test_tools()?;
        build::release()?;
        let filter: Vec<String> = filter.into_iter().collect();
        cmd::run(
            cmd::cargo()
                .args(["test", "--release", "--package", "forwarder-common", "--package", "forwarder", "--"])
                .args(&filter),
        )?;
        if !cmd::is_root() {
            eprintln!(
                "the kernel tests load BPF programs and create network namespaces: running them with sudo"
            );
        }
        let binary = cmd::workspace_root().join("target/release/forwarder");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        cmd::run(
            cmd::as_root(cargo)
                .current_dir(cmd::workspace_root())
                .env("FORWARDER_BIN", binary)
                .args(["test", "--release", "--package", "forwarder-tests", "--"])
                .arg("--test-threads=1")
                .args(&filter),
        )
    }
}
