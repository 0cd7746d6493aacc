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
//!
//! The parent is trusted only as far as it is checked: its /proc entry is
//! opened once and the parent is confirmed alive after that (so a reused
//! PID cannot stand in for it; without a parent, init's namespace is the
//! one to outlive), its mount namespace must belong to this
//! process's user namespace (a namespace an unprivileged user built is
//! refused), and the mount is a system call made from a forked child,
//! never a program found in that namespace.

use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::{
    fcntl::{OFlag, open, openat},
    mount::{MsFlags, mount},
    sys::{
        stat::Mode,
        statfs::{BPF_FS_MAGIC, statfs},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, fork, getppid},
};
use tracing::info;

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
    #[error(
        "{BPFFS_ROOT} here is in a private mount namespace that dies with this process, and the \
         bpffs of the namespace it was started from cannot be used: {0}; pass --pin-dir DIR on a \
         bpffs that outlives this process"
    )]
    Outside(String),
}

/// A pin directory on a bpffs, ready for pins.
#[derive(Clone, Debug)]
pub struct PinDir {
    /// The path this process reaches it by.
    pub path: PathBuf,
    /// The path as the mount namespace that holds it sees it: for logs,
    /// the state record and `forwarder down`.
    pub shown: PathBuf,
    /// The handle `path` goes through when the bpffs is in another mount
    /// namespace: `path` is valid as long as a clone of this lives.
    _handle: Option<Arc<OwnedFd>>,
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
        Ok(Self { path: dir.to_owned(), shown: dir.to_owned(), _handle: None })
    }

    /// The default pin directory `/sys/fs/bpf/NAME`, in the bpffs that
    /// outlives this process (see the module's doc).
    pub fn default(name: &str) -> Result<Self, BpfFsError> {
        let shown = Path::new(BPFFS_ROOT).join(name);
        if is_bpffs(Path::new(BPFFS_ROOT)) {
            return Self::at(&shown);
        }
        let Some(parent) = Parent::in_other_mount_namespace()? else { return Self::at(&shown) };
        let handle = parent.bpffs(true)?;
        let dir = Self::through(handle, name);
        std::fs::create_dir_all(&dir.path).map_err(|error| BpfFsError::Io { path: shown, error })?;
        info!(dir = %dir.shown.display(), "pinning in the bpffs of the mount namespace this process was started from, so that pins outlive this one");
        Ok(dir)
    }

    /// Where the default pin directory `NAME` is, if it exists; mounts
    /// nothing (for `forwarder down`).
    #[must_use]
    pub fn find_default(name: &str) -> Option<Self> {
        let dir = if is_bpffs(Path::new(BPFFS_ROOT)) {
            let shown = Path::new(BPFFS_ROOT).join(name);
            Self { path: shown.clone(), shown, _handle: None }
        } else {
            Self::through(Parent::in_other_mount_namespace().ok()??.bpffs(false).ok()?, name)
        };
        dir.path.exists().then_some(dir)
    }

    /// `dir` as given, for removing what is in it; checks and mounts
    /// nothing.
    #[must_use]
    pub fn at_existing(dir: &Path) -> Self {
        Self { path: dir.to_owned(), shown: dir.to_owned(), _handle: None }
    }

    fn through(handle: OwnedFd, name: &str) -> Self {
        Self {
            path: PathBuf::from(format!("/proc/self/fd/{}/{name}", handle.as_raw_fd())),
            shown: Path::new(BPFFS_ROOT).join(name),
            _handle: Some(Arc::new(handle)),
        }
    }
}

/// The process this one was started from, held by its /proc directory,
/// which keeps naming that process (or nothing) even if its PID is reused.
struct Parent {
    proc_dir: OwnedFd,
}

impl Parent {
    /// The parent, if it is in another mount namespace (as under `ip netns
    /// exec`, or a unit with a private one) and one this process may use.
    fn in_other_mount_namespace() -> Result<Option<Self>, BpfFsError> {
        let outside = |what: &str, error: nix::Error| BpfFsError::Outside(format!("{what}: {error}"));
        let flags = OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let pid = getppid();
        // Started by init, orphaned, or the parent gone while being looked
        // at: the namespace to outlive is init's (a unit running `ip netns
        // exec` has PID 1 as its parent).
        let parent = (pid.as_raw() > 1)
            .then(|| open(format!("/proc/{pid}").as_str(), flags, Mode::empty()).ok())
            .flatten()
            .filter(|_| getppid() == pid);
        let proc_dir = match parent {
            Some(dir) => dir,
            None => {
                open("/proc/1", flags, Mode::empty()).map_err(|e| outside("opening init's /proc entry", e))?
            }
        };
        let parent = Self { proc_dir };
        let ours = std::fs::metadata("/proc/self/ns/mnt").map_err(|e| BpfFsError::Outside(e.to_string()))?;
        let theirs = parent.namespace("mnt")?;
        if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
            return Ok(None);
        }
        let (our_users, their_users) = (
            std::fs::metadata("/proc/self/ns/user").map_err(|e| BpfFsError::Outside(e.to_string()))?,
            parent.namespace("user")?,
        );
        if (our_users.dev(), our_users.ino()) != (their_users.dev(), their_users.ino()) {
            return Err(BpfFsError::Outside("the parent is in another user namespace".to_owned()));
        }
        Ok(Some(parent))
    }

    fn open(&self, entry: &str, flags: OFlag) -> Result<OwnedFd, BpfFsError> {
        openat(self.proc_dir.as_fd(), entry, flags | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| BpfFsError::Outside(format!("the parent's {entry}: {e}")))
    }

    fn namespace(&self, kind: &str) -> Result<std::fs::Metadata, BpfFsError> {
        let fd = self.open(&format!("ns/{kind}"), OFlag::O_RDONLY)?;
        File::from(fd).metadata().map_err(|e| BpfFsError::Outside(e.to_string()))
    }

    /// A handle on /sys/fs/bpf of the parent's mount namespace, mounting a
    /// bpffs there first if `mount` and there is none.
    fn bpffs(&self, mount: bool) -> Result<OwnedFd, BpfFsError> {
        let root = || self.open(&format!("root{BPFFS_ROOT}"), OFlag::O_DIRECTORY | OFlag::O_RDONLY);
        let mut handle = root()?;
        if !is_bpffs_fd(&handle) {
            if !mount {
                return Err(BpfFsError::Outside(format!("no bpffs on {BPFFS_ROOT} there")));
            }
            mount_in(&self.open("ns/mnt", OFlag::O_RDONLY)?)?;
            handle = root()?;
            if !is_bpffs_fd(&handle) {
                return Err(BpfFsError::Outside("the mount did not show up".to_owned()));
            }
        }
        Ok(handle)
    }
}

/// Mounts bpffs on /sys/fs/bpf in the mount namespace `namespace`, from a
/// forked child (a multi-threaded process cannot change its mount
/// namespace). The child makes only system calls on what was prepared
/// before the fork: no allocation, no exec.
fn mount_in(namespace: &OwnedFd) -> Result<(), BpfFsError> {
    let outside = |error: &dyn std::fmt::Display| BpfFsError::Outside(error.to_string());
    let (source, target) = (c"bpf", CString::new(BPFFS_ROOT).map_err(|e| outside(&e))?);
    let ns = namespace.as_raw_fd();
    // SAFETY: the child runs only async-signal-safe system calls (setns,
    // mount, _exit) on memory allocated before the fork, then exits.
    match unsafe { fork() }.map_err(|e| outside(&e))? {
        ForkResult::Child => {
            // SAFETY: plain system calls on valid, NUL-terminated strings
            // and an open descriptor.
            let code = unsafe {
                if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                    1
                } else if libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, std::ptr::null())
                    != 0
                {
                    2
                } else {
                    0
                }
            };
            // SAFETY: ends the child without running the parent's
            // destructors or atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).map_err(|e| outside(&e))? {
            WaitStatus::Exited(_, 0) => {
                info!(
                    "mounted bpffs on {BPFFS_ROOT} in the mount namespace of the process this one was started from"
                );
                Ok(())
            }
            WaitStatus::Exited(_, 1) => Err(outside(&"joining its mount namespace failed")),
            WaitStatus::Exited(_, _) => Err(outside(&format!("mount -t bpf bpf {BPFFS_ROOT} failed there"))),
            other => Err(outside(&format!("the mounting child ended with {other:?}"))),
        },
    }
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

fn is_bpffs_fd(fd: &OwnedFd) -> bool {
    nix::sys::statfs::fstatfs(fd).is_ok_and(|stat| stat.filesystem_type() == BPF_FS_MAGIC)
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
