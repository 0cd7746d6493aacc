//! Daemons started under `ip netns exec` with the default pin directory
//! mount a bpffs on the host's /sys/fs/bpf if it has none: the test and
//! bench runs put the host back as they found it.

use crate::cmd;

pub const BPFFS: &str = "/sys/fs/bpf";

/// Whether the host had a bpffs on /sys/fs/bpf before a run.
pub struct HostBpffs {
    mounted_before: bool,
}

impl HostBpffs {
    #[must_use]
    pub fn note() -> Self {
        Self { mounted_before: is_bpffs(BPFFS) }
    }

    /// Unmounts a bpffs the run mounted, once nothing but the kernel's
    /// own iterators is left in it.
    pub fn restore(self) {
        if !self.mounted_before && is_bpffs(BPFFS) && dir_is_empty(BPFFS) {
            let _ = cmd::run(cmd::as_root("umount").arg(BPFFS));
        }
    }
}

fn is_bpffs(path: &str) -> bool {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T", path])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "bpf_fs")
}

/// Whether a bpffs holds nothing but the iterators the kernel's
/// `bpf_preload` puts in every new one (`maps.debug`, `progs.debug`).
fn dir_is_empty(path: &str) -> bool {
    std::fs::read_dir(path).is_ok_and(|entries| {
        entries.filter_map(Result::ok).all(|e| e.file_name().to_string_lossy().ends_with(".debug"))
    })
}
