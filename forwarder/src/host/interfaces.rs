//! Which hook suits an interface: a question to the host, changing nothing.
//!
//! XDP sees frames before the kernel builds an skb, so it cannot see an
//! skb's checksum state. A sender on the same host that offloads its
//! checksums (a container's or VM's veth or tap, the kernel's default)
//! hands over packets whose L4 checksum field holds only the pseudo-header
//! sum (`CHECKSUM_PARTIAL`); XDP rewrites the bytes, the state is lost and
//! the receiver drops the packet. Interfaces with a device behind them
//! (a NIC, virtio in a guest) deliver complete checksums.

use futures_util::TryStreamExt as _;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use tracing::{info, warn};

use crate::kernel::{AttachChoice, Plan, XdpMode};

/// What sits behind an interface, as far as the choice of hook goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behind {
    /// No link kind: a device with a driver (a NIC, virtio in a guest).
    Device,
    /// A veth pair; its peer's interface index (maybe in another namespace).
    Veth { peer_ifindex: Option<u32> },
    /// Another virtual kind: tap, bridge, bond, VLAN...
    Virtual(String),
}

/// Asks rtnetlink what kind of link interface `index` is.
pub async fn behind(handle: &rtnetlink::Handle, index: u32) -> Result<Behind, rtnetlink::Error> {
    let mut links = handle.link().get().match_index(index).execute();
    let Some(link) = links.try_next().await? else { return Ok(Behind::Device) };
    let kind = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    });
    let peer_ifindex = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    });
    Ok(match kind {
        None => Behind::Device,
        Some(InfoKind::Veth) => Behind::Veth { peer_ifindex },
        Some(other) => Behind::Virtual(other.to_string()),
    })
}

/// The plan for `iface`, which is `behind`, under `choice`, logged with
/// its reason.
#[must_use]
pub fn plan(iface: &str, behind: &Behind, choice: AttachChoice, xdp_mode: XdpMode) -> Plan {
    match choice {
        AttachChoice::Tc => {
            info!(%iface, "datapath in TC (--attach tc)");
            Plan::Tc
        }
        AttachChoice::Xdp => {
            if *behind != Behind::Device {
                warn_xdp_on_virtual(iface, behind);
            }
            Plan::Xdp(xdp_mode)
        }
        AttachChoice::Auto => match behind {
            Behind::Device => {
                info!(%iface, "datapath in XDP (auto: a device with a driver; TC if it has no native XDP)");
                Plan::XdpElseTc
            }
            Behind::Veth { .. } | Behind::Virtual(_) => {
                info!(
                    %iface,
                    ?behind,
                    "datapath in TC (auto: a virtual interface, whose senders may hand over partial checksums that XDP cannot complete)"
                );
                Plan::Tc
            }
        },
    }
}

/// XDP forced where it may black-hole traffic: say what to do about it.
fn warn_xdp_on_virtual(iface: &str, behind: &Behind) {
    let peer = match behind {
        Behind::Veth { peer_ifindex: Some(index) } => nix::net::if_::if_indextoname(*index)
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| format!("the veth peer (ifindex {index}, in its namespace)")),
        _ => "each sender's interface".to_owned(),
    };
    warn!(
        %iface,
        "XDP on a virtual interface: packets from senders with checksum offload (the default for veth and tap) \
         arrive with partial checksums that XDP cannot complete, and receivers drop them. Run \
         `ethtool -K {peer} tx off` on the sending side (and `ethtool -K <receiver> gro on` on veth ends that \
         receive redirected frames), or use --attach tc (or auto)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_puts_virtual_interfaces_in_tc_and_devices_in_xdp() {
        let cases = [
            (Behind::Device, Plan::XdpElseTc),
            (Behind::Veth { peer_ifindex: Some(7) }, Plan::Tc),
            (Behind::Virtual("tun".into()), Plan::Tc),
        ];
        for (behind, want) in cases {
            assert_eq!(plan("x", &behind, AttachChoice::Auto, XdpMode::Native), want, "{behind:?}");
        }
    }

    #[test]
    fn a_forced_hook_is_kept() {
        let veth = Behind::Veth { peer_ifindex: None };
        assert_eq!(plan("x", &veth, AttachChoice::Xdp, XdpMode::Skb), Plan::Xdp(XdpMode::Skb));
        assert_eq!(plan("x", &Behind::Device, AttachChoice::Tc, XdpMode::Native), Plan::Tc);
    }
}
