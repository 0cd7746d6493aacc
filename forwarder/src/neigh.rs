//! Keeping next-hop MACs resolved ahead of traffic.
//!
//! XDP can only forward to a next hop whose MAC the kernel already knows.
//! For every backend's next hop, and every gateway of the attached
//! interfaces, the daemon adds a *managed* neighbour entry
//! (`NTF_EXT_MANAGED`, Linux 5.16+): the kernel resolves it at once and
//! keeps re-validating it, so the first packet of a flow finds a fresh MAC.
//! Whatever is still unresolved goes through the TC fallback
//! (`bpf_redirect_neigh`), so nothing is lost either way.

use std::{collections::BTreeSet, net::Ipv4Addr};

use futures_util::TryStreamExt as _;
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteHeader},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{debug, info, warn};

/// A neighbour to keep resolved: an address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NextHop {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

const EEXIST: i32 = 17;

/// Managed neighbour entries the daemon added (and removes on stop).
pub struct Neighbours {
    handle: Handle,
    added: BTreeSet<NextHop>,
}

impl Neighbours {
    /// Manages entries through `handle`; `inherited` are entries an earlier
    /// daemon added (removed with this daemon's own at the end).
    #[must_use]
    pub fn new(handle: Handle, inherited: Vec<NextHop>) -> Self {
        Self { handle, added: inherited.into_iter().collect() }
    }

    /// Entries added so far.
    #[must_use]
    pub fn added(&self) -> Vec<NextHop> {
        self.added.iter().copied().collect()
    }

    /// The next hop the kernel would use towards `dst`.
    pub async fn next_hop(&self, dst: Ipv4Addr) -> Result<Option<NextHop>, NeighError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, 32).build();
        let Some(route) = self.handle.route().get(query).execute().try_next().await? else {
            return Ok(None);
        };
        let mut hop = NextHop { ifindex: 0, addr: dst };
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Oif(ifindex) => hop.ifindex = *ifindex,
                RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => hop.addr = *gateway,
                _ => {}
            }
        }
        Ok((hop.ifindex != 0).then_some(hop))
    }

    /// Gateways of main-table routes leaving through `ifindexes`.
    pub async fn gateways(&self, ifindexes: &[u32]) -> Result<Vec<NextHop>, NeighError> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<_> = self.handle.route().get(dump).execute().try_collect().await?;
        let mut hops = Vec::new();
        for route in routes {
            if route.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut oif = None;
            let mut gateway = None;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Oif(ifindex) => oif = Some(*ifindex),
                    RouteAttribute::Gateway(RouteAddress::Inet(addr)) => gateway = Some(*addr),
                    _ => {}
                }
            }
            if let (Some(ifindex), Some(addr)) = (oif, gateway)
                && ifindexes.contains(&ifindex)
            {
                hops.push(NextHop { ifindex, addr });
            }
        }
        Ok(hops)
    }

    /// Makes sure each hop has a neighbour entry, adding managed ones where
    /// none exists. Existing entries (learnt by the kernel, or static) are
    /// left as they are. Whether any was added.
    pub async fn ensure(&mut self, hops: impl IntoIterator<Item = NextHop>) -> bool {
        let before = self.added.len();
        for hop in hops {
            if self.added.contains(&hop) {
                continue;
            }
            let mut request =
                self.handle.neighbours().add(hop.ifindex, hop.addr.into()).state(NeighbourState::None);
            request.message_mut().attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
            match request.execute().await {
                Ok(()) => {
                    debug!(addr = %hop.addr, ifindex = hop.ifindex, "managed neighbour added");
                    self.added.insert(hop);
                }
                Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -EEXIST => {}
                Err(err) => {
                    warn!(addr = %hop.addr, ifindex = hop.ifindex, "cannot add managed neighbour: {err}")
                }
            }
        }
        self.added.len() > before
    }

    /// Removes the entries this daemon (and its predecessors) added.
    pub async fn remove_added(&mut self) {
        let hops = std::mem::take(&mut self.added);
        remove(&self.handle, &hops).await;
    }
}

/// Removes the neighbour entries `hops`.
pub async fn remove(handle: &Handle, hops: impl IntoIterator<Item = &NextHop>) {
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
