//! The packet-rate rig: a generator, the system under test, a sink.
//!
//! ```text
//!  gen: g0 10.1.0.2 ── f0 10.1.0.1 [fwd: what is measured] f1 10.2.0.1 ── s0 10.2.0.11, .12 :sink
//! ```
//!
//! The generator is `BPF_PROG_TEST_RUN` in live-frames mode on g0: each
//! run writes a 60-byte UDP frame for VIP 10.9.0.1:53 (a source address
//! and port per flow) and transmits it with XDP_TX, so it arrives on f0
//! like traffic from a wire. Where the kernel refuses live frames (seen
//! here: EPERM on a 6.18 kernel), a TC program takes its place: each run
//! writes the frame and `bpf_clone_redirect`s a copy out of g0, an skb
//! rather than a page, so every case pays more for generation (and the
//! report says which generator ran). The sink counts what reaches s0 with an
//! XDP_DROP program. Everything the kernel does for a frame happens on the
//! generating CPU, in order: generate, then the system under test, then
//! the sink, so every case pays the same generation cost (the XDP_DROP
//! case measures it). Receiving on another CPU (threaded NAPI) was tried:
//! the cross-CPU hand-off cost more per packet than it removed, here.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader, TestRun as _, TestRunAttrs, TestRunOptions,
    maps::{Array, PerCpuArray},
    programs::{SchedClassifier, Xdp, XdpMode},
};
use etherparse::PacketBuilder;
use forwarder::kernel::BENCH_OBJECT;
use forwarder_common::bench::{FRAME_LEN, GenConfig, TEMPLATE_LEN};

use crate::netns::{Netns, unique_name};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 2, 0, 11), Ipv4Addr::new(10, 2, 0, 12)];
pub const FWD_LAN: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
/// First source address of generated flows (then one per 32768 flows).
const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);

/// Interface facts of the rig.
pub struct Links {
    pub g0_mac: [u8; 6],
    pub f0_mac: [u8; 6],
    pub f1_mac: [u8; 6],
    pub s0_mac: [u8; 6],
    pub f1_index: u32,
}

pub struct Rig {
    pub generator_ns: Netns,
    pub fwd: Netns,
    pub sink: Netns,
    pub links: Links,
    /// The bench object in the generator's namespace (for test runs).
    generator: Ebpf,
    /// The bench object in the sink's namespace, its drop program on s0.
    sink_object: Ebpf,
    /// How frames are made; live frames until the kernel refuses them.
    pub generator_kind: GeneratorKind,
}

/// How the rig generates frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorKind {
    /// XDP in live-frames mode: XDP_TX of a page.
    LiveFrames,
    /// TC: a cloned skb sent out by `bpf_clone_redirect`.
    CloneRedirect,
}

impl GeneratorKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::LiveFrames => "XDP live frames",
            Self::CloneRedirect => "TC bpf_clone_redirect (kernel refused live frames)",
        }
    }
}

fn mac(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let text = ns.exec("cat", &format!("/sys/class/net/{iface}/address"))?;
    let mut bytes = [0u8; 6];
    for (byte, part) in bytes.iter_mut().zip(text.trim().split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(bytes)
}

/// Loads the bench object (in the calling thread's namespace).
pub fn load_bench() -> anyhow::Result<Ebpf> {
    Ok(EbpfLoader::new().load(BENCH_OBJECT)?)
}

/// The XDP program `name` of a loaded bench object, loaded.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    let program: &mut Xdp = ebpf.program_mut(name).context("no such program")?.try_into()?;
    if program.fd().is_err() {
        program.load()?;
    }
    Ok(program)
}

/// Packets counted by a bench object's drop program, all CPUs.
pub fn counted(ebpf: &Ebpf) -> anyhow::Result<u64> {
    let counts = PerCpuArray::<_, u64>::try_from(ebpf.map("COUNTS").context("COUNTS")?)?;
    Ok(counts.get(&0, 0)?.iter().sum())
}

impl Rig {
    pub fn new() -> anyhow::Result<Self> {
        let generator_ns = Netns::create(unique_name("fwb", "g"))?;
        let fwd = Netns::create(unique_name("fwb", "f"))?;
        let sink = Netns::create(unique_name("fwb", "s"))?;
        crate::netns::run(std::process::Command::new("ip").args([
            "link",
            "add",
            "g0",
            "netns",
            generator_ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            "f0",
            "netns",
            fwd.name(),
        ]))?;
        crate::netns::run(std::process::Command::new("ip").args([
            "link",
            "add",
            "f1",
            "netns",
            fwd.name(),
            "type",
            "veth",
            "peer",
            "name",
            "s0",
            "netns",
            sink.name(),
        ]))?;
        generator_ns.ip("addr add 10.1.0.2/24 dev g0")?;
        generator_ns.ip("link set g0 up")?;
        fwd.ip("addr add 10.1.0.1/24 dev f0")?;
        fwd.ip(&format!("addr add {FWD_LAN}/24 dev f1"))?;
        fwd.ip("link set f0 up")?;
        fwd.ip("link set f1 up")?;
        sink.ip("addr add 10.2.0.11/24 dev s0")?;
        sink.ip("addr add 10.2.0.12/24 dev s0")?;
        sink.ip("link set s0 up")?;
        fwd.exec("sysctl", "-qw net.ipv4.conf.all.forwarding=1")?;
        let links = Links {
            g0_mac: mac(&generator_ns, "g0")?,
            f0_mac: mac(&fwd, "f0")?,
            f1_mac: mac(&fwd, "f1")?,
            s0_mac: mac(&sink, "s0")?,
            f1_index: fwd.exec("cat", "/sys/class/net/f1/ifindex")?.trim().parse()?,
        };
        let fmt = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        for backend in BACKENDS {
            fwd.ip(&format!("neigh replace {backend} lladdr {} dev f1 nud permanent", fmt(links.s0_mac)))?;
        }
        fwd.ip(&format!("neigh replace 10.1.0.2 lladdr {} dev f0 nud permanent", fmt(links.g0_mac)))?;
        let sink_object = sink.enter(|| -> anyhow::Result<Ebpf> {
            let mut ebpf = load_bench()?;
            program(&mut ebpf, "bench_drop")?.attach("s0", XdpMode::Driver)?;
            Ok(ebpf)
        })?;
        let generator = generator_ns.enter(load_bench)?;
        Ok(Self {
            generator_ns,
            fwd,
            sink,
            links,
            generator,
            sink_object,
            generator_kind: GeneratorKind::LiveFrames,
        })
    }

    /// Packets the sink has counted.
    pub fn sunk(&self) -> anyhow::Result<u64> {
        counted(&self.sink_object)
    }

    /// Sets the generator up to send `flows` distinct flows in turn (0: a
    /// new flow on every packet).
    pub fn set_flows(&mut self, flows: u32) -> anyhow::Result<()> {
        let frame = self.frame()?;
        let mut config = GenConfig { frame: [0; TEMPLATE_LEN], flows, vips: 1, answers: 0 };
        config.frame[..FRAME_LEN].copy_from_slice(&frame);
        let mut map = Array::<_, GenConfig>::try_from(self.generator.map_mut("GEN").context("GEN")?)?;
        map.set(0, config, 0)?;
        Ok(())
    }

    /// Flow 0's frame, checksums valid.
    fn frame(&self) -> anyhow::Result<Vec<u8>> {
        let payload = [0u8; FRAME_LEN - 14 - 20 - 8];
        let mut frame = Vec::with_capacity(FRAME_LEN);
        PacketBuilder::ethernet2(self.links.g0_mac, self.links.f0_mac)
            .ipv4(SOURCE.octets(), VIP.octets(), 64)
            .udp(forwarder_common::bench::flow_source(0).0, 53)
            .write(&mut frame, &payload)?;
        anyhow::ensure!(frame.len() == FRAME_LEN, "frame of {} bytes", frame.len());
        Ok(frame)
    }

    /// Generates for `duration` from one CPU; the packets offered.
    pub fn generate(&mut self, duration: Duration) -> anyhow::Result<u64> {
        if self.generator_kind == GeneratorKind::LiveFrames {
            match self.generate_live(duration) {
                Err(e) if refused(&e) => {
                    eprintln!("bench: the kernel refuses live frames ({e:#}); generating with TC clones");
                    self.generator_kind = GeneratorKind::CloneRedirect;
                }
                other => return other,
            }
        }
        self.generate_clones(duration)
    }

    fn g0_index(&self) -> anyhow::Result<u32> {
        Ok(self.generator_ns.exec("cat", "/sys/class/net/g0/ifindex")?.trim().parse()?)
    }

    fn generate_live(&mut self, duration: Duration) -> anyhow::Result<u64> {
        let frame = self.frame()?;
        let g0 = self.g0_index()?;
        let program = program(&mut self.generator, "bench_gen")?;
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let ctx: Vec<u8> = [0, FRAME_LEN as u32, 0, g0, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        run_for(&self.generator_ns, duration, 1 << 18, |repeat| {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame);
            opts.ctx_in = Some(&ctx);
            opts.repeat = repeat;
            opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
            program.test_run(opts).map(drop)
        })
    }

    fn generate_clones(&mut self, duration: Duration) -> anyhow::Result<u64> {
        let frame = self.frame()?;
        let g0 = self.g0_index()?;
        let program: &mut SchedClassifier =
            self.generator.program_mut("bench_gen_tc").context("no bench_gen_tc")?.try_into()?;
        if program.fd().is_err() {
            program.load()?;
        }
        // struct __sk_buff up to `ifindex` (offset 40): the device the
        // run's skb belongs to, which the program sends its clone out of.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&g0.to_ne_bytes());
        run_for(&self.generator_ns, duration, 1 << 16, |repeat| {
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(&frame);
            opts.ctx_in = Some(&ctx);
            opts.repeat = repeat;
            program.test_run(opts).map(drop)
        })
    }
}

/// Runs `test_run` (with `repeat` runs each time) in `ns`, on CPU 0, until
/// `duration` has passed; the runs made.
fn run_for(
    ns: &Netns,
    duration: Duration,
    repeat: u32,
    mut test_run: impl FnMut(u32) -> Result<(), aya::programs::ProgramError> + Send,
) -> anyhow::Result<u64> {
    ns.enter(|| -> anyhow::Result<u64> {
        pin_to_cpu(0);
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            test_run(repeat)?;
            sent += u64::from(repeat);
        }
        Ok(sent)
    })
}

/// Whether a test run failed because the kernel does not allow it (rather
/// than because of the run).
fn refused(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| matches!(code, libc::EPERM | libc::EOPNOTSUPP | libc::EINVAL))
    })
}

/// Keeps the calling thread on one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}
