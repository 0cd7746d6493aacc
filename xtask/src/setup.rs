//! Installing what building and testing need, with no hand steps.
//!
//! The eBPF crate is built with `-Z build-std=core`, so it needs a toolchain
//! with core's sources, and `bpf-linker`. Where rustup's nightly has
//! `rust-src` (the usual aya setup) that is used. Otherwise, on Debian,
//! `rustc-web` (a Rust built on LLVM 22 that ships `rust-web-src`) is linked
//! into rustup as the `forwarder-bpf` toolchain, which `forwarder/build.rs`
//! picks up. `bpf-linker` is built against Debian's LLVM 22. As root this
//! installs what is missing; otherwise it says what to run.

use std::{path::Path, process::Command, sync::Once};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::cmd;

/// The rustup toolchain name `forwarder/build.rs` looks for.
const LINKED_TOOLCHAIN: &str = "forwarder-bpf";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const RUST_DEBS: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];
const LLVM_DEBS: &[&str] = &["llvm-22-dev", "libpolly-22-dev"];
/// What the end-to-end tests and the demo run: nginx as the nodes' NodePort
/// servers, ethtool and iproute2 to build the lab; strace, setpriv and
/// systemd-analyze to check the daemon against its unit's sandbox; hping3
/// for the SYN flood.
const TEST_DEBS: &[&str] = &[
    "nginx-light",
    "libnginx-mod-stream",
    "ethtool",
    "iproute2",
    "strace",
    "util-linux",
    "systemd",
    "hping3",
];

/// What the benchmark compares with and draws with: nftables, HAProxy,
/// the wrk load generator and a font for the chart (nginx comes with the
/// test tools).
const BENCH_DEBS: &[&str] = &["nftables", "haproxy", "wrk", "fonts-dejavu-core"];

/// Install the build toolchain (core sources, bpf-linker) and the test
/// tools (nginx, ethtool, iproute2); needs root for the packages.
#[derive(Debug, Args)]
pub struct Setup {}

impl Setup {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self {} = self;
        ensure_toolchain()?;
        ensure_test_tools()?;
        eprintln!("setup complete");
        Ok(())
    }
}

pub fn ensure_toolchain() -> anyhow::Result<()> {
    if !has_core_sources("nightly") && !has_core_sources(LINKED_TOOLCHAIN) {
        ensure_debs(RUST_DEBS)?;
        cmd::run(Command::new("rustup").args(["toolchain", "link", LINKED_TOOLCHAIN, "/usr"]))?;
    }
    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        ensure_debs(LLVM_DEBS)?;
        let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
        cmd::run(
            cmd::cargo()
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env("PATH", path),
        )
        .context("installing bpf-linker")?;
    }
    Ok(())
}

pub fn ensure_test_tools() -> anyhow::Result<()> {
    ensure_debs(TEST_DEBS)
}

pub fn ensure_bench_tools() -> anyhow::Result<()> {
    ensure_test_tools()?;
    ensure_debs(BENCH_DEBS)
}

fn has_core_sources(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]).output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| out.stdout.ends_with(b"install ok installed"))
}

/// Installs the Debian packages among `packages` that are missing.
fn ensure_debs(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !deb_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("missing packages: {list}; this machine has no apt-get: install their equivalents by hand");
    }
    if !cmd::is_root() {
        bail!("missing Debian packages: {list}; run `sudo cargo xtask setup` (or apt-get install {list})");
    }
    static UPDATE: Once = Once::new();
    let mut updated = Ok(());
    UPDATE.call_once(|| updated = cmd::run(Command::new("apt-get").arg("update")));
    updated?;
    let _no_starts = NoServiceStarts::new()?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Debian's policy-rc.d for the length of an install: the packages are
/// tools the lab runs in its own namespaces, so their services (nginx on
/// port 80, HAProxy) must not start on the host. A policy-rc.d already in
/// place is left as it is.
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> anyhow::Result<Self> {
        let path = Path::new(Self::PATH);
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(path, "#!/bin/sh\n# written by cargo xtask setup for one apt-get install\nexit 101\n")
            .with_context(|| Self::PATH.to_owned())?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
