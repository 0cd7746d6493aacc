//! The control protocol between the CLI and the running daemon: one JSON
//! request per line on a Unix socket only root can open, one JSON response
//! line back.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::config::{Mode, Protocol};

/// Default directory of the control socket and the daemon's state record.
pub const DEFAULT_RUN_DIR: &str = "/run/forwarder";
pub const SOCKET_NAME: &str = "control.sock";

/// Where the control socket of the daemon using `run_dir` is.
#[must_use]
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// Whether a change is also written to the service file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persist {
    /// Written back to the service file (the default).
    File,
    /// Only in the running daemon, until the next reload.
    RuntimeOnly,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    ServiceList,
    ServiceAdd {
        name: String,
        vip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        mode: Mode,
        backends: Vec<SocketAddrV4>,
        persist: Persist,
    },
    ServiceRemove {
        name: String,
        persist: Persist,
    },
    BackendAdd {
        service: String,
        addr: SocketAddrV4,
        weight: u32,
        persist: Persist,
    },
    BackendRemove {
        service: String,
        addr: SocketAddrV4,
        persist: Persist,
    },
    BackendSetWeight {
        service: String,
        addr: SocketAddrV4,
        weight: u32,
        persist: Persist,
    },
    /// Validate `text` (named `path` in errors), apply the difference, and
    /// make it the service file.
    Apply {
        path: PathBuf,
        text: String,
        persist: Persist,
    },
    Stats,
    Flows {
        service: Option<String>,
    },
}

/// A response line: `{"ok": true, "data": ...}` or `{"ok": false, "error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        match serde_json::to_value(data) {
            Ok(data) => Self { ok: true, data: Some(data), error: None },
            Err(err) => Self::error(format!("encoding the answer: {err}")),
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self { ok: false, data: None, error: Some(message.into()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no forwarder daemon is running (nothing answers on {})", path.display())]
    NoDaemon { path: PathBuf },
    #[error("talking to the daemon on {}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("unreadable answer from the daemon: {0}")]
    Decode(serde_json::Error),
    /// The daemon refused the request; the message says why.
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the daemon using `run_dir` and returns its data.
pub fn call(run_dir: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let path = socket_path(run_dir);
    let stream = UnixStream::connect(&path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoDaemon { path: path.clone() }
        }
        _ => ClientError::Io { path: path.clone(), error },
    })?;
    let io = |error| ClientError::Io { path: path.clone(), error };
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(ClientError::Decode)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let response: Response = serde_json::from_str(&answer).map_err(ClientError::Decode)?;
    match response {
        Response { ok: true, data, .. } => Ok(data.unwrap_or(serde_json::Value::Null)),
        Response { error, .. } => Err(ClientError::Refused(error.unwrap_or_else(|| "refused".to_owned()))),
    }
}
