//! The state record as forwarder wrote it before records had a version
//! (v0, up to and including the release before `RECORD_VERSION` 1): each
//! service embedded its configuration (`spec`) and its backends theirs,
//! and the Maglev table was `table` / `table_len`. Read so that a daemon
//! upgraded in place (SIGUSR2, or a plain restart) adopts what the old one
//! left instead of refusing to start.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Deserialize;

use crate::{
    config::{Mode, Protocol},
    state::{InstalledBackend, InstalledService},
};

#[derive(Deserialize)]
struct Service {
    spec: Spec,
    id: u32,
    backends: Vec<Backend>,
    bank: u8,
    written: [u16; 2],
    table: u32,
    table_len: u32,
}

/// The parts of the old embedded configuration the table needs (the rest,
/// such as `health`, is ignored).
#[derive(Deserialize)]
struct Spec {
    name: String,
    vip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    mode: Mode,
}

#[derive(Deserialize)]
struct Backend {
    spec: BackendSpec,
    id: u32,
    snat: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
struct BackendSpec {
    addr: SocketAddrV4,
    weight: u32,
}

/// The services of a v0 record's `services` list.
pub fn services(list: serde_json::Value) -> Result<Vec<InstalledService>, serde_json::Error> {
    let old: Vec<Service> = serde_json::from_value(list)?;
    Ok(old
        .into_iter()
        .map(|service| {
            let Service {
                spec: Spec { name, vip, port, protocol, mode },
                id,
                backends,
                bank,
                written,
                table,
                table_len,
            } = service;
            InstalledService {
                name,
                vip,
                port,
                protocol,
                mode,
                id,
                backends: backends
                    .into_iter()
                    .map(|Backend { spec: BackendSpec { addr, weight }, id, snat }| InstalledBackend {
                        addr,
                        weight,
                        id,
                        snat,
                    })
                    .collect(),
                bank,
                written,
                maglev_table: table,
                maglev_len: table_len,
                source_ranges: Vec::new(),
            }
        })
        .collect())
}
