//! The control protocol between the CLI and the running daemon: one JSON
//! request per line on a Unix socket only root can open, one JSON response
//! line back. Both are serde-tagged enums, so each answer's type is part of
//! the protocol, not a convention.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Mode, Protocol},
    report::{Flow, ServiceView, Stats},
    state::Summary,
};

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

/// A response line: `{"answer": "stats", "data": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// To `service_list`.
    Services(Vec<ServiceView>),
    Stats(Stats),
    Flows(Vec<Flow>),
    /// To every change: what it changed.
    Changed(Summary),
    /// The request was refused; why.
    Refused(String),
}

/// The data a request's answer carries, taken out of its [`Response`].
pub trait Answer: Sized {
    fn from_response(response: Response) -> Option<Self>;
}

macro_rules! answers {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl Answer for $ty {
            fn from_response(response: Response) -> Option<Self> {
                match response {
                    Response::$variant(data) => Some(data),
                    _ => None,
                }
            }
        }
    )*};
}

answers!(Vec<ServiceView> => Services, Stats => Stats, Vec<Flow> => Flows, Summary => Changed);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no forwarder daemon is running (nothing answers on {})", path.display())]
    NoDaemon { path: PathBuf },
    #[error("talking to the daemon on {}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("unreadable answer from the daemon: {0}")]
    Decode(serde_json::Error),
    #[error("unexpected answer from the daemon: {0}")]
    Unexpected(String),
    /// The daemon refused the request; the message says why.
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the daemon using `run_dir` and returns its answer.
pub fn ask<T: Answer>(run_dir: &Path, request: &Request) -> Result<T, ClientError> {
    match call(run_dir, request)? {
        Response::Refused(reason) => Err(ClientError::Refused(reason)),
        other => {
            let text = serde_json::to_string(&other).unwrap_or_default();
            T::from_response(other).ok_or(ClientError::Unexpected(text))
        }
    }
}

/// Sends `request` to the daemon using `run_dir` and returns its response.
pub fn call(run_dir: &Path, request: &Request) -> Result<Response, ClientError> {
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
    serde_json::from_str(&answer).map_err(ClientError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_carry_their_type() {
        let text = serde_json::to_string(&Response::Changed(Summary::default())).unwrap();
        assert_eq!(text, r#"{"answer":"changed","data":{"added":[],"changed":[],"removed":[]}}"#);
        let back: Response = serde_json::from_str(&text).unwrap();
        assert_eq!(Summary::from_response(back), Some(Summary::default()));
        assert_eq!(Stats::from_response(Response::Refused("no".to_owned())), None);
    }

    #[test]
    fn requests_are_tagged_by_op() {
        let text = serde_json::to_string(&Request::Flows { service: None }).unwrap();
        assert_eq!(text, r#"{"op":"flows","service":null}"#);
    }
}
