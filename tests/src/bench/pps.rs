//! Packet rates: each system under test in the rig's forwarder namespace,
//! fed by the generator, counted at the sink.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, DevMap},
    programs::XdpMode,
};
use forwarder::{
    config::ServiceFile,
    kernel::{self, Capacity, Kernel, Plan},
    state::ServiceTable,
};
use forwarder_common::bench::BounceConfig;
use serde::{Deserialize, Serialize};

use super::rig::{BACKENDS, FWD_LAN, Rig, VIP, counted, load_bench, program};
use crate::netns::Process;

/// How the packet rates are measured, for the report.
pub const METHOD: &str = "Packet rates: three network namespaces, generator -> forwarder -> sink, \
joined by veth pairs. The generator is `BPF_PROG_TEST_RUN` in live-frames mode with an XDP \
program that writes a fresh 60-byte UDP frame (a new source port per flow, 1,024 flows for \
established cases, a never-seen flow on every packet for new-flow cases) and sends it with \
XDP_TX (where the kernel refuses live frames, a TC program run the same way writes the frame \
and sends a clone of it with `bpf_clone_redirect`; the report names the generator that ran); \
the system under test runs on the forwarder's interfaces; an XDP program on the \
sink counts what arrives. The generating CPU carries each frame through the whole chain, \
so every case pays the same generation and veth cost and the XDP_DROP case is the \
ceiling of the setup. The ratios between cases are the result; absolute rates belong to \
this machine. nftables and nginx see the frames through the kernel stack (GRO on the \
receiving veth, which XDP-transmitted frames need to be accepted).";

/// Established-flow cases cycle through this many flows.
pub const FLOWS: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Case {
    /// XDP_DROP on the forwarder's ingress: the most any XDP program can do.
    XdpDrop,
    /// Swap MACs and redirect: the most any XDP forwarder can do.
    TrivialForwarder,
    ForwarderSnatEstablished,
    /// The same datapath attached at TC (tcx) instead of XDP.
    ForwarderSnatEstablishedTc,
    ForwarderPreserveEstablished,
    ForwarderSnatNewFlows,
    ForwarderPreserveNewFlows,
    /// nftables DNAT + masquerade (what kube-proxy does in the kernel).
    NftablesDnat,
    /// nginx stream proxy, UDP.
    NginxUdp,
}

impl Case {
    pub const ALL: [Case; 9] = [
        Case::XdpDrop,
        Case::TrivialForwarder,
        Case::ForwarderSnatEstablished,
        Case::ForwarderSnatEstablishedTc,
        Case::ForwarderPreserveEstablished,
        Case::ForwarderSnatNewFlows,
        Case::ForwarderPreserveNewFlows,
        Case::NftablesDnat,
        Case::NginxUdp,
    ];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Case::XdpDrop => "XDP_DROP (ceiling)",
            Case::TrivialForwarder => "trivial XDP forwarder (ceiling)",
            Case::ForwarderSnatEstablished => "forwarder snat, established",
            Case::ForwarderSnatEstablishedTc => "forwarder snat, established, TC attach",
            Case::ForwarderPreserveEstablished => "forwarder preserve, established",
            Case::ForwarderSnatNewFlows => "forwarder snat, new flow per packet",
            Case::ForwarderPreserveNewFlows => "forwarder preserve, new flow per packet",
            Case::NftablesDnat => "nftables DNAT + masquerade",
            Case::NginxUdp => "nginx stream (UDP)",
        }
    }

    fn flows(self) -> u32 {
        match self {
            Case::ForwarderSnatNewFlows | Case::ForwarderPreserveNewFlows => 0,
            _ => FLOWS,
        }
    }
}

/// What is installed for a case; removed on drop.
enum Installed {
    Bench(Ebpf),
    Forwarder(Box<Kernel>),
    Nftables,
    Nginx(Process),
}

fn services(mode: &str) -> String {
    format!(
        "snat_ip = \"{FWD_LAN}\"\n[[service]]\nname = \"bench\"\nvip = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\n\
         mode = \"{mode}\"\nbackends = [\"{}:30053\", \"{}:30053\"]\n",
        BACKENDS[0], BACKENDS[1]
    )
}

fn install(rig: &Rig, case: Case, dir: &Path) -> anyhow::Result<Installed> {
    let fwd = &rig.fwd;
    match case {
        Case::XdpDrop => fwd.enter(|| {
            let mut ebpf = load_bench()?;
            program(&mut ebpf, "bench_drop")?.attach("f0", XdpMode::Driver)?;
            Ok(Installed::Bench(ebpf))
        }),
        Case::TrivialForwarder => {
            let config = BounceConfig {
                src_mac: rig.links.f1_mac,
                dst_mac: rig.links.s0_mac,
                ifindex: rig.links.f1_index,
            };
            let f1 = rig.links.f1_index;
            fwd.enter(|| {
                let mut ebpf = load_bench()?;
                Array::<_, BounceConfig>::try_from(ebpf.map_mut("BOUNCE").context("BOUNCE")?)?
                    .set(0, config, 0)?;
                DevMap::try_from(ebpf.map_mut("BOUNCE_TO").context("BOUNCE_TO")?)?.set(0, f1, None, 0)?;
                program(&mut ebpf, "bench_bounce")?.attach("f0", XdpMode::Driver)?;
                Ok(Installed::Bench(ebpf))
            })
        }
        Case::ForwarderSnatEstablished
        | Case::ForwarderSnatEstablishedTc
        | Case::ForwarderPreserveEstablished
        | Case::ForwarderSnatNewFlows
        | Case::ForwarderPreserveNewFlows => {
            let mode = match case {
                Case::ForwarderSnatEstablished
                | Case::ForwarderSnatEstablishedTc
                | Case::ForwarderSnatNewFlows => "snat",
                _ => "preserve",
            };
            let plan = if case == Case::ForwarderSnatEstablishedTc {
                // No XDP on f0: the generator's XDP frames need GRO to be received.
                fwd.exec("ethtool", "-K f0 gro on")?;
                Plan::Tc
            } else {
                Plan::Xdp(kernel::XdpMode::Native)
            };
            // New-flow cases: a (half-open) table of 32,768 connections,
            // below the SNAT port space of two backends (2 x 31,744), so the
            // table is full and every new flow evicts the least recently
            // used one. Its LRU lists are per CPU and the generator's CPU
            // carries every frame, so that CPU's share is that size.
            let max_flow_entries = if case.flows() == 0 { 1 << 16 } else { 1 << 21 };
            let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)? as u32;
            fwd.enter(|| {
                let capacity = Capacity {
                    max_flow_entries,
                    // One entry per half-open connection.
                    max_half_open_entries: max_flow_entries / 2 * cpus,
                    ..Capacity::default()
                };
                let mut kernel = Kernel::load(capacity, aya_log::Level::Warn, None)?;
                let file = ServiceFile::parse(Path::new("bench.toml"), &services(mode))?;
                let mut table = ServiceTable::new(capacity, Vec::new())?;
                table.apply(&file, &mut kernel.maps)?;
                kernel.attach("f0", plan)?;
                kernel.attach("f1", plan)?;
                Ok(Installed::Forwarder(Box::new(kernel)))
            })
        }
        Case::NftablesDnat => {
            // No XDP on f0: the generator's XDP frames need GRO to be received.
            fwd.exec("ethtool", "-K f0 gro on")?;
            let rules = format!(
                "table ip forwarder_bench {{\n\
                   chain pre {{ type nat hook prerouting priority dstnat; \
                     ip daddr {VIP} udp dport 53 dnat ip to numgen random mod 2 map {{ 0 : {} . 30053, 1 : {} . 30053 }}; }}\n\
                   chain post {{ type nat hook postrouting priority srcnat; oifname \"f1\" masquerade; }}\n\
                 }}\n",
                BACKENDS[0], BACKENDS[1]
            );
            let path = dir.join("nftables.conf");
            std::fs::write(&path, rules)?;
            fwd.exec("nft", &format!("-f {}", path.display()))?;
            Ok(Installed::Nftables)
        }
        Case::NginxUdp => {
            fwd.exec("ethtool", "-K f0 gro on")?;
            fwd.ip(&format!("addr add {VIP}/32 dev f0"))?;
            let conf = dir.join("nginx-udp.conf");
            std::fs::write(&conf, nginx_udp_conf(dir))?;
            let mut cmd = fwd.command("nginx");
            cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
            let process = Process::spawn("nginx (bench)", cmd)?;
            std::thread::sleep(Duration::from_millis(500));
            Ok(Installed::Nginx(process))
        }
    }
}

fn uninstall(rig: &Rig, installed: Installed) -> anyhow::Result<()> {
    match installed {
        Installed::Bench(ebpf) => drop(ebpf),
        Installed::Forwarder(kernel) => {
            drop(kernel);
            rig.fwd.exec("ethtool", "-K f0 gro off")?;
        }
        Installed::Nftables => {
            rig.fwd.exec("nft", "delete table ip forwarder_bench")?;
            rig.fwd.exec("ethtool", "-K f0 gro off")?;
        }
        Installed::Nginx(process) => {
            process.stop()?;
            rig.fwd.ip(&format!("addr del {VIP}/32 dev f0"))?;
            rig.fwd.exec("ethtool", "-K f0 gro off")?;
        }
    }
    // Conntrack state of the kernel-stack cases must not help the next.
    let _ = rig.fwd.exec("sysctl", "-qw net.netfilter.nf_conntrack_max=262144");
    Ok(())
}

fn nginx_udp_conf(dir: &Path) -> String {
    super::nginx_stream_conf(
        dir,
        "nginx-udp",
        &format!("server {}:30053; server {}:30053;", BACKENDS[0], BACKENDS[1]),
        &format!("listen {VIP}:53 udp reuseport; proxy_pass backends; proxy_responses 0; proxy_timeout 2s;"),
    )
}

/// One measurement of a case: packets per second reaching the sink (or,
/// for XDP_DROP, dropped at the forwarder).
pub fn measure(
    rig: &mut Rig,
    case: Case,
    warmup: Duration,
    duration: Duration,
    dir: &Path,
) -> anyhow::Result<f64> {
    let mut installed = install(rig, case, dir).with_context(|| format!("setting up {}", case.label()))?;
    let result = (|| {
        rig.set_flows(case.flows())?;
        rig.generate(warmup)?;
        if case.flows() > 0
            && let Installed::Forwarder(kernel) = &mut installed
        {
            super::establish_all(&mut kernel.maps)?;
        }
        let before = count(rig, case, &installed)?;
        let start = std::time::Instant::now();
        rig.generate(duration)?;
        let elapsed = start.elapsed().as_secs_f64();
        let after = count(rig, case, &installed)?;
        Ok((after - before) as f64 / elapsed)
    })();
    uninstall(rig, installed)?;
    result
}

fn count(rig: &Rig, case: Case, installed: &Installed) -> anyhow::Result<u64> {
    match (case, installed) {
        (Case::XdpDrop, Installed::Bench(ebpf)) => counted(ebpf),
        _ => rig.sunk(),
    }
}
