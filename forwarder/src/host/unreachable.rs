//! An `unreachable` route per VIP in the main table, so that VIP traffic
//! the datapath does not translate (a port no service has, IP options, a
//! fragment) is answered by the kernel with a rate-limited ICMP
//! unreachable instead of being routed on. The daemon switches forwarding
//! on for `bpf_fib_lookup`; without these routes, in the usual topology
//! (the router sends the VIP to the forwarder, whose default route is that
//! router) such a packet would bounce between the two until its TTL ran
//! out. A VIP that is also a local address (`--announce`) is still the
//! host's: the local table comes first. A route the operator already has
//! for a VIP (a blackhole for BGP, say) is left alone and not owned.

use std::{collections::BTreeSet, net::Ipv4Addr};

use netlink_packet_route::route::RouteType;
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{info, warn};

use super::Owned;
use crate::config::ServiceFile;

/// The unreachable routes this daemon added.
pub struct UnreachableVips {
    handle: Handle,
    owned: Owned<Ipv4Addr>,
}

impl UnreachableVips {
    /// `inherited` were added by an earlier daemon.
    pub fn new(handle: Handle, inherited: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Self { handle, owned: Owned::inheriting(inherited) }
    }

    /// What is owned, as the state record lists it.
    #[must_use]
    pub fn owned(&self) -> Vec<Ipv4Addr> {
        self.owned.all()
    }

    /// Adds a route for each VIP of `file` that has none from us, and
    /// removes ours for VIPs no service uses any more.
    pub async fn reconcile(&mut self, file: &ServiceFile) {
        let wanted: BTreeSet<Ipv4Addr> = file.services.iter().map(|s| s.vip).collect();
        for vip in &wanted {
            if self.owned.contains(vip) {
                continue;
            }
            match self.handle.route().add(route(*vip)).execute().await {
                Ok(()) => {
                    info!(%vip, "unreachable route for the VIP: untranslated VIP traffic is answered, not routed on");
                    self.owned.add(*vip);
                }
                Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::EEXIST => {
                    info!(%vip, "the VIP has a route already: kept, not owned");
                }
                Err(err) => warn!(%vip, "cannot add an unreachable route for the VIP: {err}"),
            }
        }
        for vip in self.owned.all().into_iter().filter(|vip| !wanted.contains(vip)) {
            remove(&self.handle, vip).await;
            self.owned.forget(&vip);
        }
    }

    /// Removes every route owned.
    pub async fn undo(&mut self) {
        for vip in self.owned.take(false) {
            remove(&self.handle, vip).await;
        }
    }

    /// Removes the routes this process added, keeping inherited ones.
    pub async fn undo_own(&mut self) {
        for vip in self.owned.take(true) {
            remove(&self.handle, vip).await;
        }
    }
}

fn route(vip: Ipv4Addr) -> netlink_packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(vip, 32).kind(RouteType::Unreachable).build()
}

async fn remove(handle: &Handle, vip: Ipv4Addr) {
    match handle.route().del(route(vip)).execute().await {
        Ok(()) => info!(%vip, "removed the VIP's unreachable route"),
        Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::ESRCH => {}
        Err(err) => warn!(%vip, "cannot remove the VIP's unreachable route: {err}"),
    }
}
