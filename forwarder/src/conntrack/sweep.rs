//! The periodic sweep: removes expired connections (both entries) and
//! counts the live ones per service, backend and SNAT port space, for
//! `stats`.
//!
//! The datapath reuses an expired connection's keys at once (the same
//! client 5-tuple again, or another connection claiming its reply tuple),
//! so between the scan and the delete a key may come to hold a new
//! connection's entry: an entry is deleted only while it is still the one
//! the scan judged ([`remove_entry`]).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use forwarder_common::{
    conntrack::{FLAG_REPLY, FLAG_SNAT},
    maps::{FlowEntry, FlowKey},
};
use tokio::sync::watch;
use tracing::debug;

use super::{Conn, FlowMap, OriginMap, Tables, now_ns, scan, scan_half_open};
use crate::kernel::{Pins, batch};

/// How often the sweep runs.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// How long past its timeout a connection must be to be swept: the
/// datapath may be forwarding a packet of a connection at the edge of its
/// timeout (judged alive an instant before, refreshed an instant after),
/// which must not lose its entries in between.
pub const MARGIN: Duration = Duration::from_secs(1);

/// `BPF_NOEXIST`: put an entry back only where nothing took its key.
const NOEXIST: u64 = 1;

/// What a sweep found.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub at: Instant,
    /// Live connections, both tables.
    pub connections: u64,
    /// Of which in the half-open table (not answered yet).
    pub half_open: u64,
    pub by_service: HashMap<u32, u64>,
    pub by_backend: HashMap<u32, u64>,
    /// SNAT connections by the port space they take a port of.
    pub by_snat: HashMap<PortSpace, u64>,
    pub removed: u64,
}

/// Where a SNAT connection's port comes from: one SNAT address towards
/// one node:port, for one protocol (network byte order, as in the maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortSpace {
    pub snat_addr: u32,
    pub node_addr: u32,
    pub node_port: u16,
    pub proto: u8,
}

impl Default for Sweep {
    fn default() -> Self {
        Self {
            at: Instant::now(),
            connections: 0,
            half_open: 0,
            by_service: HashMap::new(),
            by_backend: HashMap::new(),
            by_snat: HashMap::new(),
            removed: 0,
        }
    }
}

/// Removes the expired connections of `conns`, read from `flows`, and
/// counts the live ones.
fn sweep_conns(flows: &mut FlowMap, conns: Vec<Conn>) -> Sweep {
    let now = now_ns().saturating_sub(MARGIN.as_nanos() as u64);
    let mut result = Sweep::default();
    for conn in conns {
        if conn.expired(now) {
            if remove(flows, &conn) {
                result.removed += 1;
            }
        } else {
            if !conn.orphan {
                result.connections += 1;
                *result.by_service.entry(conn.original.service_id).or_default() += 1;
                *result.by_backend.entry(conn.original.backend_id).or_default() += 1;
            }
            // An orphan reply entry still holds its port.
            if let Some(space) = port_space(&conn) {
                *result.by_snat.entry(space).or_default() += 1;
            }
        }
    }
    result.at = Instant::now();
    result
}

/// The SNAT port space `conn` holds a port of, if it is a SNAT connection.
fn port_space(conn: &Conn) -> Option<PortSpace> {
    let (key, entry) = (&conn.key, &conn.original);
    if conn.orphan && entry.flags & FLAG_REPLY != 0 {
        // A reply entry alone, keyed node -> SNAT address: SNAT's replies
        // have their destination rewritten, preserve's their source.
        return (entry.new_dst != key.dst).then_some(PortSpace {
            snat_addr: key.dst,
            node_addr: key.src,
            node_port: key.sport,
            proto: key.proto,
        });
    }
    (entry.flags & FLAG_SNAT != 0).then_some(PortSpace {
        snat_addr: entry.new_src,
        node_addr: entry.new_dst,
        node_port: entry.new_dport,
        proto: key.proto,
    })
}

/// Removes expired connections (both entries) from the established table
/// and counts the live ones.
pub fn sweep(flows: &mut FlowMap) -> Sweep {
    let conns = scan(flows);
    sweep_conns(flows, conns)
}

/// Removes expired connections (their reply entries: slots need no
/// removal) from the half-open table and counts the live ones.
pub fn sweep_half_open(half_open: &mut FlowMap, origins: &OriginMap, secret: u64) -> Sweep {
    let conns = scan_half_open(half_open, origins, secret);
    let mut result = sweep_conns(half_open, conns);
    result.half_open = result.connections;
    result
}

/// Removes the entries of the expired `conn` that still hold what the scan
/// read; false if its first entry no longer does (the key was reused, or
/// the connection was gone).
fn remove(flows: &mut FlowMap, conn: &Conn) -> bool {
    if conn.from_slot {
        // Only the reply entry is in the table.
        return conn
            .reply
            .as_ref()
            .is_some_and(|reply| remove_entry(flows, &conn.original.peer_key(conn.key.proto), reply));
    }
    if !remove_entry(flows, &conn.key, &conn.original) {
        return false;
    }
    // A reply entry the scan did not find is left alone too: its key may
    // have been claimed since by a new connection.
    if let Some(reply) = &conn.reply {
        remove_entry(flows, &conn.original.peer_key(conn.key.proto), reply);
    }
    true
}

/// Deletes `key` if it still holds `scanned`, unchanged: a new connection's
/// entry (another `created_ns`) or a refreshed one stays. Checked first,
/// which leaves a replaced entry untouched, and again on what the atomic
/// delete returns, which goes back if the key changed in between.
fn remove_entry(flows: &mut FlowMap, key: &FlowKey, scanned: &FlowEntry) -> bool {
    if flows.get(key, 0).ok().as_ref() != Some(scanned) {
        return false;
    }
    match batch::take(flows, key) {
        Ok(Some(taken)) if taken == *scanned => true,
        Ok(Some(taken)) => {
            // Fails only if the datapath claimed the key again meanwhile:
            // its entry is the newer.
            let _ = flows.insert(key, taken, NOEXIST);
            false
        }
        Ok(None) | Err(_) => false,
    }
}

/// [`sweep`] of the established table and then the half-open one, counted together.
pub fn sweep_both(tables: &mut Tables) -> Sweep {
    let mut result = sweep(&mut tables.established);
    let Sweep { at, connections, half_open, by_service, by_backend, by_snat, removed } =
        sweep_half_open(&mut tables.half_open, &tables.origins, tables.secret);
    result.at = at;
    result.connections += connections;
    result.half_open = half_open;
    result.removed += removed;
    for (id, count) in by_service {
        *result.by_service.entry(id).or_default() += count;
    }
    for (id, count) in by_backend {
        *result.by_backend.entry(id).or_default() += count;
    }
    for (space, count) in by_snat {
        *result.by_snat.entry(space).or_default() += count;
    }
    result
}

/// Sweeps the pinned tables every [`INTERVAL`] on a blocking thread;
/// each result is published on the returned channel.
pub fn spawn(pins: &Pins) -> anyhow::Result<watch::Receiver<Arc<Sweep>>> {
    let mut map = Tables::open(pins)?;
    let (publish, receiver) = watch::channel(Arc::new(Sweep::default()));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        loop {
            ticker.tick().await;
            let Ok((returned, result)) = tokio::task::spawn_blocking(move || {
                let result = sweep_both(&mut map);
                (map, result)
            })
            .await
            else {
                return;
            };
            map = returned;
            if result.removed > 0 {
                debug!(removed = result.removed, "expired connections swept");
            }
            if publish.send(Arc::new(result)).is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}
