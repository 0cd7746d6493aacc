//! BPF fixture tests: a packet in, the verdict and the exact packet out,
//! through `BPF_PROG_TEST_RUN` on the real datapath (like Katran's tester).
//!
//! Each test runs in its own network namespace with two interfaces, routes
//! and permanent neighbours, so `bpf_fib_lookup` gives known MACs. Expected
//! packets are built from scratch by etherparse, checksums included, so a
//! byte-for-byte match proves the incremental checksum updates. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::{
    TestRun, TestRunOptions, TestRunResult,
    maps::{Array, Map, MapData},
};
use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, TcpHeader, UdpHeader};
use forwarder::{
    config::ServiceFile,
    kernel::{Capacity, Kernel},
    state::Table,
};
use forwarder_common::{
    conntrack::{FLAG_REPLY, SEEN_FIN, SEEN_PACKET, SEEN_RST, SEEN_SYN},
    counters::Reason,
    hash::flow_hash,
    maps::{FlowEntry, FlowKey, META_NEEDS_NEIGH, PROTO_TCP, Settings, snat_port, wire_addr, wire_port},
};
use forwarder_tests::require_root;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_REDIRECT: u32 = 7;

const FWD_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
const HAIRPIN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x50];
const FWD_NODE_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const NODE1_MAC: [u8; 6] = [2, 0, 0, 2, 0, 11];
const NODE2_MAC: [u8; 6] = [2, 0, 0, 2, 0, 12];

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const FWD_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const NODE1: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 11);
const NODE2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 12);
const UNRESOLVED: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 13);
const HAIRPIN: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 50);

const VIP_SNAT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const VIP_PRESERVE: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const VIP_HAIRPIN: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 3);
const VIP_DRAINED: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 4);
const VIP_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 5);
const VIP_MAGLEV: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 6);

const SERVICES: &str = r#"
snat_ip = "10.2.0.1"

[[service]]
name = "web-snat"
vip = "10.9.0.1"
port = 80
protocol = "tcp"
backends = ["10.2.0.11:30080"]

[[service]]
name = "dns-snat"
vip = "10.9.0.1"
port = 53
protocol = "udp"
backends = ["10.2.0.12:30053"]

[[service]]
name = "web-preserve"
vip = "10.9.0.2"
port = 80
protocol = "tcp"
mode = "preserve"
backends = ["10.2.0.11:30080"]

[[service]]
name = "dns-preserve"
vip = "10.9.0.2"
port = 53
protocol = "udp"
mode = "preserve"
backends = ["10.2.0.12:30053"]

[[service]]
name = "hairpin"
vip = "10.9.0.3"
port = 80
protocol = "tcp"
mode = "preserve"
backends = ["10.1.0.50:30080"]

[[service]]
name = "drained"
vip = "10.9.0.4"
port = 80
protocol = "tcp"
backends = [{ addr = "10.2.0.11:30080", weight = 0 }]

[[service]]
name = "unresolved"
vip = "10.9.0.5"
port = 80
protocol = "tcp"
mode = "preserve"
backends = ["10.2.0.13:30080"]

[[service]]
name = "maglev"
vip = "10.9.0.6"
port = 80
protocol = "tcp"
mode = "preserve"
backends = ["10.2.0.11:30080", "10.2.0.12:30080"]
"#;

/// The datapath loaded in a fixture namespace.
struct Env {
    kernel: Kernel,
    table: Table,
    client_if: u32,
    node_if: u32,
}

impl Env {
    fn xdp(&mut self, ingress: u32, input: &[u8]) -> (u32, Vec<u8>) {
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let ctx: Vec<u8> =
            [0, input.len() as u32, 0, ingress, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        test_run(self.kernel.xdp(), &ctx, input)
    }

    fn tc(&mut self, ingress: u32, input: &[u8]) -> (u32, Vec<u8>) {
        // The prefix of struct __sk_buff up to `ifindex` (offset 40).
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
        test_run(self.kernel.tc(), &ctx, input)
    }

    fn reason(&self, reason: Reason) -> u64 {
        self.kernel.maps.reasons.get(&(reason as u32), 0).expect("reasons").iter().sum()
    }
}

/// Runs `program` once on `input` with context `ctx`: its return value and
/// the packet it left.
fn test_run<P>(program: &P, ctx: &[u8], input: &[u8]) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; input.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(ctx);
    let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Builds the fixture namespace, loads the datapath in it with
/// [`SERVICES`], and runs `test`.
fn with_datapath(test: impl FnOnce(&mut Env) + Send) {
    require_root();
    let ns = forwarder_tests::fixture::network(&[NODE1, NODE2]).expect("fixture network");
    ns.enter(|| {
        let mut kernel = Kernel::load(Capacity::default(), aya_log::Level::Info, None).expect("load");
        let mut table = Table::new(Capacity::default(), None).expect("table");
        let file = ServiceFile::parse("fixture.toml".as_ref(), SERVICES).expect("fixture services");
        table.apply(&file, &mut kernel.maps).expect("apply");
        let client_if = forwarder::kernel::ifindex("cl").unwrap();
        let node_if = forwarder::kernel::ifindex("nd").unwrap();
        test(&mut Env { kernel, table, client_if, node_if });
    });
}

#[derive(Clone, Copy, Debug, Default)]
struct Flags {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
}

const SYN: Flags = Flags { syn: true, ack: false, fin: false, rst: false };
const SYN_ACK: Flags = Flags { syn: true, ack: true, fin: false, rst: false };
const ACK: Flags = Flags { syn: false, ack: true, fin: false, rst: false };
const FIN_ACK: Flags = Flags { syn: false, ack: true, fin: true, rst: false };

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp(Flags),
    /// `false`: the "no checksum" zero checksum.
    Udp {
        checksum: bool,
    },
}

/// A packet, described by what the tests vary.
#[derive(Clone, Debug)]
struct Pkt {
    smac: [u8; 6],
    dmac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ttl: u8,
    l4: L4,
    payload: Vec<u8>,
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

impl Pkt {
    /// From the client to `dst`, arriving at the forwarder's client side.
    fn from_client(sport: u16, dst: SocketAddrV4, l4: L4) -> Self {
        Self {
            smac: CLIENT_MAC,
            dmac: FWD_CLIENT_MAC,
            src: sa(CLIENT, sport),
            dst,
            ttl: 64,
            l4,
            payload: b"fixture payload".to_vec(),
        }
    }

    /// From a node at `src` to `dst`, arriving at the forwarder's node side.
    fn from_node(node_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4, l4: L4) -> Self {
        Self { smac: node_mac, dmac: FWD_NODE_MAC, src, dst, ttl: 64, l4, payload: b"reply".to_vec() }
    }

    /// This packet as the forwarder should send it on.
    fn forwarded(&self, src: SocketAddrV4, dst: SocketAddrV4, smac: [u8; 6], dmac: [u8; 6]) -> Self {
        Self { smac, dmac, src, dst, ttl: self.ttl - 1, ..self.clone() }
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp(_) => PROTO_TCP,
            L4::Udp { .. } => 17,
        }
    }

    /// The 5-tuple hash the datapath computes for this packet.
    fn hash(&self) -> u32 {
        flow_hash(
            wire_addr(*self.src.ip()),
            wire_addr(*self.dst.ip()),
            wire_port(self.src.port()),
            wire_port(self.dst.port()),
            self.proto(),
        )
    }

    /// The frame, every checksum computed from scratch.
    fn bytes(&self) -> Vec<u8> {
        let (src, dst) = (self.src.ip().octets(), self.dst.ip().octets());
        let mut out = Vec::new();
        Ethernet2Header { source: self.smac, destination: self.dmac, ether_type: EtherType::IPV4 }
            .write(&mut out)
            .unwrap();
        match self.l4 {
            L4::Tcp(flags) => {
                let mut tcp = TcpHeader::new(self.src.port(), self.dst.port(), 1000, 64240);
                tcp.syn = flags.syn;
                tcp.ack = flags.ack;
                tcp.fin = flags.fin;
                tcp.rst = flags.rst;
                tcp.acknowledgment_number = if flags.ack { 5000 } else { 0 };
                let len = (tcp.header_len() + self.payload.len()) as u16;
                let ip = self.ip_header(len, IpNumber::TCP, src, dst);
                tcp.checksum = tcp.calc_checksum_ipv4(&ip, &self.payload).unwrap();
                ip.write_raw(&mut out).unwrap();
                tcp.write(&mut out).unwrap();
            }
            L4::Udp { checksum } => {
                let len = (UdpHeader::LEN + self.payload.len()) as u16;
                let ip = self.ip_header(len, IpNumber::UDP, src, dst);
                let mut udp =
                    UdpHeader::with_ipv4_checksum(self.src.port(), self.dst.port(), &ip, &self.payload)
                        .unwrap();
                if !checksum {
                    udp.checksum = 0;
                }
                ip.write_raw(&mut out).unwrap();
                udp.write(&mut out).unwrap();
            }
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn ip_header(&self, payload_len: u16, proto: IpNumber, src: [u8; 4], dst: [u8; 4]) -> Ipv4Header {
        let mut ip = Ipv4Header::new(payload_len, self.ttl, proto, src, dst).unwrap();
        ip.identification = 0x4242;
        ip.dont_fragment = true;
        ip.header_checksum = ip.calc_header_checksum();
        ip
    }
}

/// What a step expects.
#[derive(Debug)]
enum Expect {
    /// XDP_PASS with the packet untouched.
    Pass,
    Drop,
    /// XDP_TX with exactly this packet.
    Tx(Pkt),
    /// XDP_REDIRECT with exactly this packet.
    Redirect(Pkt),
}

/// Runs one step on XDP and checks verdict and output.
fn step(env: &mut Env, name: &str, ingress: u32, input: &Pkt, expect: Expect) {
    step_bytes(env, name, ingress, &input.bytes(), expect);
}

fn step_bytes(env: &mut Env, name: &str, ingress: u32, input: &[u8], expect: Expect) {
    let (verdict, out) = env.xdp(ingress, input);
    let (want_verdict, want_out) = match &expect {
        Expect::Pass => (XDP_PASS, input.to_vec()),
        Expect::Drop => (XDP_DROP, input.to_vec()),
        Expect::Tx(pkt) => (XDP_TX, pkt.bytes()),
        Expect::Redirect(pkt) => (XDP_REDIRECT, pkt.bytes()),
    };
    assert_eq!(verdict, want_verdict, "{name}: verdict (expected {expect:?})");
    if want_verdict != XDP_DROP {
        assert_eq!(hex(&out), hex(&want_out), "{name}: output packet");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn snat_translates_both_directions_tcp_and_udp() {
    with_datapath(|env| {
        let (cl, nd) = (env.client_if, env.node_if);
        for (name, l4, vip, node, node_mac) in [
            ("tcp", L4::Tcp(SYN), sa(VIP_SNAT, 80), sa(NODE1, 30080), NODE1_MAC),
            ("udp", L4::Udp { checksum: true }, sa(VIP_SNAT, 53), sa(NODE2, 30053), NODE2_MAC),
            (
                "udp without checksum",
                L4::Udp { checksum: false },
                sa(VIP_SNAT, 53),
                sa(NODE2, 30053),
                NODE2_MAC,
            ),
        ] {
            let sport = 40000 + name.len() as u16;
            let syn = Pkt::from_client(sport, vip, l4);
            let snat = sa(SNAT, snat_port(syn.hash(), 0));
            step(
                env,
                &format!("snat {name}: request"),
                cl,
                &syn,
                Expect::Redirect(syn.forwarded(snat, node, FWD_NODE_MAC, node_mac)),
            );

            let reply_l4 = if let L4::Tcp(_) = l4 { L4::Tcp(SYN_ACK) } else { l4 };
            let reply = Pkt::from_node(node_mac, node, snat, reply_l4);
            let back = reply.forwarded(vip, sa(CLIENT, sport), FWD_CLIENT_MAC, CLIENT_MAC);
            step(env, &format!("snat {name}: reply"), nd, &reply, Expect::Redirect(back));

            let mut data = Pkt::from_client(sport, vip, if let L4::Tcp(_) = l4 { L4::Tcp(ACK) } else { l4 });
            data.payload = vec![0x5a; 999]; // odd length: checksum padding
            step(
                env,
                &format!("snat {name}: established"),
                cl,
                &data,
                Expect::Redirect(data.forwarded(snat, node, FWD_NODE_MAC, node_mac)),
            );
        }
    });
}

#[test]
fn preserve_translates_only_the_destination_and_replies_back() {
    with_datapath(|env| {
        let (cl, nd) = (env.client_if, env.node_if);
        for (name, l4, vip, node, node_mac) in [
            ("tcp", L4::Tcp(SYN), sa(VIP_PRESERVE, 80), sa(NODE1, 30080), NODE1_MAC),
            ("udp", L4::Udp { checksum: true }, sa(VIP_PRESERVE, 53), sa(NODE2, 30053), NODE2_MAC),
        ] {
            let syn = Pkt::from_client(41000, vip, l4);
            step(
                env,
                &format!("preserve {name}: request"),
                cl,
                &syn,
                Expect::Redirect(syn.forwarded(syn.src, node, FWD_NODE_MAC, node_mac)),
            );
            let reply = Pkt::from_node(node_mac, node, sa(CLIENT, 41000), l4);
            let back = reply.forwarded(vip, sa(CLIENT, 41000), FWD_CLIENT_MAC, CLIENT_MAC);
            step(env, &format!("preserve {name}: reply"), nd, &reply, Expect::Redirect(back));
        }
    });
}

#[test]
fn backend_on_the_ingress_side_is_sent_back_out_with_xdp_tx() {
    with_datapath(|env| {
        let syn = Pkt::from_client(42000, sa(VIP_HAIRPIN, 80), L4::Tcp(SYN));
        let out = syn.forwarded(syn.src, sa(HAIRPIN, 30080), FWD_CLIENT_MAC, HAIRPIN_MAC);
        step(env, "hairpin", env.client_if, &syn, Expect::Tx(out));
        assert_eq!(env.reason(Reason::TxSameInterface), 1);
    });
}

/// Everything that is not a VIP:port or a tracked reply, and what the
/// datapath does not translate, passes untouched.
#[test]
fn other_traffic_passes_untouched() {
    with_datapath(|env| {
        let cl = env.client_if;
        let vip = sa(VIP_SNAT, 80);
        let cases: Vec<(&str, Pkt, Reason)> = vec![
            (
                "the host's own address",
                Pkt::from_client(43000, sa(FWD_CLIENT_SIDE, 22), L4::Tcp(SYN)),
                Reason::PassNoService,
            ),
            (
                "VIP, unserved port",
                Pkt::from_client(43000, sa(VIP_SNAT, 81), L4::Tcp(SYN)),
                Reason::PassNoService,
            ),
            (
                "VIP:port, other protocol",
                Pkt::from_client(43000, sa(VIP_SNAT, 80), L4::Udp { checksum: true }),
                Reason::PassNoService,
            ),
            (
                "TTL 1 to a VIP",
                Pkt { ttl: 1, ..Pkt::from_client(43000, vip, L4::Tcp(SYN)) },
                Reason::PassTtlExpired,
            ),
            (
                "reply without a flow",
                Pkt::from_node(NODE1_MAC, sa(NODE1, 30080), sa(SNAT, 5555), L4::Tcp(SYN_ACK)),
                Reason::PassNoService,
            ),
        ];
        for (name, pkt, reason) in cases {
            let before = env.reason(reason);
            step(env, name, cl, &pkt, Expect::Pass);
            assert_eq!(env.reason(reason), before + 1, "{name}: counted as {}", reason.name());
        }

        let good = Pkt::from_client(43001, vip, L4::Tcp(SYN)).bytes();
        let mut options = good.clone();
        options[14] = 0x46; // IHL 6: one word of options (the payload's first bytes)
        let mut fragment = good.clone();
        fragment[20] |= 0x20; // More Fragments
        let mut arp = good.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let truncated = good[..14 + 20 + 10].to_vec();
        let mut short_ip = good.clone();
        short_ip[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length 10 < header
        for (name, bytes, reason) in [
            ("IPv4 options", options, Reason::PassIpOptions),
            ("fragment", fragment, Reason::PassFragment),
            ("ARP", arp, Reason::PassNotIpv4),
            ("truncated TCP header", truncated, Reason::PassMalformed),
            ("IPv4 length shorter than its header", short_ip, Reason::PassMalformed),
            ("Ethernet header only", good[..14].to_vec(), Reason::PassMalformed),
        ] {
            let before = env.reason(reason);
            step_bytes(env, name, cl, &bytes, Expect::Pass);
            assert_eq!(env.reason(reason), before + 1, "{name}: counted as {}", reason.name());
        }
        assert_eq!(env.kernel.maps.flows.keys().count(), 0, "no flow was created");
    });
}

#[test]
fn drained_service_drops_new_flows() {
    with_datapath(|env| {
        let syn = Pkt::from_client(44000, sa(VIP_DRAINED, 80), L4::Tcp(SYN));
        step(env, "all backends drained", env.client_if, &syn, Expect::Drop);
        assert_eq!(env.reason(Reason::DropNoBackend), 1);
    });
}

/// An unresolved next hop: XDP hands the packet, untouched, to the TC
/// program, which translates it and asks the kernel to resolve the MAC.
#[test]
fn unresolved_next_hop_goes_through_tc() {
    with_datapath(|env| {
        let syn = Pkt::from_client(45000, sa(VIP_UNRESOLVED, 80), L4::Tcp(SYN));
        let (verdict, out) = env.xdp(env.client_if, &syn.bytes());
        assert_eq!(verdict, XDP_PASS, "xdp: no neighbour");
        // test_run returns the metadata too: the tag the TC program looks for.
        let (meta, frame) = out.split_at(4);
        assert_eq!(meta, META_NEEDS_NEIGH.to_ne_bytes(), "tagged for TC");
        assert_eq!(hex(frame), hex(&syn.bytes()), "untouched");
        assert_eq!(env.reason(Reason::HandedToTc), 1);

        // test_run cannot carry XDP metadata into a TC run, so let TC
        // translate everything, as on an interface without XDP.
        env.kernel.maps.settings.set(0, Settings { tc_translates_all: 1 }, 0).unwrap();
        let (verdict, out) = env.tc(env.client_if, &syn.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "tc: redirect_neigh");
        // Translated, MACs left for the neighbour subsystem to fill in.
        let want = syn.forwarded(syn.src, sa(UNRESOLVED, 30080), CLIENT_MAC, FWD_CLIENT_MAC);
        assert_eq!(hex(&out), hex(&want.bytes()));
        assert_eq!(env.reason(Reason::RedirectNeigh), 1);

        // With a known neighbour TC forwards like XDP does.
        let other = Pkt::from_client(45001, sa(VIP_PRESERVE, 80), L4::Tcp(SYN));
        let (verdict, out) = env.tc(env.client_if, &other.bytes());
        assert_eq!(verdict, TC_ACT_REDIRECT, "tc: redirect");
        assert_eq!(
            hex(&out),
            hex(&other.forwarded(other.src, sa(NODE1, 30080), FWD_NODE_MAC, NODE1_MAC).bytes())
        );
    });
}

/// The kernel and user space agree on the Maglev table (read back through
/// the syscall path) and on the slot each 5-tuple hashes to.
#[test]
fn kernel_picks_the_backend_user_space_predicts() {
    with_datapath(|env| {
        let service = env.table.services()["maglev"].clone();
        let built = service.maglev_slots();
        let outer = aya::maps::HashOfMaps::<_, u32>::try_from(&env.kernel.maps.maglev).unwrap();
        let inner: MapData = outer.get(&service.table, 0).expect("inner map");
        let inner: Array<MapData, u32> = Array::try_from(Map::Array(inner)).unwrap();
        let read: Vec<u32> = inner.iter().map(Result::unwrap).collect();
        assert_eq!(read, built, "table as the kernel sees it");

        let mut seen = [0usize; 2];
        for sport in 46000..46064 {
            let syn = Pkt::from_client(sport, sa(VIP_MAGLEV, 80), L4::Tcp(SYN));
            let backend = built[(syn.hash() % service.table_len) as usize] as usize;
            seen[backend] += 1;
            let (node, mac) = if *service.backends[backend].spec.addr.ip() == NODE1 {
                (NODE1, NODE1_MAC)
            } else {
                (NODE2, NODE2_MAC)
            };
            let want = syn.forwarded(syn.src, sa(node, 30080), FWD_NODE_MAC, mac);
            step(env, &format!("maglev sport {sport}"), env.client_if, &syn, Expect::Redirect(want));
        }
        assert!(seen.iter().all(|&n| n > 10), "both backends picked: {seen:?}");
    });
}

/// A SNAT port held by a live connection is skipped; one held by an
/// expired connection, or by an orphan (a reply entry whose original was
/// evicted), is taken over.
#[test]
fn snat_ports_never_collide_and_expired_or_orphaned_ones_are_reused() {
    with_datapath(|env| {
        let now = coarse_now_ns();
        // Occupies `port` towards node 1 with a connection of another client;
        // `whole`: with its original entry too (else an orphan).
        let occupy = |env: &mut Env, port: u16, last_seen_ns: u64, seen: u8, whole: bool| {
            let key =
                FlowKey::new(wire_addr(NODE1), wire_addr(SNAT), wire_port(30080), wire_port(port), PROTO_TCP);
            let other_client = FlowKey::new(
                wire_addr(VIP_SNAT),
                wire_addr(Ipv4Addr::new(10, 1, 0, 99)),
                wire_port(80),
                wire_port(port),
                PROTO_TCP,
            );
            let mut entry = FlowEntry::rewriting(&key, &other_client, 0, 0, FLAG_REPLY, last_seen_ns);
            entry.seen = seen;
            env.kernel.maps.flows.insert(key, entry, 0).unwrap();
            if whole {
                let original_key = entry.peer_key(PROTO_TCP);
                let mut original =
                    FlowEntry::rewriting(&original_key, &key.reversed(), 0, 0, 0, last_seen_ns);
                original.seen = seen;
                env.kernel.maps.flows.insert(original_key, original, 0).unwrap();
            }
        };
        let to_node1 =
            |pkt: &Pkt, port| pkt.forwarded(sa(SNAT, port), sa(NODE1, 30080), FWD_NODE_MAC, NODE1_MAC);

        let first = Pkt::from_client(47000, sa(VIP_SNAT, 80), L4::Tcp(SYN));
        occupy(env, snat_port(first.hash(), 0), now, SEEN_PACKET, true);
        step(
            env,
            "live port skipped",
            env.client_if,
            &first,
            Expect::Redirect(to_node1(&first, snat_port(first.hash(), 1))),
        );

        let second = Pkt::from_client(47001, sa(VIP_SNAT, 80), L4::Tcp(SYN));
        let hour = 3_600_000_000_000;
        occupy(env, snat_port(second.hash(), 0), now.saturating_sub(hour), SEEN_PACKET | SEEN_RST, true);
        step(
            env,
            "expired port reused",
            env.client_if,
            &second,
            Expect::Redirect(to_node1(&second, snat_port(second.hash(), 0))),
        );

        let third = Pkt::from_client(47002, sa(VIP_SNAT, 80), L4::Tcp(SYN));
        occupy(env, snat_port(third.hash(), 0), now, SEEN_PACKET, false);
        step(
            env,
            "orphaned port reused",
            env.client_if,
            &third,
            Expect::Redirect(to_node1(&third, snat_port(third.hash(), 0))),
        );
    });
}

/// A SYN on a 5-tuple whose connection was closed starts a new connection;
/// a retransmitted SYN does not.
#[test]
fn syn_after_close_starts_a_new_connection() {
    with_datapath(|env| {
        let cl = env.client_if;
        let syn = Pkt::from_client(48000, sa(VIP_SNAT, 80), L4::Tcp(SYN));
        let port = snat_port(syn.hash(), 0);
        let out = |pkt: &Pkt, port| pkt.forwarded(sa(SNAT, port), sa(NODE1, 30080), FWD_NODE_MAC, NODE1_MAC);
        step(env, "syn", cl, &syn, Expect::Redirect(out(&syn, port)));
        step(env, "syn retransmitted", cl, &syn, Expect::Redirect(out(&syn, port)));
        let fin = Pkt::from_client(48000, sa(VIP_SNAT, 80), L4::Tcp(FIN_ACK));
        step(env, "fin", cl, &fin, Expect::Redirect(out(&fin, port)));
        let key =
            FlowKey::new(wire_addr(CLIENT), wire_addr(VIP_SNAT), wire_port(48000), wire_port(80), PROTO_TCP);
        assert_ne!(env.kernel.maps.flows.get(&key, 0).unwrap().seen & SEEN_FIN, 0);
        // The same client 5-tuple maps to the same reply tuple, so the new
        // connection takes the port back, as it would without NAT.
        step(env, "syn after fin", cl, &syn, Expect::Redirect(out(&syn, port)));
        let entry = env.kernel.maps.flows.get(&key, 0).unwrap();
        assert_eq!(entry.seen, SEEN_PACKET | SEEN_SYN, "a fresh connection, FIN forgotten");
        assert_eq!(env.kernel.maps.flows.keys().count(), 2, "one connection, two entries");
    });
}

/// `bpf_ktime_get_coarse_ns`'s clock, read from user space.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Services on the same nodes with the same weights share one Maglev
/// table; a table nobody uses any more is deleted a second after the
/// change that freed it.
#[test]
fn services_on_the_same_nodes_share_a_table() {
    with_datapath(|env| {
        let tables = |env: &Env| {
            let outer = aya::maps::HashOfMaps::<_, u32>::try_from(&env.kernel.maps.maglev).unwrap();
            let mut ids: Vec<u32> = outer.keys().map(Result::unwrap).collect();
            ids.sort_unstable();
            ids
        };
        let installed = |env: &Env, name: &str| env.table.services()[name].table;
        // web-snat and web-preserve: one backend each on node 1, weight 1.
        assert_eq!(installed(env, "web-snat"), installed(env, "web-preserve"));
        let before = tables(env);

        let changed = SERVICES.replacen(
            "mode = \"preserve\"\nbackends = [\"10.2.0.11:30080\"]",
            "mode = \"preserve\"\nbackends = [\"10.2.0.11:30080\", \"10.2.0.12:30080\"]",
            1,
        );
        let file = ServiceFile::parse("fixture.toml".as_ref(), &changed).unwrap();
        env.table.apply(&file, &mut env.kernel.maps).unwrap();
        let shared_with_maglev = installed(env, "web-preserve") == installed(env, "maglev");
        assert!(shared_with_maglev, "same nodes as the maglev service now: same table");
        assert_eq!(tables(env), before, "no new table needed, none freed (web-snat keeps its own)");

        let original = ServiceFile::parse("fixture.toml".as_ref(), SERVICES).unwrap();
        // The maglev service's list reversed (it is the file's last).
        let at = changed.rfind("backends = [\"10.2.0.11:30080\", \"10.2.0.12:30080\"]").unwrap();
        let reversed = format!(
            "{}backends = [\"10.2.0.12:30080\", \"10.2.0.11:30080\"]{}",
            &changed[..at],
            &changed[at + "backends = [\"10.2.0.11:30080\", \"10.2.0.12:30080\"]".len()..]
        );
        env.table
            .apply(&ServiceFile::parse("fixture.toml".as_ref(), &reversed).unwrap(), &mut env.kernel.maps)
            .unwrap();
        assert_eq!(installed(env, "maglev"), installed(env, "web-preserve"), "backend order does not matter");
        env.table.apply(&original, &mut env.kernel.maps).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        env.table.retire(&mut env.kernel.maps).unwrap();
        assert_eq!(tables(env), before, "back to the original tables, nothing left over");
    });
}

/// An established flow reuses the next hop its last route lookup found,
/// and looks again about once a second: a node's new MAC is picked up
/// within a second, without a lookup on every packet.
#[test]
fn a_cached_next_hop_does_not_skip_the_mtu_check_for_longer_packets() {
    with_datapath(|env| {
        let cl = env.client_if;
        let (vip, node) = (sa(VIP_PRESERVE, 80), sa(NODE1, 30080));
        let syn = Pkt::from_client(49100, vip, L4::Tcp(SYN));
        step(env, "syn", cl, &syn, Expect::Redirect(syn.forwarded(syn.src, node, FWD_NODE_MAC, NODE1_MAC)));
        let ack = Pkt::from_client(49100, vip, L4::Tcp(ACK));
        step(
            env,
            "ack: cached",
            cl,
            &ack,
            Expect::Redirect(ack.forwarded(ack.src, node, FWD_NODE_MAC, NODE1_MAC)),
        );
        let status =
            std::process::Command::new("ip").args(["link", "set", "nd", "mtu", "576"]).status().unwrap();
        assert!(status.success(), "ip link set nd mtu 576");
        let long = Pkt { payload: vec![7; 600], ..ack.clone() };
        let before = env.reason(Reason::DropFragNeeded);
        step(env, "a packet over the new MTU", cl, &long, Expect::Drop);
        assert_eq!(env.reason(Reason::DropFragNeeded), before + 1, "counted as frag needed");
        let fits = Pkt { payload: vec![7; 400], ..ack.clone() };
        step(
            env,
            "one that fits",
            cl,
            &fits,
            Expect::Redirect(fits.forwarded(fits.src, node, FWD_NODE_MAC, NODE1_MAC)),
        );
    });
}

#[test]
fn established_flows_cache_the_next_hop_for_at_most_a_second() {
    with_datapath(|env| {
        let cl = env.client_if;
        let moved: [u8; 6] = [2, 0, 0, 2, 0, 0x99];
        let (vip, node) = (sa(VIP_PRESERVE, 80), sa(NODE1, 30080));
        let syn = Pkt::from_client(49000, vip, L4::Tcp(SYN));
        step(env, "syn", cl, &syn, Expect::Redirect(syn.forwarded(syn.src, node, FWD_NODE_MAC, NODE1_MAC)));
        let run = |cmd: &str| {
            let status = std::process::Command::new("ip").args(cmd.split_whitespace()).status().unwrap();
            assert!(status.success(), "ip {cmd}");
        };
        run("neigh replace 10.2.0.11 lladdr 02:00:00:02:00:99 dev nd nud permanent");
        let ack = Pkt::from_client(49000, vip, L4::Tcp(ACK));
        let cached = ack.forwarded(ack.src, node, FWD_NODE_MAC, NODE1_MAC);
        step(env, "ack right after the change: cached hop", cl, &ack, Expect::Redirect(cached));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let fresh = ack.forwarded(ack.src, node, FWD_NODE_MAC, moved);
        step(env, "ack a second later: looked up again", cl, &ack, Expect::Redirect(fresh.clone()));
        step(env, "and cached again", cl, &ack, Expect::Redirect(fresh));
    });
}
