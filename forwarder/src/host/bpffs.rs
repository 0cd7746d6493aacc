//! The bpffs the pinned state lives in, found or mounted.
//!
//! Pins must outlive the daemon (they keep the datapath attached across a
//! crash or a restart), so they must sit in a bpffs that outlives it too.
//! `ip netns exec` gives each command a private mount namespace with a
//! fresh sysfs, where /sys/fs/bpf is an empty sysfs directory: a bpffs
//! mounted there would vanish with the process, pins and all. So, for the
//! default pin directory, when /sys/fs/bpf here is no bpffs and this mount
//! namespace is not the one this process was started from, the pins go to
//! the bpffs of the starting (parent's) mount namespace, mounted there if
//! need be, and are reached through a directory handle into it. A bpffs
//! mounted here is never unmounted by the daemon, since its pins are what
//! keeps the datapath attached.

use std::{
    fs::File,
    os::{fd::IntoRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tracing::{info, warn};

/// Where bpffs belongs.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpfFsError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "cannot mount bpffs on {}: {error}{}", path.display(),
        if *error == nix::Error::EPERM { " (needs CAP_SYS_ADMIN: mount one yourself with `mount -t bpf bpf /sys/fs/bpf`, or pass --pin-dir DIR on a bpffs)" } else { "" }
    )]
    Mount { path: PathBuf, error: nix::Error },
    #[error("mounting bpffs on {BPFFS_ROOT} in the parent's mount namespace: {0}")]
    MountOutside(String),
}

/// A pin directory on a bpffs, ready for pins.
#[derive(Clone, Debug)]
pub struct PinDir {
    /// The path this process reaches it by.
    pub path: PathBuf,
    /// The path as the mount namespace that holds it sees it: for logs,
    /// the state record and `forwarder down`.
    pub shown: PathBuf,
}

impl PinDir {
    /// `dir` as given (`--pin-dir`): created, with a bpffs mounted on it
    /// if it is on another file system, or on its nearest existing
    /// ancestor if that is an empty directory nothing can be created in
    /// (like /sys/fs/bpf on a fresh sysfs).
    pub fn at(dir: &Path) -> Result<Self, BpfFsError> {
        match std::fs::create_dir_all(dir) {
            Ok(()) => {
                if !is_bpffs(dir) {
                    mount_here(dir)?;
                }
            }
            Err(error) => {
                let anchor = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
                let empty = std::fs::read_dir(anchor).is_ok_and(|mut entries| entries.next().is_none());
                if is_bpffs(anchor) || !empty {
                    return Err(BpfFsError::Io { path: dir.to_owned(), error });
                }
                mount_here(anchor)?;
                std::fs::create_dir_all(dir)
                    .map_err(|error| BpfFsError::Io { path: dir.to_owned(), error })?;
            }
        }
        Ok(Self { path: dir.to_owned(), shown: dir.to_owned() })
    }

    /// The default pin directory `/sys/fs/bpf/NAME`, in the bpffs that
    /// outlives this process (see the module's doc).
    pub fn default(name: &str) -> Result<Self, BpfFsError> {
        let shown = Path::new(BPFFS_ROOT).join(name);
        if is_bpffs(Path::new(BPFFS_ROOT)) {
            return Self::at(&shown);
        }
        let Some(parent) = outer_mount_namespace() else { return Self::at(&shown) };
        match bpffs_of(parent, true) {
            Ok(root) => {
                let path = root.join(name);
                std::fs::create_dir_all(&path)
                    .map_err(|error| BpfFsError::Io { path: shown.clone(), error })?;
                info!(dir = %shown.display(), "pinning in the bpffs of the mount namespace this process was started from, so that pins outlive this one");
                Ok(Self { path, shown })
            }
            Err(err) => {
                warn!(%err, "pins will last only as long as this mount namespace");
                Self::at(&shown)
            }
        }
    }

    /// Where the default pin directory `NAME` is, if it exists; mounts
    /// nothing (for `forwarder down`).
    #[must_use]
    pub fn find_default(name: &str) -> Option<Self> {
        let shown = Path::new(BPFFS_ROOT).join(name);
        let path = if is_bpffs(Path::new(BPFFS_ROOT)) {
            shown.clone()
        } else {
            bpffs_of(outer_mount_namespace()?, false).ok()?.join(name)
        };
        path.exists().then_some(Self { path, shown })
    }
}

/// The process this one was started from, if it is in another mount
/// namespace (as under `ip netns exec`, or a unit with a private one).
fn outer_mount_namespace() -> Option<u32> {
    let parent = nix::unistd::getppid().as_raw().cast_unsigned();
    let ours = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    let theirs = std::fs::metadata(format!("/proc/{parent}/ns/mnt")).ok()?;
    (parent > 0 && (ours.dev(), ours.ino()) != (theirs.dev(), theirs.ino())).then_some(parent)
}

/// A path into /sys/fs/bpf of process `pid`'s mount namespace, mounting a
/// bpffs there first if `mount` and there is none. The path goes through
/// a directory handle kept open for the life of this process, so it stays
/// valid after `pid` exits.
fn bpffs_of(pid: u32, mount: bool) -> Result<PathBuf, BpfFsError> {
    let root = PathBuf::from(format!("/proc/{pid}/root{BPFFS_ROOT}"));
    if !is_bpffs(&root) {
        if !mount {
            return Err(BpfFsError::MountOutside("no bpffs there".to_owned()));
        }
        mount_in_namespace_of(pid)?;
    }
    let dir = File::open(&root).map_err(|error| BpfFsError::Io { path: root.clone(), error })?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", dir.into_raw_fd()));
    if !is_bpffs(&path) {
        return Err(BpfFsError::MountOutside("the mount did not show up".to_owned()));
    }
    Ok(path)
}

/// Mounts bpffs on /sys/fs/bpf in `pid`'s mount namespace, from a child
/// process (a multi-threaded process cannot change its mount namespace).
fn mount_in_namespace_of(pid: u32) -> Result<(), BpfFsError> {
    let outside = |error: &dyn std::fmt::Display| BpfFsError::MountOutside(error.to_string());
    let namespace = File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| outside(&e))?;
    let mut mount = Command::new("mount");
    mount.args(["-t", "bpf", "bpf", BPFFS_ROOT]);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one system call, on a descriptor opened before the fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut mount, move || {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)
        });
    }
    let output = mount.output().map_err(|e| outside(&e))?;
    if !output.status.success() {
        return Err(outside(&String::from_utf8_lossy(&output.stderr).trim()));
    }
    info!(
        pid,
        "mounted bpffs on {BPFFS_ROOT} in the mount namespace of the process this one was started from"
    );
    Ok(())
}

fn mount_here(dir: &Path) -> Result<(), BpfFsError> {
    mount(Some("bpf"), dir, Some("bpf"), MsFlags::empty(), None::<&str>)
        .map_err(|error| BpfFsError::Mount { path: dir.to_owned(), error })?;
    info!(dir = %dir.display(), "mounted bpffs");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|stat| stat.filesystem_type() == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_directory_on_another_file_system_is_refused_when_its_ancestor_holds_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x").unwrap();
        std::fs::write(dir.path().join("blocker"), "x").unwrap();
        // A path that cannot be created (a file in the way) under a
        // directory with files in it: nothing is mounted over them.
        let err = PinDir::at(&dir.path().join("blocker/pins")).unwrap_err();
        assert!(matches!(err, BpfFsError::Io { .. }), "{err}");
        assert!(!is_bpffs(dir.path()));
    }
}
