//! Per-packet cost of the datapath program, in nanoseconds.
//!
//! `BPF_PROG_TEST_RUN` with `repeat` re-runs a program on one buffer, which
//! a NAT rewrites on the first run. So the program timed is the bench
//! object's `bench_forward`: it rewrites the frame from a template (the
//! next flow's source, and destination among the services) and then runs
//! the forwarder's own XDP code, `forwarder_ebpf::xdp::run`, on it. The
//! rewrite alone (`bench_rewrite`) is timed the same way and subtracted;
//! so is it for `bench_lookup` (parse and flow lookup only), the part of
//! the cost that is the flow table's memory. The kernel reports the mean
//! time per run; each figure is the median of several such means, taken
//! in rounds across every setup so that a noisy moment hits all alike.
//! Nodes' answers are timed the same way, the generator writing each flow
//! into the answer's destination (see `Segment::Answer`).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    TestRun as _, TestRunOptions,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::Xdp,
};
use etherparse::{PacketBuilder, TcpOptionElement};
use forwarder::{
    config::ServiceFile,
    kernel::{BENCH_FORWARD, Capacity, Kernel},
    state::ServiceTable,
};
use forwarder_common::bench::{FRAME_LEN, GenConfig, SYN_FRAME_LEN, TEMPLATE_LEN};

use super::median;
use crate::{fixture, netns::Netns};

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
const FORWARDER_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
/// The forwarder's node-side interface (see `fixture::network`).
const NODE_SIDE_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// `n` node addresses, 10.2.0.11 upwards.
#[must_use]
pub fn nodes(n: u32) -> Vec<Ipv4Addr> {
    (0..n).map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 2, 0, 11)) + i)).collect()
}

/// The VIP of service `i`: consecutive addresses from 10.9.0.0.
#[must_use]
pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 0, 0)) + i)
}

/// `services` services on `vip(i):80/tcp`, each over the same `backends`
/// nodes (so they share one Maglev table, as NodePort services do).
#[must_use]
pub fn service_file(mode: &str, services: u32, backends: u32) -> String {
    let list: Vec<String> = nodes(backends).iter().map(|n| format!("\"{n}:30080\"")).collect();
    let list = list.join(", ");
    let mut text = String::from("snat_ip = \"10.2.0.1\"\n");
    for i in 0..services {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"{}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\nbackends = [{list}]\n",
            vip(i)
        );
    }
    text
}

/// The TCP segment every packet of a setup is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// An ACK: of an established flow or, for new flows, of a connection
    /// the tables do not know (as a flood of ACKs sends).
    Ack,
    /// A SYN without options, 60 bytes with 6 zero payload bytes: the
    /// "new flow (SYN)" rows.
    Syn,
    /// A SYN with the options Linux sends (MSS, SACK permitted, timestamps,
    /// window scale), which the datapath reads for the timestamp.
    LinuxSyn,
    /// A node's SYN-ACK to a new flow's SYN (60 bytes, as `Syn`: no TCP
    /// options), each flow's SYN sent first, untimed: in preserve mode,
    /// what the node's answer to a SYN forwarded without state costs (it
    /// makes the connection). One backend, so that every flow's node
    /// answers; fewer packets a run (see `ANSWER_TABLE_FACTOR`).
    Answer,
}

impl Segment {
    /// The frame's length.
    fn frame_len(self) -> usize {
        match self {
            Self::Ack | Self::Syn | Self::Answer => FRAME_LEN,
            Self::LinuxSyn => SYN_FRAME_LEN,
        }
    }
}

/// The template: a TCP segment from the first client to the first VIP
/// (for `Answer`, from the first node to the first client, as preserve
/// mode forwards it), with a payload of zeros where its headers are
/// shorter than 60 bytes.
fn template(segment: Segment) -> anyhow::Result<[u8; TEMPLATE_LEN]> {
    let mut frame = Vec::with_capacity(SYN_FRAME_LEN);
    let client_port = forwarder_common::bench::flow_source(0).0;
    let tcp = if segment == Segment::Answer {
        let node = nodes(1)[0];
        PacketBuilder::ethernet2(fixture::node_mac(node), NODE_SIDE_MAC)
            .ipv4(node.octets(), FIRST_CLIENT.octets(), 64)
            .tcp(30080, client_port, 7000, 64240)
    } else {
        PacketBuilder::ethernet2(CLIENT_MAC, FORWARDER_MAC)
            .ipv4(FIRST_CLIENT.octets(), vip(0).octets(), 64)
            .tcp(client_port, 80, 1000, 64240)
    };
    let tcp = match segment {
        Segment::Ack => tcp.ack(5000),
        Segment::Syn => tcp.syn(),
        Segment::Answer => tcp.syn().ack(1001),
        Segment::LinuxSyn => tcp
            .syn()
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Timestamp(0x1234_5678, 0),
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(7),
            ])
            .context("SYN options")?,
    };
    let headers = tcp.size(0);
    tcp.write(&mut frame, &vec![0u8; FRAME_LEN.saturating_sub(headers)])?;
    anyhow::ensure!(frame.len() == segment.frame_len(), "a {segment:?} frame of {} bytes", frame.len());
    let mut padded = [0u8; TEMPLATE_LEN];
    padded[..frame.len()].copy_from_slice(&frame);
    Ok(padded)
}

/// One configuration to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub mode: &'static str,
    pub services: u32,
    pub backends: u32,
    /// Established flows cycled through; 0: a new flow every packet.
    pub flows: u32,
    /// What every packet is.
    pub segment: Segment,
    /// Packets per timed run.
    pub repeat: u32,
}

/// One round's measurement of a setup, nanoseconds per packet.
#[derive(Clone, Copy, Debug)]
struct Sample {
    forward: f64,
    rewrite: f64,
    lookup: Option<f64>,
}

/// A setup's result: medians over the rounds, the frame rewrite subtracted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// The whole forwarder program.
    pub ns: f64,
    /// Parsing and the flow lookup alone (established flows only).
    pub lookup_ns: Option<f64>,
    /// The rest: the whole program minus parsing and the flow lookup.
    pub after_lookup_ns: Option<f64>,
}

/// A setup, loaded in a fixture network of its own, ready to be timed.
pub struct Timer {
    pub setup: Setup,
    // Dropped before the namespace its programs were loaded in.
    kernel: Kernel,
    network: Netns,
    ingress: u32,
    /// For `Answer`: the SYNs answered.
    opener: Option<Opener>,
    samples: Vec<Sample>,
}

/// The SYNs an `Answer` setup's answers answer: the generator's
/// configuration for them and for the answers, and the client-side
/// interface the SYNs arrive on.
#[derive(Clone, Copy)]
struct Opener {
    syns: GenConfig,
    answers: GenConfig,
    client_side: u32,
}

/// An `Answer` setup's tables are sized for this many times its `repeat`
/// (the other new-flow setups': for theirs): all of a run's SYNs wait for
/// their answers at once, and a pending slot taken by a later SYN, or by
/// an earlier answer's connection, leaves its answer untranslated (about
/// one in eight with the usual room; one in fifty with this). So it times
/// a sixteenth of the packets of the SYN rows, in tables of their size.
pub const ANSWER_TABLE_FACTOR: u32 = 16;

/// Writes the generator's configuration and starts its flow sequence
/// again on every CPU.
fn generate(kernel: &mut Kernel, config: GenConfig) -> anyhow::Result<()> {
    Array::<_, GenConfig>::try_from(kernel.object_mut().map_mut("GEN").context("GEN")?)?.set(0, config, 0)?;
    let mut counts: PerCpuArray<_, u64> =
        PerCpuArray::try_from(kernel.object_mut().map_mut("COUNTS").context("COUNTS")?)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
    counts.set(1, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
    Ok(())
}

fn program<'a>(kernel: &'a mut Kernel, name: &str) -> anyhow::Result<&'a mut Xdp> {
    Ok(kernel.object_mut().program_mut(name).context("bench program")?.try_into()?)
}

/// Runs `program` `repeat` times on a frame of `len` bytes (which the
/// bench programs write from the template): its verdict and nanoseconds
/// per run.
fn run(program: &Xdp, ingress: u32, len: usize, repeat: u32) -> anyhow::Result<(u32, f64)> {
    run_on(program, ingress, len, repeat).map(|(verdict, ns, _)| (verdict, ns))
}

/// [`run`], and the frame as the last run left it.
fn run_on(program: &Xdp, ingress: u32, len: usize, repeat: u32) -> anyhow::Result<(u32, f64, Vec<u8>)> {
    let frame = vec![0u8; len]; // rewritten by the program before use
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let ctx: Vec<u8> = [0, len as u32, 0, ingress, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut out = vec![0u8; len + 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat;
    let result = program.test_run(opts)?;
    out.truncate(len);
    Ok((result.return_value, result.duration.as_nanos() as f64, out))
}

impl Timer {
    /// Builds the network, loads the datapath, installs the services and
    /// opens the flows.
    pub fn new(setup: Setup) -> anyhow::Result<Self> {
        let Setup { mode, services, backends, flows, segment, repeat } = setup;
        let ns = fixture::network(&nodes(backends))?;
        if segment == Segment::Answer {
            // The clients, for the nodes' answers.
            ns.ip("route add 10.128.0.0/9 via 10.1.0.2 dev cl")?;
        }
        let (kernel, ingress, opener) = ns.enter(|| -> anyhow::Result<(Kernel, u32, Option<Opener>)> {
            // Room for every flow of a run without evicting (new flows: the
            // table is flushed between runs, so SNAT ports never run out).
            // The half-open table's LRU lists are per CPU: a timed run of
            // new flows must fit in the share of the CPU it runs on;
            // established flows are opened a share at a time (below).
            let sized_for = if segment == Segment::Answer { repeat * ANSWER_TABLE_FACTOR } else { repeat };
            let connections = if flows == 0 { sized_for } else { flows };
            let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)? as u32;
            let half_open = if flows == 0 { (sized_for + 1024) * cpus } else { flows + 1024 };
            let capacity = Capacity {
                max_services: services.max(16).next_power_of_two(),
                max_backends: (services * backends).max(16).next_power_of_two(),
                max_flow_entries: (2 * connections + 1024).next_power_of_two(),
                max_half_open_entries: half_open.next_power_of_two(),
                ..Capacity::default()
            };
            let mut kernel = Kernel::load_object(BENCH_FORWARD, capacity, aya_log::Level::Warn, None)?;
            let mut table = ServiceTable::new(capacity, Vec::new())?;
            let file = ServiceFile::parse("bench.toml".as_ref(), &service_file(mode, services, backends))?;
            table.apply(&file, &mut kernel.maps)?;
            let frame = template(segment)?;
            let config =
                GenConfig { frame, flows, vips: services, answers: u32::from(segment == Segment::Answer) };
            generate(&mut kernel, config)?;
            for name in ["bench_rewrite", "bench_lookup"] {
                let program: &mut Xdp = kernel.object_mut().program_mut(name).context(name)?.try_into()?;
                program.load()?;
            }
            let client_side = forwarder::kernel::ifindex("cl")?;
            let (ingress, opener) = if segment == Segment::Answer {
                let syns = GenConfig { frame: template(Segment::Syn)?, answers: 0, ..config };
                (forwarder::kernel::ifindex("nd")?, Some(Opener { syns, answers: config, client_side }))
            } else {
                (client_side, None)
            };
            // The frame timed is the template's, options included (the
            // rewrite changes only addresses, the port and checksums).
            let len = segment.frame_len();
            let (verdict, _, written) = run_on(program(&mut kernel, "bench_rewrite")?, ingress, len, 1)?;
            anyhow::ensure!(verdict == XDP_PASS, "rewrite verdict {verdict}: the frame was not written");
            anyhow::ensure!(
                written[54..] == frame[54..len],
                "the frame written differs from the template after the TCP header"
            );
            if flows > 0 {
                // Opened from one CPU (the generator's flow sequence is per
                // CPU), in runs that half its share of the half-open table
                // holds, each established before the next.
                super::rig::pin_to_cpu(0);
                let run_len = (half_open.next_power_of_two() / cpus / 2).max(1);
                let mut opened = 0;
                while opened < flows {
                    let now = run_len.min(flows - opened);
                    let (verdict, _) = run(kernel.xdp(), ingress, segment.frame_len(), now)?;
                    anyhow::ensure!(verdict == XDP_REDIRECT, "verdict {verdict} opening {flows} flows");
                    super::establish_all(&mut kernel.maps)?;
                    opened += now;
                }
            }
            Ok((kernel, ingress, opener))
        })?;
        Ok(Self { setup, kernel, network: ns, ingress, opener, samples: Vec::new() })
    }

    /// Times one round, in the setup's namespace (the kernel resolves the
    /// test run's ingress interface, and routes, in the caller's).
    pub fn sample(&mut self) -> anyhow::Result<()> {
        let Self { setup, kernel, network, ingress, opener, samples } = self;
        let Setup { flows, segment, repeat, .. } = *setup;
        let len = segment.frame_len();
        let ingress = *ingress;
        let sample = network.enter(|| -> anyhow::Result<Sample> {
            if let Some(Opener { syns, answers, client_side }) = *opener {
                // The SYNs answered, untimed, from the CPU the answers
                // arrive on (the flow sequence is per CPU).
                super::rig::pin_to_cpu(0);
                generate(kernel, syns)?;
                let (verdict, _) = run(kernel.xdp(), client_side, len, repeat)?;
                anyhow::ensure!(verdict == XDP_REDIRECT, "SYN verdict {verdict}");
                generate(kernel, answers)?;
            }
            if flows > 0 {
                // Visit every flow once, untimed, so the timed run sees a
                // busy table (each flow seen within the last second), not
                // one idle since the previous round: a packet of an idle
                // flow also refreshes its timestamp, and after 10 s reads
                // the other direction's entry.
                run(kernel.xdp(), ingress, len, flows)?;
            }
            let (verdict, forward) = run(kernel.xdp(), ingress, len, repeat)?;
            // (The last answer may be one whose slot was taken: they are
            // counted below.)
            anyhow::ensure!(
                verdict == XDP_REDIRECT || opener.is_some() && verdict == XDP_PASS,
                "forwarder verdict {verdict}"
            );
            let rewrite = run(program(kernel, "bench_rewrite")?, ingress, len, repeat)?.1;
            if flows == 0 {
                // Every packet was a new flow: start the next round empty.
                let keys: Vec<_> = kernel.maps.half_open.keys().filter_map(Result::ok).collect();
                // (A few answers find their slot taken, see
                // `ANSWER_TABLE_FACTOR`, and pass untranslated: counted in
                // the timed mean, at most 5%.)
                anyhow::ensure!(
                    opener.is_none() || keys.len() as u64 * 20 >= u64::from(repeat) * 19,
                    "{} of {repeat} answers made a connection",
                    keys.len()
                );
                for key in keys {
                    let _ = kernel.maps.half_open.remove(&key);
                }
                return Ok(Sample { forward, rewrite, lookup: None });
            }
            let (verdict, lookup) = run(program(kernel, "bench_lookup")?, ingress, len, repeat)?;
            anyhow::ensure!(verdict == XDP_PASS, "lookup verdict {verdict}: flow missing");
            Ok(Sample { forward, rewrite, lookup: Some(lookup) })
        })?;
        samples.push(sample);
        Ok(())
    }

    /// The medians so far.
    #[must_use]
    pub fn cost(&self) -> Cost {
        // Each round's rewrite is subtracted from the same round's timings.
        let ns = median(self.samples.iter().map(|s| s.forward - s.rewrite));
        let lookups: Vec<f64> = self.samples.iter().filter_map(|s| Some(s.lookup? - s.rewrite)).collect();
        let lookup_ns = (!lookups.is_empty()).then(|| median(lookups));
        let rests: Vec<f64> = self.samples.iter().filter_map(|s| Some(s.forward - s.lookup?)).collect();
        let after_lookup_ns = (!rests.is_empty()).then(|| median(rests));
        Cost { ns, lookup_ns, after_lookup_ns }
    }
}

/// Times every setup in `rounds` interleaved rounds.
pub fn time_all(setups: &[Setup], rounds: u32) -> anyhow::Result<Vec<(Setup, Cost)>> {
    let mut timers = Vec::new();
    for setup in setups {
        timers.push(Timer::new(*setup).with_context(|| format!("preparing {setup:?}"))?);
    }
    for _ in 0..rounds {
        for timer in &mut timers {
            timer.sample().with_context(|| format!("timing {:?}", timer.setup))?;
        }
    }
    Ok(timers.iter().map(|t| (t.setup, t.cost())).collect())
}

/// Times `setup` again and again for `duration` (at least one round), for
/// a profiler attached meanwhile (`perf record -a -g`); returns the cost
/// and the rounds timed. Each round also runs the frame rewrite alone and,
/// for new flows, empties the half-open table from user space (a syscall
/// per entry, through the kernel's LRU code too): a profile is to be read
/// for the call chains under the program, `bpf_prog_*_bench_forward`.
pub fn hold(setup: Setup, duration: Duration) -> anyhow::Result<(Cost, u32)> {
    let mut timer = Timer::new(setup).with_context(|| format!("preparing {setup:?}"))?;
    let started = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || started.elapsed() < duration {
        timer.sample().with_context(|| format!("timing {setup:?}"))?;
        rounds += 1;
    }
    Ok((timer.cost(), rounds))
}
