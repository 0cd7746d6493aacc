//! Shared by the kernel tests and the demo: network namespaces and
//! processes that clean up after themselves, the lab topology, and small
//! clients for the nodes' servers.
//!
//! Everything here talks only to addresses inside namespaces it created.

pub mod bench;
pub mod client;
pub mod echo;
pub mod fixture;
pub mod kube_api;
pub mod lab;
pub mod netns;

/// Panics with one line unless running as root: the kernel tests load BPF
/// programs and create network namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (BPF, network namespaces): run `cargo xtask test`, which uses sudo");
    }
}

/// The forwarder binary under test: `FORWARDER_BIN` (set by `cargo xtask
/// test`), else the workspace's release or debug build.
pub fn forwarder_bin() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("FORWARDER_BIN") {
        return path.into();
    }
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("forwarder"))
        .find(|path| path.exists())
        .expect("no forwarder binary: run `cargo xtask build` first")
}
