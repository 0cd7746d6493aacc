//! Questions to the host's routing table: the next hop towards an address,
//! the gateways of interfaces, the source address the kernel would use.
//! Nothing here changes the host.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use futures_util::TryStreamExt as _;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{NeighError, Neighbour};

/// The next hop the kernel would use towards `dst`.
pub async fn next_hop(handle: &Handle, dst: Ipv4Addr) -> Result<Option<Neighbour>, NeighError> {
    let query = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, 32).build();
    let Some(route) = handle.route().get(query).execute().try_next().await? else {
        return Ok(None);
    };
    let mut hop = Neighbour { ifindex: 0, addr: dst };
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
pub async fn gateways(handle: &Handle, ifindexes: &[u32]) -> Result<Vec<Neighbour>, NeighError> {
    let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let routes: Vec<_> = handle.route().get(dump).execute().try_collect().await?;
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
            hops.push(Neighbour { ifindex, addr });
        }
    }
    Ok(hops)
}

/// The address the kernel would use as source towards `backend`: the
/// primary IPv4 of the egress interface. Connecting a UDP socket sends
/// nothing; it only runs the route lookup.
pub fn source_address_towards(backend: SocketAddrV4) -> Result<Ipv4Addr, String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.connect(backend).map_err(|e| format!("no route: {e}"))?;
    match socket.local_addr().map_err(|e| e.to_string())? {
        std::net::SocketAddr::V4(local) if !local.ip().is_unspecified() => Ok(*local.ip()),
        other => Err(format!("unexpected local address {other}")),
    }
}
