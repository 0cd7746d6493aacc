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
///
/// `ip netns add` bind-mounts the namespace there; a symlink is not
/// followed, so whoever can write `named` cannot point this daemon's
/// pins and socket at another namespace's names.
fn netns_name(named: &Path) -> Option<String> {
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir(named).ok()?.flatten().find_map(|entry| {
        let meta = std::fs::symlink_metadata(entry.path()).ok()?;
        ((meta.dev(), meta.ino()) == (ours.dev(), ours.ino()))
            .then(|| entry.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_a_plain_file_nor_a_symlink_names_a_namespace() {
        // The positive case needs the bind mount `ip netns add` makes: the
        // e2e tests run daemons under `ip netns exec` with default places.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("other"), "").unwrap();
        assert_eq!(netns_name(dir.path()), None);
        std::os::unix::fs::symlink("/proc/self/ns/net", dir.path().join("blue")).unwrap();
        assert_eq!(netns_name(dir.path()), None);
    }
}
