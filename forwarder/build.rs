//! Builds `forwarder-ebpf` for the BPF target and embeds it.
//!
//! The BPF crate needs `-Z build-std=core`, hence core's sources. Which
//! toolchain provides them, in order:
//! 1. `FORWARDER_BPF_TOOLCHAIN` (a rustup toolchain name), if set;
//! 2. rustup `nightly` with the `rust-src` component (the usual aya setup);
//! 3. `forwarder-bpf`: Debian's `rustc-web` (which ships core sources),
//!    linked into rustup by `cargo xtask setup`, used with
//!    `RUSTC_BOOTSTRAP=1` since it is a stable compiler.

use std::{env, path::Path, process::Command};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

const LINKED_TOOLCHAIN: &str = "forwarder-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=FORWARDER_BPF_TOOLCHAIN");
    let toolchain = match env::var("FORWARDER_BPF_TOOLCHAIN") {
        Ok(name) => name,
        Err(_) if has_core_sources("nightly") => "nightly".to_owned(),
        Err(_) if has_core_sources(LINKED_TOOLCHAIN) => LINKED_TOOLCHAIN.to_owned(),
        Err(_) => bail!(
            "no Rust toolchain with core sources for the BPF target: run `cargo xtask setup` \
             (as root it installs them), or `rustup component add rust-src --toolchain nightly`"
        ),
    };
    if !is_nightly(&toolchain) {
        // SAFETY: build scripts are single-threaded; aya-build reads this to
        // add `-Z build-std=core` and the child cargo inherits it.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.join("forwarder-ebpf");
    let package = Package {
        name: "forwarder-ebpf",
        root_dir: root.to_str().context("non-UTF-8 path")?,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
}

fn sysroot(toolchain: &str) -> Option<String> {
    let out = Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn has_core_sources(toolchain: &str) -> bool {
    sysroot(toolchain).is_some_and(|root| Path::new(&root).join("lib/rustlib/src/rust/library/core").is_dir())
}

fn is_nightly(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["run", toolchain, "rustc", "--version"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("nightly"))
}
