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
        remove_stale_namespaces();
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

/// Removes network namespaces left by a test run that was killed before its
/// guards ran: test namespaces are named `{prefix}{pid}x{n}{role}`; those
/// whose pid is gone are stale.
fn remove_stale_namespaces() {
    let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() else { return };
    for name in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("fw") else { continue };
        let digits: String =
            rest.chars().skip_while(|c| c.is_ascii_alphabetic()).take_while(char::is_ascii_digit).collect();
        let marked = rest.chars().skip_while(|c| c.is_ascii_alphabetic()).nth(digits.len()) == Some('x');
        if digits.is_empty() || !marked || std::path::Path::new("/proc").join(&digits).exists() {
            continue;
        }
        eprintln!("removing stale test namespace {name}");
        let _ = cmd::run(cmd::as_root("ip").args(["netns", "del", name]));
    }
}
