//! Per-CPU counters: what happened to each packet, and traffic per service
//! and per backend.

/// Why the datapath passed, dropped or forwarded a packet. Indexes the
/// `REASONS` per-CPU array.
///
/// The rule for packets the forwarder does not translate: anything that is
/// not a tracked flow or a configured VIP:port is passed to the kernel
/// untouched, and so are IPv4 packets with options, fragments and packets
/// whose TTL would expire; the kernel then does what it would do without
/// the forwarder (route them, answer them, or send ICMP). Nothing is ever
/// rewritten unless it is forwarded.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Translated and sent back out of the interface it came in on (XDP_TX).
    TxSameInterface = 0,
    /// Translated and redirected to another interface (XDP_REDIRECT / TC redirect).
    Redirect,
    /// Translated by the TC fallback and handed to the neighbour subsystem
    /// because the next hop's MAC was not known yet.
    RedirectNeigh,
    /// XDP found no neighbour entry for the next hop and handed the packet,
    /// untouched, to the TC fallback.
    HandedToTc,
    /// Not IPv4 (ARP, IPv6, VLAN, ...): passed.
    PassNotIpv4,
    /// IPv4 but neither TCP nor UDP: passed.
    PassNotTcpUdp,
    /// Not a configured VIP:port and not a tracked reply: passed.
    PassNoService,
    /// Headers shorter than they claim: passed for the kernel to judge.
    PassMalformed,
    /// IPv4 header with options: passed untranslated.
    PassIpOptions,
    /// A later fragment (offset above zero) of a datagram whose first
    /// fragment was not translated (not ours, lost, or not here yet), or
    /// a fragment with IP options: passed untouched.
    PassFragment,
    /// TTL would reach zero: passed so the kernel can answer with ICMP.
    PassTtlExpired,
    /// The route lookup for the translated packet failed (no route,
    /// blackhole, forwarding disabled...): passed untranslated.
    PassNoRoute,
    /// The packet is larger than the egress MTU and may be fragmented (no
    /// DF), which the datapath does not do, or the ICMP answer to a DF
    /// packet could not be built: dropped.
    DropFragNeeded,
    /// The service has no backend with weight above zero: dropped.
    DropNoBackend,
    /// No free SNAT port for this backend after the bounded retries: dropped.
    DropSnatExhausted,
    /// preserve mode: the backend's reply tuple (backend, client) is already
    /// used by a live connection to another VIP, so replies could not be
    /// told apart: the new connection is dropped (the client retries with
    /// another source port).
    DropReplyCollision,
    /// The flow table refused a new entry: dropped.
    DropFlowTableFull,
    /// The packet could not be sent on: the redirect target rejected it,
    /// or (TC) the kernel could not make the skb writable to update its
    /// checksums: dropped.
    DropRedirectFailed,
    /// A new connection from a client outside the service's
    /// `source_ranges`: dropped.
    DropSourceNotAllowed,
    /// Not translated, and the kernel would have routed it out again
    /// (to another host, not to this one): dropped, so the forwarder is no
    /// open router and untranslated VIP traffic cannot loop; `--route-other`
    /// lets the kernel route it.
    DropNotTranslated,
    /// An ICMP error (destination unreachable, time exceeded) quoting a
    /// packet of a tracked connection: translated with the connection and
    /// forwarded to the other side.
    IcmpTranslated,
    /// An ICMP error whose quoted packet belongs to no tracked connection
    /// (or is not addressed to the quoted packet's sender): passed untouched.
    PassIcmpNoFlow,
    /// Longer than the egress MTU with "don't fragment" set: answered with
    /// ICMP fragmentation needed (the egress MTU) to its sender. Without
    /// DF such a packet is `DropFragNeeded`.
    FragNeededSent,
    /// A later fragment of a datagram whose first fragment was translated:
    /// translated the same way (addresses) and forwarded.
    FragmentTranslated,
    /// A half-open connection got its answer (TCP: a segment from the node
    /// after the client's ACK of its SYN-ACK; UDP: the node's reply) and
    /// moved from the half-open table to the established one, which only
    /// such connections enter (see `forwarder_common::conntrack::answered`).
    FlowEstablished,
    /// A new connection took the SNAT port of a half-open one, because
    /// every port it tried was held: half-open connections (a SYN flood)
    /// never keep a new connection out, established ones do.
    HalfOpenDisplaced,
    /// A half-open connection whose reply entry was evicted or whose SNAT
    /// port a newer half-open connection took got it back on its client's
    /// next packet (not a SYN), or kept it though a newer connection took
    /// its slot: the node knows the connection by that tuple, and a new
    /// port would get a RST.
    HalfOpenReclaimed,
}

/// Number of [`Reason`]s: the size of the reasons array.
pub const REASON_COUNT: u32 = Reason::HalfOpenReclaimed as u32 + 1;

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::TxSameInterface,
        Reason::Redirect,
        Reason::RedirectNeigh,
        Reason::HandedToTc,
        Reason::PassNotIpv4,
        Reason::PassNotTcpUdp,
        Reason::PassNoService,
        Reason::PassMalformed,
        Reason::PassIpOptions,
        Reason::PassFragment,
        Reason::PassTtlExpired,
        Reason::PassNoRoute,
        Reason::DropFragNeeded,
        Reason::DropNoBackend,
        Reason::DropSnatExhausted,
        Reason::DropReplyCollision,
        Reason::DropFlowTableFull,
        Reason::DropRedirectFailed,
        Reason::DropSourceNotAllowed,
        Reason::DropNotTranslated,
        Reason::IcmpTranslated,
        Reason::PassIcmpNoFlow,
        Reason::FragNeededSent,
        Reason::FragmentTranslated,
        Reason::FlowEstablished,
        Reason::HalfOpenDisplaced,
        Reason::HalfOpenReclaimed,
    ];

    /// Whether packets counted under this reason are dropped (else they are
    /// passed to the kernel or forwarded).
    #[must_use]
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::DropFragNeeded
                | Reason::DropNoBackend
                | Reason::DropSnatExhausted
                | Reason::DropReplyCollision
                | Reason::DropFlowTableFull
                | Reason::DropRedirectFailed
                | Reason::DropSourceNotAllowed
                | Reason::DropNotTranslated
        )
    }

    /// A stable snake_case name, used in `stats` output and metrics labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Reason::TxSameInterface => "tx_same_interface",
            Reason::Redirect => "redirect",
            Reason::RedirectNeigh => "redirect_neigh",
            Reason::HandedToTc => "handed_to_tc",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotTcpUdp => "pass_not_tcp_udp",
            Reason::PassNoService => "pass_no_service",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassIpOptions => "pass_ip_options",
            Reason::PassFragment => "pass_fragment",
            Reason::PassTtlExpired => "pass_ttl_expired",
            Reason::PassNoRoute => "pass_no_route",
            Reason::DropFragNeeded => "drop_frag_needed",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::DropReplyCollision => "drop_reply_collision",
            Reason::DropFlowTableFull => "drop_flow_table_full",
            Reason::DropRedirectFailed => "drop_redirect_failed",
            Reason::DropSourceNotAllowed => "drop_source_not_allowed",
            Reason::DropNotTranslated => "drop_not_translated",
            Reason::IcmpTranslated => "icmp_translated",
            Reason::PassIcmpNoFlow => "pass_icmp_no_flow",
            Reason::FragNeededSent => "frag_needed_sent",
            Reason::FragmentTranslated => "fragment_translated",
            Reason::FlowEstablished => "flow_established",
            Reason::HalfOpenDisplaced => "half_open_displaced",
            Reason::HalfOpenReclaimed => "half_open_reclaimed",
        }
    }
}

/// Traffic through one service or one backend, per CPU.
///
/// "In" is client to backend, "out" is backend to client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub new_flows: u64,
}

impl Traffic {
    /// Adds `other` into `self` (summing CPUs, or backends into a service).
    pub fn add(&mut self, other: &Traffic) {
        let Traffic { packets_in, bytes_in, packets_out, bytes_out, new_flows } = other;
        self.packets_in += packets_in;
        self.bytes_in += bytes_in;
        self.packets_out += packets_out;
        self.bytes_out += bytes_out;
        self.new_flows += new_flows;
    }
}

#[cfg(feature = "user")]
// SAFETY: plain-old-data, `#[repr(C)]`, no padding.
unsafe impl aya::Pod for Traffic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.name());
        }
    }

    #[test]
    fn names_say_whether_the_packet_was_dropped() {
        for reason in Reason::ALL {
            assert_eq!(reason.is_drop(), reason.name().starts_with("drop_"), "{}", reason.name());
        }
    }
}
