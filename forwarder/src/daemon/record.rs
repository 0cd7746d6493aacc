//! The run directory: the control socket, and `state.json`, the record of
//! what this daemon (or the one it took over from) installed and changed on
//! the host, so a restarted daemon keeps the same ids and `forwarder down`
//! can undo everything after a crash.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use crate::{config::edit::write_atomically, control, neigh::NextHop, state::InstalledService};

const RECORD: &str = "state.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Layout version of the pinned maps this record describes.
    pub layout: u32,
    pub pin_dir: PathBuf,
    pub services: Vec<InstalledService>,
    /// Managed neighbour entries added.
    pub neighbours: Vec<NextHop>,
    /// VIPs added to interfaces (`--announce`).
    pub announced: Vec<(String, Ipv4Addr)>,
    /// `forwarding` sysctls switched on, to switch off again.
    pub forwarding: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("another forwarder daemon is running (it answers on {})", .0.display())]
    Running(PathBuf),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    Decode { path: PathBuf, error: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |error| RecordError::Io { path: path.to_owned(), error }
}

/// The run directory, claimed by a running daemon.
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// Claims `dir` for this daemon: creates it (root-only), makes sure no
    /// other daemon answers on its socket, and binds the control socket.
    pub fn claim(dir: &Path) -> Result<(Self, UnixListener), RecordError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let socket = control::socket_path(dir);
        if daemon_running(dir) {
            return Err(RecordError::Running(socket));
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(&socket)(err)),
        }
        let listener = UnixListener::bind(&socket).map_err(io(&socket))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(io(&socket))?;
        Ok((Self { dir: dir.to_owned() }, listener))
    }

    pub fn save(&self, record: &Record) -> Result<(), RecordError> {
        save(&self.dir, record)
    }

    /// Removes the control socket (the record stays for the next daemon).
    pub fn release(self) {
        let _ = std::fs::remove_file(control::socket_path(&self.dir));
    }
}

/// Whether a daemon answers on `dir`'s control socket.
#[must_use]
pub fn daemon_running(dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(control::socket_path(dir)).is_ok()
}

/// The record left in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<Record>, RecordError> {
    let path = dir.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|error| RecordError::Decode { path, error })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io(&path)(err)),
    }
}

fn save(dir: &Path, record: &Record) -> Result<(), RecordError> {
    let path = dir.join(RECORD);
    let text = serde_json::to_string_pretty(record).expect("records serialise");
    write_atomically(&path, &text).map_err(io(&path))
}

/// Deletes the record and the socket (after `forwarder down`).
pub fn remove(dir: &Path) -> Result<(), RecordError> {
    for path in [dir.join(RECORD), control::socket_path(dir)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(&path)(err)),
        }
    }
    Ok(())
}
