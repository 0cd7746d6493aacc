//! The run directory: the control socket, and `state.json`, the record of
//! what this daemon (or the one it took over from) installed and changed on
//! the host, so a restarted daemon keeps the same ids and `forwarder down`
//! can undo everything after a crash.
//!
//! The record is versioned apart from the pinned maps' layout: fields may
//! be added (with defaults, so an older record still reads), and a daemon
//! refuses a record of a newer version than its own.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;

use super::Neighbour;
use crate::{control, files::write_atomically, state::InstalledService};

const RECORD: &str = "state.json";

/// Version of the record's own format. Bump it when a field changes
/// meaning or is removed; a new field with a default needs no bump.
pub const RECORD_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// The format it was read in (0: before versions); always written as
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// Layout version of the pinned maps this record describes.
    pub layout: u32,
    pub pin_dir: PathBuf,
    pub services: Vec<InstalledService>,
    /// Managed neighbour entries added.
    pub neighbours: Vec<Neighbour>,
    /// VIPs added to interfaces (`--announce`).
    pub announced: Vec<(String, Ipv4Addr)>,
    /// `forwarding` sysctls switched on, to switch off again.
    pub forwarding: Vec<PathBuf>,
    /// VIPs given an unreachable route.
    pub unreachable: Vec<Ipv4Addr>,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            version: RECORD_VERSION,
            layout: 0,
            pin_dir: PathBuf::new(),
            services: Vec::new(),
            neighbours: Vec::new(),
            announced: Vec::new(),
            forwarding: Vec::new(),
            unreachable: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("another forwarder daemon is running (it answers on {})", .0.display())]
    Running(PathBuf),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    Decode { path: PathBuf, error: serde_json::Error },
    #[error(
        "{}: written by a newer forwarder (record v{found}, this is v{RECORD_VERSION}): \
         run that version's `forwarder down` first",
        path.display()
    )]
    Newer { path: PathBuf, found: u32 },
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

impl Record {
    /// The record left in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>, RecordError> {
        load(dir)
    }

    /// Deletes the record and the socket in `dir` (after `forwarder down`).
    pub fn remove(dir: &Path) -> Result<(), RecordError> {
        remove(dir)
    }
}

fn load(dir: &Path) -> Result<Option<Record>, RecordError> {
    let path = dir.join(RECORD);
    match std::fs::read_to_string(&path) {
        Ok(text) => decode(&text).map(Some).map_err(|error| match error {
            Decoded::Json(error) => RecordError::Decode { path: path.clone(), error },
            Decoded::Newer(found) => RecordError::Newer { path: path.clone(), found },
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io(&path)(err)),
    }
}

enum Decoded {
    Json(serde_json::Error),
    Newer(u32),
}

/// A record of this version, or of v0 (no `version` field) converted.
fn decode(text: &str) -> Result<Record, Decoded> {
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(Decoded::Json)?;
    let v0 = value.get("version").is_none();
    let v0_services = if v0 { value.as_object_mut().and_then(|o| o.remove("services")) } else { None };
    let mut record: Record = serde_json::from_value(value).map_err(Decoded::Json)?;
    if record.version > RECORD_VERSION {
        return Err(Decoded::Newer(record.version));
    }
    if let Some(list) = v0_services {
        record.services = super::record_v0::services(list).map_err(Decoded::Json)?;
    }
    if v0 {
        record.version = 0;
    }
    Ok(record)
}

fn save(dir: &Path, record: &Record) -> Result<(), RecordError> {
    let path = dir.join(RECORD);
    let text = serde_json::to_string_pretty(record).expect("records serialise");
    write_atomically(&path, text.as_bytes()).map_err(io(&path))
}

fn remove(dir: &Path) -> Result<(), RecordError> {
    for path in [dir.join(RECORD), control::socket_path(dir)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(&path)(err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_with_unknown_and_missing_fields_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            r#"{"version": 1, "layout": 3, "pin_dir": "/sys/fs/bpf/forwarder", "added_later": [1, 2]}"#;
        std::fs::write(dir.path().join(RECORD), text).unwrap();
        let record = load(dir.path()).unwrap().unwrap();
        assert_eq!((record.layout, record.services.len(), record.forwarding.len()), (3, 0, 0));
    }

    #[test]
    fn a_record_of_the_release_before_versions_is_converted() {
        // As the previous release wrote it: no version, each service with
        // its configuration embedded and `table` / `table_len`.
        let text = r#"{
          "layout": 3, "pin_dir": "/sys/fs/bpf/forwarder",
          "services": [{
            "spec": {"name": "web", "vip": "10.0.100.10", "port": 80, "protocol": "tcp", "mode": "snat",
                     "backends": [{"addr": "10.0.2.11:30080", "weight": 1}], "health": null},
            "id": 0,
            "backends": [{"spec": {"addr": "10.0.2.11:30080", "weight": 1}, "id": 3, "snat": "10.0.2.1"}],
            "bank": 1, "written": [1, 1], "table": 2, "table_len": 16381
          }],
          "neighbours": [{"ifindex": 4, "addr": "10.0.2.11"}],
          "announced": [], "forwarding": ["/proc/sys/net/ipv4/conf/f-lan/forwarding"]
        }"#;
        let Ok(record) = decode(text) else { panic!("a v0 record decodes") };
        let web = &record.services[0];
        assert_eq!(
            (web.name.as_str(), web.port, web.bank, web.maglev_table, web.maglev_len),
            ("web", 80, 1, 2, 16381)
        );
        assert_eq!((web.backends[0].id, web.backends[0].snat), (3, Some("10.0.2.1".parse().unwrap())));
        assert_eq!(record.neighbours[0].ifindex, 4);
        assert_eq!(record.version, 0, "read as v0 (its datapath needs a migration)");
    }

    #[test]
    fn a_newer_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(RECORD), r#"{"version": 99}"#).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("written by a newer forwarder (record v99, this is v1)"), "{err}");
    }

    #[test]
    fn saved_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record { layout: 3, forwarding: vec!["/proc/x".into()], ..Record::default() };
        save(dir.path(), &record).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(record));
    }
}
