//! The bpffs the pinned state lives in: mounted where none is (as under
//! `ip netns exec`, which remounts /sys). A bpffs mounted here lasts as long
//! as this mount namespace; it is never unmounted by the daemon, since the
//! pins in it are what keeps the datapath attached.

use std::path::{Path, PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum BpfFsError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("mounting bpffs on {}: {error}", path.display())]
    Mount { path: PathBuf, error: nix::Error },
}

/// A directory on a bpffs.
#[derive(Debug)]
pub struct BpfFs {
    /// Whether this process mounted it.
    pub mounted: bool,
}

impl BpfFs {
    /// Makes sure `dir` exists on a bpffs, mounting one on it if not.
    pub fn mount(dir: &Path) -> Result<Self, BpfFsError> {
        std::fs::create_dir_all(dir).map_err(|error| BpfFsError::Io { path: dir.to_owned(), error })?;
        if is_bpffs(dir) {
            return Ok(Self { mounted: false });
        }
        mount(Some("bpf"), dir, Some("bpf"), MsFlags::empty(), None::<&str>)
            .map_err(|error| BpfFsError::Mount { path: dir.to_owned(), error })?;
        info!(dir = %dir.display(), "mounted bpffs");
        Ok(Self { mounted: true })
    }
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|stat| stat.filesystem_type() == BPF_FS_MAGIC)
}
