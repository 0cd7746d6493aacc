//! The `flows` listing: every live connection with both address pairs.

use std::{collections::HashMap, net::SocketAddrV4};

use forwarder_common::maps::{addr_from_wire, port_from_wire};

use super::{Tables, now_ns};
use crate::{config::Protocol, report::Flow};

/// Service ids to names and protocols, as the listing shows them.
pub type ServiceNames = HashMap<u32, (String, Protocol)>;

/// The live connections in `tables`, of service `only` if given, sorted
/// by service and client.
#[must_use]
pub fn list(tables: &Tables, names: &ServiceNames, only: Option<&str>) -> Vec<Flow> {
    let now = now_ns();
    let socket = |addr, port| SocketAddrV4::new(addr_from_wire(addr), port_from_wire(port));
    let mut list: Vec<Flow> = tables
        .scan()
        .into_iter()
        .filter(|conn| !conn.orphan && !conn.expired(now))
        .filter_map(|conn| {
            let (service, protocol) = names.get(&conn.original.service_id)?.clone();
            if only.is_some_and(|name| name != service) {
                return None;
            }
            let (key, entry) = (conn.key, conn.original);
            Some(Flow {
                service,
                protocol,
                client: socket(key.src, key.sport),
                vip: socket(key.dst, key.dport),
                source: socket(entry.new_src, entry.new_sport),
                backend: socket(entry.new_dst, entry.new_dport),
                state: conn.state().name().to_owned(),
                age_secs: now.saturating_sub(entry.created_ns) as f64 / 1e9,
                idle_secs: now.saturating_sub(conn.last_seen_ns()) as f64 / 1e9,
            })
        })
        .collect();
    list.sort_by(|a, b| (&a.service, a.client).cmp(&(&b.service, b.client)));
    list
}
