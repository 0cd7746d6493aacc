//! VIP announcement on a flat layer-2 network (`--announce IFACE`): every
//! VIP is added to the interface as a /32, so the host answers ARP for it,
//! as keepalived or MetalLB's layer-2 mode do. Traffic to a VIP port that is
//! not a service then reaches the host's own stack. Removed on a clean stop
//! and by `forwarder down`; kept when handing over to a successor.

use std::{collections::BTreeSet, net::Ipv4Addr};

use futures_util::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::Handle;
use tracing::{info, warn};

use super::Owned;
use crate::config::ServiceFile;

/// The VIPs this daemon added to one interface.
pub struct Vips {
    handle: Handle,
    iface: String,
    ifindex: u32,
    owned: Owned<Ipv4Addr>,
}

impl Vips {
    /// Announces on `iface`; `inherited` were added by an earlier daemon.
    pub fn new(
        handle: Handle,
        iface: String,
        ifindex: u32,
        inherited: impl IntoIterator<Item = Ipv4Addr>,
    ) -> Self {
        Self { handle, iface, ifindex, owned: Owned::inheriting(inherited) }
    }

    /// What is owned, as the state record lists it.
    #[must_use]
    pub fn owned(&self) -> Vec<(String, Ipv4Addr)> {
        self.owned.all().into_iter().map(|addr| (self.iface.clone(), addr)).collect()
    }

    /// Adds the VIPs of `file` not yet announced and removes the ones no
    /// service uses any more.
    pub async fn reconcile(&mut self, file: &ServiceFile) {
        let wanted: BTreeSet<Ipv4Addr> = file.services.iter().map(|s| s.vip).collect();
        for vip in &wanted {
            if self.owned.contains(vip) {
                continue;
            }
            match self.handle.address().add(self.ifindex, (*vip).into(), 32).execute().await {
                Ok(()) => {
                    info!(%vip, iface = %self.iface, "announcing VIP");
                    self.owned.add(*vip);
                }
                // Already there (configured by hand): not ours to remove.
                Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::EEXIST => {}
                Err(err) => warn!(%vip, iface = %self.iface, "cannot add VIP: {err}"),
            }
        }
        for vip in self.owned.all().into_iter().filter(|vip| !wanted.contains(vip)) {
            remove(&self.handle, self.ifindex, vip).await;
            self.owned.forget(&vip);
        }
    }

    /// Removes every VIP owned.
    pub async fn undo(&mut self) {
        for vip in self.owned.take(false) {
            remove(&self.handle, self.ifindex, vip).await;
        }
    }

    /// Removes the VIPs this process added, keeping inherited ones.
    pub async fn undo_own(&mut self) {
        for vip in self.owned.take(true) {
            remove(&self.handle, self.ifindex, vip).await;
        }
    }
}

/// Removes `vip`/32 from interface `ifindex`.
async fn remove(handle: &Handle, ifindex: u32, vip: Ipv4Addr) {
    let found: Result<Vec<AddressMessage>, _> =
        handle.address().get().set_link_index_filter(ifindex).execute().try_collect().await;
    let Ok(messages) = found else { return };
    for message in messages {
        let matches = message.header.prefix_len == 32
            && message
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(std::net::IpAddr::V4(ip)) if *ip == vip));
        if matches {
            match handle.address().del(message).execute().await {
                Ok(()) => info!(%vip, ifindex, "withdrew VIP"),
                Err(err) => warn!(%vip, ifindex, "cannot remove VIP: {err}"),
            }
        }
    }
}
