//! Connection-tracking state and the timeout policy.
//!
//! A tracked connection is two entries: the *original* entry, keyed by
//! what the client sends (client -> VIP), and the *reply* entry, keyed by
//! what the backend sends back. Each entry remembers the TCP flags seen in
//! its own direction and when it last saw a packet; the connection is
//! alive while either entry is, with a timeout chosen from the flags of
//! both (see [`timeout_ns`]).
//!
//! A new connection's entries go to the `HALF_OPEN` map; once it is
//! [`answered`] both move to the `FLOWS` map, which nothing else enters, so
//! a flood of connections that are never answered (spoofed SYNs) evicts
//! only half-open ones, never an established connection.
//!
//! Expiry is enforced where it changes behaviour: a packet of an expired
//! connection starts a new one (a new backend pick), and an expired
//! connection's SNAT port can be taken by a new connection. User space
//! sweeps expired entries in the background; the LRU map evicts the oldest
//! entries when it is full.

// The TCP bits sit where the TCP header keeps them (FIN, SYN, RST are its
// flags byte's three low bits, ACK its fifth), so a packet's bits are one
// mask away; SEEN_PACKET takes the place of PSH, which is not tracked.

/// A TCP FIN was seen in this entry's direction.
pub const SEEN_FIN: u8 = 1 << 0;
/// A TCP SYN was seen in this entry's direction.
pub const SEEN_SYN: u8 = 1 << 1;
/// A TCP RST was seen in this entry's direction.
pub const SEEN_RST: u8 = 1 << 2;
/// A packet was seen in this entry's direction.
pub const SEEN_PACKET: u8 = 1 << 3;
/// A TCP segment with ACK set was seen in this entry's direction.
pub const SEEN_ACK: u8 = 1 << 4;
/// This direction's FIN came before the other direction's (set by the
/// datapath on reply entries: the node closed first, so it holds the
/// connection's tuple in TIME_WAIT).
pub const SEEN_FIN_FIRST: u8 = 1 << 5;
/// The client's FIN was seen, its timestamp value kept in
/// `FlowEntry::fin_tsval` (set by the datapath on reply entries; see
/// [`node_takes_syn`]).
pub const SEEN_CLIENT_FIN: u8 = 1 << 6;
/// The `SEEN_*` bits a TCP packet with header flags byte `flags` brings.
///
/// ```
/// use forwarder_common::conntrack::{SEEN_ACK, SEEN_PACKET, SEEN_SYN, tcp_seen};
/// assert_eq!(tcp_seen(0x12), SEEN_PACKET | SEEN_SYN | SEEN_ACK); // SYN+ACK
/// ```
#[inline(always)]
#[must_use]
pub const fn tcp_seen(flags: u8) -> u8 {
    SEEN_PACKET | (flags & (SEEN_FIN | SEEN_SYN | SEEN_RST | SEEN_ACK))
}

/// Whether a TCP connection has completed its handshake: the node has
/// answered and the client has acknowledged something since, as the
/// kernel's SYN_RECV -> ESTABLISHED. A client's SYN carries no ACK, so a
/// spoofed SYN the node answers (or a client that never sees the SYN-ACK)
/// stays in the handshake, on its short timeout. A connection picked up
/// mid-stream (client data and ACKs, node answers) counts as established.
#[inline(always)]
#[must_use]
pub const fn handshake_done(original: u8, reply: u8) -> bool {
    reply & SEEN_PACKET != 0 && original & SEEN_ACK != 0
}

/// Whether a forwarded packet shows its connection's client is real and
/// its node answers, so that the connection leaves the half-open table for
/// the established one: for UDP the node's reply; for TCP a segment from
/// the node without SYN or RST after the client's ACK (`original`,
/// `reply`: the connection's bits with this packet's). The node sends
/// one only once it took the client's ACK of its SYN-ACK, which a spoofed
/// source never saw: a blind ACK, or a SYN then an ACK, gets a RST. The
/// client's ACK alone would not do. Connections that are not answered
/// stay in a table of their own, so a flood of them evicts only its like.
///
/// ```
/// use forwarder_common::conntrack::*;
/// let (syn, ack) = (SEEN_PACKET | SEEN_SYN, SEEN_PACKET | SEEN_ACK);
/// // The node's SYN-ACK, and the client's ACK, leave it half-open.
/// assert!(!answered(6, true, syn | SEEN_ACK, syn, syn | SEEN_ACK));
/// assert!(!answered(6, false, ack, syn | SEEN_ACK, syn | SEEN_ACK));
/// // The node's first segment after the ACK establishes it.
/// assert!(answered(6, true, ack, syn | SEEN_ACK, syn | SEEN_ACK));
/// // A RST to a blind ACK does not.
/// assert!(!answered(6, true, SEEN_PACKET | SEEN_RST, ack, SEEN_PACKET | SEEN_RST));
/// assert!(answered(17, true, SEEN_PACKET, SEEN_PACKET, SEEN_PACKET));
/// assert!(!answered(17, false, SEEN_PACKET, SEEN_PACKET, 0));
/// ```
#[inline(always)]
#[must_use]
pub const fn answered(proto: u8, from_node: bool, packet: u8, original: u8, reply: u8) -> bool {
    if !from_node {
        return false;
    }
    if proto != crate::maps::PROTO_TCP {
        return true;
    }
    packet & (SEEN_SYN | SEEN_RST) == 0 && original & SEEN_ACK != 0 && (original | reply) & SEEN_RST == 0
}

/// Entry flag: this is the reply-direction entry of its connection.
pub const FLAG_REPLY: u8 = 1 << 0;
/// Entry flag: the connection's source is translated (snat mode).
pub const FLAG_SNAT: u8 = 1 << 1;
/// `ORIGINS` slot flag, never an entry's: a SYN or UDP datagram to a
/// preserve-mode service was forwarded with no state but this slot, which
/// waits for the node's answer (see `origin::Origin::awaits`).
pub const FLAG_PENDING: u8 = 1 << 2;

const SECOND: u64 = 1_000_000_000;
/// UDP: idle time after which a flow is forgotten.
pub const UDP_TIMEOUT_NS: u64 = 60 * SECOND;
/// TCP until the handshake is done (see [`handshake_done`]).
pub const TCP_SYN_TIMEOUT_NS: u64 = 60 * SECOND;
/// TCP once the handshake is done.
pub const TCP_ESTABLISHED_TIMEOUT_NS: u64 = 6 * 60 * 60 * SECOND;
/// TCP after a RST: long enough for the peer's answer to be translated
/// (RFC 5961's point).
pub const TCP_CLOSING_TIMEOUT_NS: u64 = 10 * SECOND;
/// TCP after a FIN in each direction, the client's first: the node ends in
/// CLOSED once the last ACK arrives, so its SNAT port is free again after
/// what a retransmitted FIN and its ACK need.
pub const TCP_CLOSED_TIMEOUT_NS: u64 = 2 * SECOND;
/// TCP after a FIN in each direction, the node's first: the node holds the
/// tuple in TIME_WAIT for 60 s (Linux's `TCP_TIMEWAIT_LEN`) and would
/// refuse a new connection's SYN on it, so the SNAT port waits it out.
pub const TCP_TIME_WAIT_TIMEOUT_NS: u64 = 60 * SECOND;

/// Whether a node that closed a connection first, and so holds its tuple
/// in TIME_WAIT, surely takes a new SYN on that tuple, as Linux decides:
/// if the SYN's timestamp value `syn_tsval` is newer, in sequence-number
/// order, than the last it saw from the client, the one of the client's
/// FIN (`fin_tsval`) (RFC 7323's PAWS, RFC 6191). (It also takes one
/// whose sequence number is past the old connection's, which is not
/// tracked.) Otherwise it answers with an ACK of the old connection, the
/// client resets that and sends its SYN again about 8 ms later. 0 stands
/// for no timestamp found: judged refused.
///
/// ```
/// use forwarder_common::conntrack::node_takes_syn;
/// assert!(node_takes_syn(1000, 1001));
/// assert!(!node_takes_syn(1000, 999));
/// assert!(!node_takes_syn(1000, 1000));
/// assert!(node_takes_syn(u32::MAX, 5)); // the clock wrapped
/// assert!(!node_takes_syn(5, u32::MAX));
/// assert!(!node_takes_syn(0, 5)); // the FIN had none
/// assert!(!node_takes_syn(1000, 0)); // the SYN has none
/// ```
#[inline(always)]
#[must_use]
pub const fn node_takes_syn(fin_tsval: u32, syn_tsval: u32) -> bool {
    fin_tsval != 0 && syn_tsval != 0 && (syn_tsval.wrapping_sub(fin_tsval) as i32) > 0
}

/// `last_seen` is refreshed at most this often, so an established flow's
/// entry is written about once a second instead of on every packet.
pub const REFRESH_INTERVAL_NS: u64 = SECOND;

/// How long a connection may stay idle, from the flags seen in each direction.
///
/// ```
/// use forwarder_common::conntrack::*;
/// let syn = SEEN_PACKET | SEEN_SYN;
/// let half_open = timeout_ns(6, syn, syn | SEEN_ACK);
/// assert_eq!(half_open, TCP_SYN_TIMEOUT_NS);
/// let est = timeout_ns(6, syn | SEEN_ACK, syn | SEEN_ACK);
/// assert_eq!(est, TCP_ESTABLISHED_TIMEOUT_NS);
/// let closed = timeout_ns(6, SEEN_PACKET | SEEN_FIN, SEEN_PACKET | SEEN_FIN);
/// assert_eq!(closed, TCP_CLOSED_TIMEOUT_NS);
/// let time_wait = timeout_ns(6, SEEN_PACKET | SEEN_FIN, SEEN_PACKET | SEEN_FIN | SEEN_FIN_FIRST);
/// assert_eq!(time_wait, TCP_TIME_WAIT_TIMEOUT_NS);
/// ```
#[inline(always)]
#[must_use]
pub const fn timeout_ns(proto: u8, original: u8, reply: u8) -> u64 {
    if proto != crate::maps::PROTO_TCP {
        return UDP_TIMEOUT_NS;
    }
    if (original | reply) & SEEN_RST != 0 {
        TCP_CLOSING_TIMEOUT_NS
    } else if original & reply & SEEN_FIN != 0 {
        if reply & SEEN_FIN_FIRST != 0 { TCP_TIME_WAIT_TIMEOUT_NS } else { TCP_CLOSED_TIMEOUT_NS }
    } else if handshake_done(original, reply) {
        TCP_ESTABLISHED_TIMEOUT_NS
    } else {
        TCP_SYN_TIMEOUT_NS
    }
}

/// A connection's `SEEN_*` bits as (original direction, reply direction),
/// from one of its entries (`entry_flags`, `entry_seen`) and the other
/// entry's bits (0 when it is gone). The one rule by which the datapath
/// and user space tell the directions apart.
///
/// ```
/// use forwarder_common::conntrack::{FLAG_REPLY, SEEN_PACKET, SEEN_SYN, directions};
/// let syn = SEEN_PACKET | SEEN_SYN;
/// assert_eq!(directions(0, syn, SEEN_PACKET), (syn, SEEN_PACKET));
/// assert_eq!(directions(FLAG_REPLY, SEEN_PACKET, syn), (syn, SEEN_PACKET));
/// ```
#[inline(always)]
#[must_use]
pub const fn directions(entry_flags: u8, entry_seen: u8, peer_seen: u8) -> (u8, u8) {
    if entry_flags & FLAG_REPLY != 0 { (peer_seen, entry_seen) } else { (entry_seen, peer_seen) }
}

/// What a connection's flags say about it (as `forwarder flows` shows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// TCP: the client's SYN, no answer yet.
    SynSent,
    /// TCP: the node answered, the client has not acknowledged it yet.
    SynReceived,
    /// TCP: the handshake is done, no FIN or RST.
    Established,
    /// TCP: a FIN in one direction.
    FinWait,
    /// TCP: a FIN in each direction, the client's first.
    Closing,
    /// TCP: a FIN in each direction, the node's first (it is in TIME_WAIT).
    TimeWait,
    /// TCP: a RST in either direction.
    Reset,
    /// UDP: any flow.
    Active,
}

impl ConnState {
    /// The state of a connection of protocol `proto` whose directions saw
    /// `original` and `reply` (see [`directions`]).
    #[must_use]
    pub const fn of(proto: u8, original: u8, reply: u8) -> Self {
        if proto != crate::maps::PROTO_TCP {
            return Self::Active;
        }
        let all = original | reply;
        if all & SEEN_RST != 0 {
            Self::Reset
        } else if original & reply & SEEN_FIN != 0 {
            if reply & SEEN_FIN_FIRST != 0 { Self::TimeWait } else { Self::Closing }
        } else if all & SEEN_FIN != 0 {
            Self::FinWait
        } else if handshake_done(original, reply) {
            Self::Established
        } else if reply & SEEN_PACKET != 0 {
            Self::SynReceived
        } else {
            Self::SynSent
        }
    }

    /// A stable snake_case name, as `flows` prints it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::SynSent => "syn_sent",
            Self::SynReceived => "syn_recv",
            Self::Established => "established",
            Self::FinWait => "fin_wait",
            Self::Closing => "closing",
            Self::TimeWait => "time_wait",
            Self::Reset => "reset",
            Self::Active => "active",
        }
    }
}

/// Whether a connection whose entries were last refreshed at `last_seen_ns`
/// (the later of the two) has expired at `now_ns`.
#[inline(always)]
#[must_use]
pub const fn expired(now_ns: u64, last_seen_ns: u64, timeout_ns: u64) -> bool {
    now_ns > last_seen_ns.saturating_add(timeout_ns)
}

/// Whether a new packet with `seen` bits ends a closed TCP connection and
/// starts a new one on the same 5-tuple (a SYN after FIN or RST).
#[inline(always)]
#[must_use]
pub const fn reopens(entry_seen: u8, packet_seen: u8) -> bool {
    packet_seen & SEEN_SYN != 0 && entry_seen & (SEEN_FIN | SEEN_RST) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{PROTO_TCP, PROTO_UDP};

    #[test]
    fn policy_table() {
        let cases = [
            ("udp any", PROTO_UDP, SEEN_PACKET, 0, UDP_TIMEOUT_NS),
            ("syn unanswered", PROTO_TCP, SEEN_PACKET | SEEN_SYN, 0, TCP_SYN_TIMEOUT_NS),
            (
                "syn-ack, no ack",
                PROTO_TCP,
                SEEN_PACKET | SEEN_SYN,
                SEEN_PACKET | SEEN_SYN | SEEN_ACK,
                TCP_SYN_TIMEOUT_NS,
            ),
            ("established", PROTO_TCP, SEEN_PACKET | SEEN_ACK, SEEN_PACKET, TCP_ESTABLISHED_TIMEOUT_NS),
            ("answered, never acked", PROTO_TCP, SEEN_PACKET, SEEN_PACKET, TCP_SYN_TIMEOUT_NS),
            (
                "half closed",
                PROTO_TCP,
                SEEN_PACKET | SEEN_ACK | SEEN_FIN,
                SEEN_PACKET,
                TCP_ESTABLISHED_TIMEOUT_NS,
            ),
            (
                "both fin, client first",
                PROTO_TCP,
                SEEN_PACKET | SEEN_FIN,
                SEEN_PACKET | SEEN_FIN,
                TCP_CLOSED_TIMEOUT_NS,
            ),
            (
                "both fin, node first",
                PROTO_TCP,
                SEEN_PACKET | SEEN_FIN,
                SEEN_PACKET | SEEN_FIN | SEEN_FIN_FIRST,
                TCP_TIME_WAIT_TIMEOUT_NS,
            ),
            ("rst from backend", PROTO_TCP, SEEN_PACKET, SEEN_PACKET | SEEN_RST, TCP_CLOSING_TIMEOUT_NS),
            ("rst from client", PROTO_TCP, SEEN_PACKET | SEEN_RST, 0, TCP_CLOSING_TIMEOUT_NS),
        ];
        for (name, proto, original, reply, want) in cases {
            assert_eq!(timeout_ns(proto, original, reply), want, "{name}");
        }
    }

    #[test]
    fn state_names() {
        let syn = SEEN_PACKET | SEEN_SYN;
        let ack = SEEN_PACKET | SEEN_ACK;
        let cases = [
            ("udp", PROTO_UDP, SEEN_PACKET, 0, ConnState::Active, "active"),
            ("syn only", PROTO_TCP, syn, 0, ConnState::SynSent, "syn_sent"),
            ("syn answered", PROTO_TCP, syn, syn | SEEN_ACK, ConnState::SynReceived, "syn_recv"),
            (
                "handshake done",
                PROTO_TCP,
                syn | SEEN_ACK,
                syn | SEEN_ACK,
                ConnState::Established,
                "established",
            ),
            ("data both ways", PROTO_TCP, ack, ack, ConnState::Established, "established"),
            ("acked, not answered yet", PROTO_TCP, ack, 0, ConnState::SynSent, "syn_sent"),
            ("fin one way", PROTO_TCP, SEEN_PACKET | SEEN_FIN, SEEN_PACKET, ConnState::FinWait, "fin_wait"),
            ("fin both ways", PROTO_TCP, SEEN_FIN, SEEN_FIN, ConnState::Closing, "closing"),
            (
                "node's fin first",
                PROTO_TCP,
                SEEN_FIN,
                SEEN_FIN | SEEN_FIN_FIRST,
                ConnState::TimeWait,
                "time_wait",
            ),
            ("rst", PROTO_TCP, SEEN_PACKET, SEEN_RST, ConnState::Reset, "reset"),
            ("rst beats fin", PROTO_TCP, SEEN_FIN | SEEN_RST, SEEN_FIN, ConnState::Reset, "reset"),
        ];
        for (what, proto, original, reply, state, name) in cases {
            assert_eq!(ConnState::of(proto, original, reply), state, "{what}");
            assert_eq!(state.name(), name, "{what}");
        }
    }

    #[test]
    fn directions_follow_the_entry_flag() {
        assert_eq!(directions(0, 1, 2), (1, 2));
        assert_eq!(directions(FLAG_REPLY, 1, 2), (2, 1));
        assert_eq!(directions(FLAG_REPLY | FLAG_SNAT, 1, 0), (0, 1), "an orphan reply entry");
    }

    #[test]
    fn expiry_is_strictly_after_timeout() {
        assert!(!expired(110, 100, 10));
        assert!(expired(111, 100, 10));
        assert!(!expired(5, u64::MAX - 1, 10), "no overflow");
    }

    #[test]
    fn syn_reopens_only_closed_connections() {
        assert!(reopens(SEEN_PACKET | SEEN_FIN, SEEN_PACKET | SEEN_SYN));
        assert!(reopens(SEEN_PACKET | SEEN_RST, SEEN_PACKET | SEEN_SYN));
        assert!(!reopens(SEEN_PACKET, SEEN_PACKET | SEEN_SYN), "SYN retransmit");
        assert!(!reopens(SEEN_PACKET | SEEN_FIN, SEEN_PACKET), "late ACK after FIN");
    }
}
