//! Keeping next-hop MACs resolved ahead of traffic.
//!
//! XDP can only forward to a next hop whose MAC the kernel already knows.
//! For every backend's next hop, and every gateway of the attached
//! interfaces, the daemon adds a *managed* neighbour entry
//! (`NTF_EXT_MANAGED`, Linux 5.16+): the kernel resolves it at once and
//! keeps re-validating it, so the first packet of a flow finds a fresh MAC.
//! Whatever is still unresolved goes through the TC fallback
//! (`bpf_redirect_neigh`), so nothing is lost either way.

use std::net::Ipv4Addr;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::Handle;
use tracing::{debug, info, warn};

use super::{Owned, routes};
use crate::config::ServiceFile;

/// A neighbour to keep resolved: an address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// Managed neighbour entries the daemon owns.
pub struct Neighbours {
    handle: Handle,
    owned: Owned<Neighbour>,
}

impl Neighbours {
    /// Manages entries through `handle`; `inherited` are entries an earlier
    /// daemon added.
    #[must_use]
    pub fn new(handle: Handle, inherited: Vec<Neighbour>) -> Self {
        Self { handle, owned: Owned::inheriting(inherited) }
    }

    #[must_use]
    pub fn owned(&self) -> Vec<Neighbour> {
        self.owned.all()
    }

    /// Makes sure every backend's next hop and every gateway of the
    /// interfaces `ifindexes` has a neighbour entry. Whether one was added.
    pub async fn prefetch(&mut self, file: &ServiceFile, ifindexes: &[u32]) -> bool {
        let mut hops: Vec<Neighbour> = Vec::new();
        for backend in file.services.iter().flat_map(|s| &s.backends) {
            match routes::next_hop(&self.handle, *backend.addr.ip()).await {
                Ok(Some(hop)) => hops.push(hop),
                Ok(None) => warn!(backend = %backend.addr, "no route to backend"),
                Err(err) => warn!(backend = %backend.addr, "route lookup: {err}"),
            }
        }
        match routes::gateways(&self.handle, ifindexes).await {
            Ok(gateways) => hops.extend(gateways),
            Err(err) => warn!("listing gateways: {err}"),
        }
        hops.sort();
        hops.dedup();
        self.ensure(hops).await
    }

    /// Adds a managed entry for each hop that has no entry yet. Existing
    /// entries (learnt by the kernel, or static) are left as they are.
    /// Whether any was added.
    pub async fn ensure(&mut self, hops: impl IntoIterator<Item = Neighbour>) -> bool {
        let mut added = false;
        for hop in hops {
            if self.owned.contains(&hop) {
                continue;
            }
            let mut request =
                self.handle.neighbours().add(hop.ifindex, hop.addr.into()).state(NeighbourState::None);
            request.message_mut().attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
            match request.execute().await {
                Ok(()) => {
                    debug!(addr = %hop.addr, ifindex = hop.ifindex, "managed neighbour added");
                    self.owned.add(hop);
                    added = true;
                }
                Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::EEXIST => {}
                Err(err) => {
                    warn!(addr = %hop.addr, ifindex = hop.ifindex, "cannot add managed neighbour: {err}")
                }
            }
        }
        added
    }

    /// Removes every entry owned.
    pub async fn undo(&mut self) {
        remove(&self.handle, &self.owned.take(false)).await;
    }

    /// Removes the entries this process added, keeping inherited ones.
    pub async fn undo_own(&mut self) {
        remove(&self.handle, &self.owned.take(true)).await;
    }
}

/// Removes the neighbour entries `hops`.
async fn remove(handle: &Handle, hops: &[Neighbour]) {
    let mut count = 0;
    for hop in hops {
        let mut message = NeighbourMessage::default();
        message.header.family = netlink_packet_route::AddressFamily::Inet;
        message.header.ifindex = hop.ifindex;
        message.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(hop.addr)));
        match handle.neighbours().del(message).execute().await {
            Ok(()) => count += 1,
            Err(err) => debug!(addr = %hop.addr, "removing managed neighbour: {err}"),
        }
    }
    if count > 0 {
        info!(count, "removed managed neighbour entries");
    }
}
