use std::ffi::OsString;

use clap::Args;

use crate::{build, cmd};

/// Default service file of `cargo xtask run` (and of the installed daemon).
const DEFAULT_SERVICES: &str = "/etc/forwarder/services.toml";

/// Build, then run the daemon in the foreground (through sudo when not
/// root). Arguments go to `forwarder run`, e.g. `cargo xtask run -- --iface
/// eth0`; `--services` defaults to /etc/forwarder/services.toml.
#[derive(Debug, Args)]
pub struct Run {
    /// Arguments for `forwarder run`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

impl Run {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { args } = self;
        let has_services = args.iter().any(|a| a.to_string_lossy().starts_with("--services"));
        if !has_services && !std::path::Path::new(DEFAULT_SERVICES).exists() {
            anyhow::bail!(
                "no service file at {DEFAULT_SERVICES}: copy forwarder/examples/services.toml there \
                 and edit it, or pass --services FILE"
            );
        }
        build::release()?;
        let binary = cmd::workspace_root().join("target/release/forwarder");
        let mut command = cmd::as_root(binary);
        command.arg("run");
        if !has_services {
            command.args(["--services", DEFAULT_SERVICES]);
        }
        command.args(args);
        cmd::run(&mut command)
    }
}
