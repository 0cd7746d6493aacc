//! Where a daemon keeps its state unless told otherwise: one place per
//! network namespace. A daemon started with `ip netns exec NAME` uses
//! `/run/forwarder-netns-NAME` and `/sys/fs/bpf/forwarder-netns-NAME`, so
//! daemons in different namespaces share neither a control socket nor pins
//! (a Unix socket path reaches across network namespaces), and a CLI verb
//! started the same way finds its own daemon.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// The directory `ip netns` keeps its named namespaces in.
const NAMED_NETNS: &str = "/run/netns";

/// The name of this network namespace's state: `forwarder`, or
/// `forwarder-netns-NAME` in a namespace `ip netns` knows as NAME.
#[must_use]
pub fn state_name() -> String {
    match netns_name(Path::new(NAMED_NETNS)) {
        Some(name) => format!("forwarder-netns-{name}"),
        None => "forwarder".to_owned(),
    }
}

/// The default run directory (control socket, state record).
#[must_use]
pub fn default_run_dir() -> PathBuf {
    Path::new("/run").join(state_name())
}

/// The name under `named` of this process's network namespace, if any.
fn netns_name(named: &Path) -> Option<String> {
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir(named).ok()?.flatten().find_map(|entry| {
        let meta = std::fs::metadata(entry.path()).ok()?;
        ((meta.dev(), meta.ino()) == (ours.dev(), ours.ino()))
            .then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_found_by_its_inode_not_its_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("other"), "").unwrap();
        assert_eq!(netns_name(dir.path()), None);
        // A bind mount would be the real thing; a symlink to our own
        // namespace file resolves to the same inode.
        std::os::unix::fs::symlink("/proc/self/ns/net", dir.path().join("blue")).unwrap();
        assert_eq!(netns_name(dir.path()).as_deref(), Some("blue"));
    }
}
