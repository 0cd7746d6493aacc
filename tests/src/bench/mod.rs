//! `cargo xtask bench`: the forwarder against the alternatives, in one run.
//!
//! Four parts, each in network namespaces of its own: per-packet program
//! cost and its scaling ([`cost`]), control-plane timings ([`control`]),
//! packet rates through a generator / system-under-test / sink rig
//! ([`rig`], [`pps`]), and short HTTP requests through each path
//! ([`http`]). [`report`] writes the results.

pub mod chart;
pub mod churn;
pub mod control;
pub mod cost;
pub mod http;
pub mod pps;
pub mod report;
pub mod rig;

use std::{path::PathBuf, time::Duration};

use self::{
    cost::{Segment, Setup},
    http::{HttpBench, HttpPath},
    pps::Case,
    report::{CostRow, HttpRow, RateRow, Report, ScaleRow},
    rig::Rig,
};

/// How long and how often to measure.
#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    /// Parts to run (all when empty): `cost`, `control`, `pps`, `http`, `churn`.
    pub only: Vec<String>,
    /// Where the report goes.
    pub out: PathBuf,
}

/// The knobs `Config::quick` turns.
struct Effort {
    cost_rounds: u32,
    established_repeat: u32,
    new_flow_repeat: u32,
    control_rounds: u32,
    pps_rounds: u32,
    pps_warmup: Duration,
    pps_duration: Duration,
    http_rounds: u32,
    http_duration: Duration,
    /// Requests of the fixed-rate latency run per path.
    paced_requests: u32,
    /// How long each new-connection-rate run lasts.
    churn_duration: Duration,
}

impl Config {
    fn effort(&self) -> Effort {
        if self.quick {
            Effort {
                cost_rounds: 5,
                established_repeat: 200_000,
                new_flow_repeat: 10_000,
                control_rounds: 1,
                pps_rounds: 1,
                pps_warmup: Duration::from_millis(200),
                pps_duration: Duration::from_secs(1),
                http_rounds: 1,
                http_duration: Duration::from_secs(2),
                paced_requests: 500,
                churn_duration: Duration::from_secs(3),
            }
        } else {
            Effort {
                cost_rounds: 15,
                established_repeat: 1_000_000,
                new_flow_repeat: NEW_FLOW_REPEAT,
                control_rounds: 5,
                pps_rounds: 5,
                pps_warmup: Duration::from_millis(300),
                pps_duration: Duration::from_secs(2),
                http_rounds: 3,
                http_duration: Duration::from_secs(5),
                paced_requests: 2_500,
                churn_duration: Duration::from_secs(60),
            }
        }
    }
}

/// The median of `values` (the upper one of an even count); NaN if none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// An nginx configuration with one stream proxy, `server` proxying to the
/// upstream `backends` made of `servers`; `name` names its pid and log files.
fn nginx_stream_conf(dir: &std::path::Path, name: &str, servers: &str, server: &str) -> String {
    let dir = dir.display();
    format!(
        r#"load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes auto;
pid {dir}/{name}.pid;
error_log {dir}/{name}.log crit;
events {{ worker_connections 8192; }}
stream {{
    upstream backends {{ {servers} }}
    server {{ {server} }}
}}
"#
    )
}

/// Flows of the established-flow cost rows, and of the service and backend
/// scaling rows (at least one per service).
const COST_FLOWS: u32 = 1_000;
const SCALE_FLOWS: u32 = 10_000;
/// Backends of the flow-scaling rows: one SNAT address has 31,744 ports
/// per backend, so a million connections need at least 32 backends.
const FLOW_SCALE_BACKENDS: u32 = 64;

/// The parts a run may be limited to.
pub const PARTS: [&str; 5] = ["cost", "control", "pps", "http", "churn"];

/// New connections per second of the churn part: above what a 10 s hold
/// of every closed connection's port allowed (31,744 / 10 s).
const CHURN_RATE: u32 = 4_000;

/// Packets per timed run of the full benchmark's new-flow rows.
const NEW_FLOW_REPEAT: u32 = 20_000;

/// `bench --hold MODE`: the new-flow cost row of `mode` ("snat" or
/// "preserve": one service, two backends, every packet the SYN of a new
/// connection) timed again and again for `duration`, for a profiler to
/// attach to; prints its cost. The report's rows say what a new flow
/// costs; a profile of this says where the time goes (see
/// [`cost::hold`] for what else runs meanwhile).
pub fn hold_new_flow(mode: &str, duration: Duration) -> anyhow::Result<()> {
    let mode = match mode {
        "snat" => "snat",
        "preserve" => "preserve",
        other => anyhow::bail!("unknown mode {other:?}; modes: snat, preserve"),
    };
    let setup =
        Setup { mode, services: 1, backends: 2, flows: 0, segment: Segment::Syn, repeat: NEW_FLOW_REPEAT };
    eprintln!("bench: timing {mode} new flows for {duration:?}; the program is `bench_forward`");
    let (cost, rounds) = cost::hold(setup, duration)?;
    println!("{mode}, new flow (SYN): {:.0} ns per packet (median of {rounds} rounds)", cost.ns);
    Ok(())
}

/// Runs every part (or those `config.only` names) and returns the report.
pub fn run(config: &Config) -> anyhow::Result<Report> {
    let effort = config.effort();
    let mut report = Report::new(config.quick)?;
    let wanted = |part: &str| config.only.is_empty() || config.only.iter().any(|p| p == part);
    if wanted("cost") {
        costs(&effort, &mut report)?;
    }
    if wanted("control") {
        eprintln!("bench: control plane");
        report.control = Some(control::measure(effort.control_rounds)?);
    }
    if wanted("pps") {
        packet_rates(&effort, &mut report)?;
    }
    if wanted("http") {
        http_rates(&effort, &mut report)?;
    }
    if wanted("churn") {
        eprintln!("bench: new connections at {CHURN_RATE}/s to one node (snat)");
        for closer in churn::Closer::ALL {
            let row = churn::measure(closer, CHURN_RATE, effort.churn_duration)?;
            eprintln!(
                "  {:<40} {} attempted, {} failed, {:.0}/s made, p50 {:.2} ms, p99 {:.2} ms, {} over 1 s, drop_snat_exhausted {}",
                row.label,
                row.attempted,
                row.failed,
                row.achieved,
                row.p50_ms,
                row.p99_ms,
                row.over_a_second,
                row.snat_exhausted
            );
            report.churn.push(row);
        }
    }
    report.evaluate();
    Ok(report)
}

/// The verified instructions of each datapath program, loaded as the
/// daemon loads them on this kernel.
fn verifier(report: &mut Report) -> anyhow::Result<()> {
    use forwarder::kernel::{Capacity, Kernel};
    use forwarder_common::maps::programs;
    let mut kernel = Kernel::load(Capacity::default(), aya_log::Level::Warn, None)?;
    for name in [programs::XDP, programs::TC, programs::TC_ALL] {
        let program =
            kernel.object_mut().program(name).ok_or_else(|| anyhow::anyhow!("no program {name}"))?;
        let verified_insns = program.info()?.verified_instruction_count().unwrap_or(0);
        report.verifier.push(report::VerifierRow { program: name.to_owned(), verified_insns });
    }
    Ok(())
}

fn costs(effort: &Effort, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: per-packet cost (BPF_PROG_TEST_RUN)");
    verifier(report)?;
    let established = |mode, services, backends, flows| Setup {
        mode,
        services,
        backends,
        flows,
        segment: Segment::Ack,
        repeat: effort.established_repeat.max(flows),
    };
    let new_flow = |mode, services, backends| Setup {
        mode,
        services,
        backends,
        flows: 0,
        segment: Segment::Syn,
        repeat: effort.new_flow_repeat,
    };
    let lone_ack = |mode| Setup { segment: Segment::Ack, ..new_flow(mode, 1, 2) };
    let linux_syn = |mode| Setup { segment: Segment::LinuxSyn, ..new_flow(mode, 1, 2) };
    let answer = Setup {
        segment: Segment::Answer,
        repeat: effort.new_flow_repeat / cost::ANSWER_TABLE_FACTOR,
        ..new_flow("preserve", 1, 1)
    };
    let headline = [
        ("snat, established", established("snat", 1, 2, COST_FLOWS)),
        ("preserve, established", established("preserve", 1, 2, COST_FLOWS)),
        ("snat, new flow (SYN)", new_flow("snat", 1, 2)),
        ("preserve, new flow (SYN)", new_flow("preserve", 1, 2)),
        ("snat, new flow (SYN with Linux's options)", linux_syn("snat")),
        ("preserve, new flow (SYN with Linux's options)", linux_syn("preserve")),
        ("preserve, the node's SYN-ACK to a new flow (makes its connection; one backend)", answer),
        ("snat, new flow from an ACK of no known connection", lone_ack("snat")),
        ("preserve, new flow from an ACK of no known connection", lone_ack("preserve")),
    ];
    let scale_points: Vec<(&str, String, Setup, Option<Setup>)> = vec![
        ("services", "1".into(), established("snat", 1, 2, SCALE_FLOWS), Some(new_flow("snat", 1, 2))),
        (
            "services",
            "1,000".into(),
            established("snat", 1_000, 2, SCALE_FLOWS),
            Some(new_flow("snat", 1_000, 2)),
        ),
        (
            "services",
            "10,000".into(),
            established("snat", 10_000, 2, SCALE_FLOWS),
            Some(new_flow("snat", 10_000, 2)),
        ),
        ("backends", "2".into(), established("snat", 1, 2, SCALE_FLOWS), Some(new_flow("snat", 1, 2))),
        (
            "backends",
            "1,000".into(),
            established("snat", 1, 1_000, SCALE_FLOWS),
            Some(new_flow("snat", 1, 1_000)),
        ),
        ("flows", "1,000".into(), established("snat", 1, FLOW_SCALE_BACKENDS, 1_000), None),
        ("flows", "1,000,000".into(), established("snat", 1, FLOW_SCALE_BACKENDS, 1_000_000), None),
    ];
    let mut setups: Vec<Setup> = headline.iter().map(|(_, s)| *s).collect();
    for (_, _, est, new) in &scale_points {
        setups.push(*est);
        setups.extend(*new);
    }
    let mut unique: Vec<Setup> = Vec::new();
    for setup in setups {
        if !unique.contains(&setup) {
            unique.push(setup);
        }
    }
    let costs = cost::time_all(&unique, effort.cost_rounds)?;
    let cost_of = |setup: &Setup| costs.iter().find(|(s, _)| s == setup).map(|(_, c)| *c).expect("timed");
    for (case, setup) in headline {
        let cost = cost_of(&setup);
        report.costs.push(CostRow { case: case.to_owned(), ns: cost.ns, lookup_ns: cost.lookup_ns });
    }
    for (axis, value, est, new) in scale_points {
        let cost = cost_of(&est);
        report.scaling.push(ScaleRow {
            axis: axis.to_owned(),
            value,
            established_ns: cost.ns,
            lookup_ns: cost.lookup_ns,
            after_lookup_ns: cost.after_lookup_ns,
            new_flow_ns: new.map(|n| cost_of(&n).ns),
        });
    }
    Ok(())
}

fn packet_rates(effort: &Effort, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: packet rates");
    let dir = tempfile::Builder::new().prefix("forwarder-bench").tempdir()?;
    let mut rig = Rig::new()?;
    let mut rates: Vec<(Case, Vec<f64>)> = Case::ALL.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..effort.pps_rounds {
        for (case, runs) in &mut rates {
            let pps = pps::measure(&mut rig, *case, effort.pps_warmup, effort.pps_duration, dir.path())?;
            eprintln!("  round {}: {:<42} {:>7.3} Mpps", round + 1, case.label(), pps / 1e6);
            runs.push(pps);
        }
    }
    report.generator = Some(rig.generator_kind.label().to_owned());
    drop(rig);
    report.packet_rates = rates
        .into_iter()
        .map(|(case, runs)| RateRow {
            case,
            label: case.label().to_owned(),
            mpps: median(runs.clone()) / 1e6,
            runs,
        })
        .collect();
    Ok(())
}

fn http_rates(effort: &Effort, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: HTTP through each path (wrk, one connection per request)");
    let mut http: Vec<(HttpPath, Vec<(http::WrkRun, http::Paced)>)> =
        HttpPath::ALL.iter().map(|p| (*p, Vec::new())).collect();
    for round in 0..effort.http_rounds {
        for (path, runs) in &mut http {
            let (run, paced) = HttpBench::measure(*path, effort.http_duration, effort.paced_requests)?;
            eprintln!(
                "  round {}: {:<40} {:>8.0} conn/s  p50 {:.2} ms  p99 {:.2} ms  errors {}; at {}/s: p50 {:.3} ms  p99 {:.3} ms  failed {}",
                round + 1,
                path.label(),
                run.per_second,
                run.p50_ms,
                run.p99_ms,
                run.errors,
                paced.rate,
                paced.p50_ms,
                paced.p99_ms,
                paced.failed
            );
            runs.push((run, paced));
        }
    }
    report.http = http.into_iter().map(|(path, runs)| HttpRow::new(path, runs)).collect();
    Ok(())
}

/// Moves every connection of the half-open table to the established one,
/// as the nodes' answers would: the benches' traffic is one-way (the
/// generator never answers), and their established cases time the path of
/// established connections. A connection whose slot a colliding one took
/// (the benches keep thousands half-open at once, which real traffic does
/// not) gets its original entry built from its reply entry, so that no
/// flow of an established case stays a new flow on every packet. Returns
/// how many entries moved.
pub fn establish_all(maps: &mut forwarder::kernel::Maps) -> anyhow::Result<usize> {
    use forwarder_common::{
        conntrack::{FLAG_SNAT, SEEN_PACKET},
        origin::Origin,
    };
    let secret = maps.secret.get(&0, 0)?;
    let conns = forwarder::conntrack::scan_half_open(&maps.half_open, &maps.origins, secret);
    let mut moved = 0;
    for conn in conns {
        let proto = conn.key.proto;
        let (reply_key, reply, original) = match conn.reply {
            Some(reply) if conn.from_slot => (conn.original.peer_key(proto), reply, conn.original),
            _ => {
                let (reply_key, reply) = (conn.key, conn.original);
                // SNAT rewrites the reply's destination, preserve its source.
                let flags = if reply.new_dst == reply_key.dst { 0 } else { FLAG_SNAT };
                let slot =
                    Origin::new(reply.peer_key(proto), reply_key, flags, SEEN_PACKET, reply.last_seen_ns);
                (reply_key, reply, slot.entry(&reply))
            }
        };
        maps.flows.insert(reply_key, reply, 0)?;
        maps.flows.insert(reply.peer_key(proto), original, 0)?;
        moved += 2;
        maps.half_open.remove(&reply_key)?;
    }
    moved += establish_pending(maps)?;
    Ok(moved)
}

/// Moves the SYNs and datagrams forwarded without state (preserve mode)
/// to the established table, as their node's answer and the client's
/// next packet would: their pending slots become both entries, counted
/// against their service and backend as the datapath counts them.
fn establish_pending(maps: &mut forwarder::kernel::Maps) -> anyhow::Result<usize> {
    use forwarder_common::{
        conntrack::{FLAG_PENDING, FLAG_REPLY},
        maps::{FlowEntry, ServiceKey},
    };
    let slots: Vec<_> =
        maps.origins.iter().filter_map(Result::ok).filter(|slot| slot.awaits(&slot.reply)).collect();
    let backends: Vec<_> = maps.backends.iter().filter_map(Result::ok).collect();
    let mut moved = 0;
    for mut slot in slots {
        let (key, reply_key) = (slot.key, slot.reply);
        if maps.flows.get(&reply_key, 0).is_ok() || maps.half_open.get(&reply_key, 0).is_ok() {
            continue;
        }
        let service_key = ServiceKey { vip: key.dst, port: key.dport, proto: key.proto, _pad: 0 };
        let Ok(service) = maps.services.get(&service_key, 0) else { continue };
        let Some(backend) = backends.iter().find_map(|(at, backend)| {
            (at.service_id == service.id && backend.addr == reply_key.src && backend.port == reply_key.sport)
                .then_some(backend.id)
        }) else {
            continue;
        };
        let reply = FlowEntry::rewriting(
            &reply_key,
            &key.reversed(),
            service.id,
            backend,
            FLAG_REPLY,
            slot.last_seen_ns,
        );
        slot.flags &= !FLAG_PENDING;
        maps.flows.insert(reply_key, reply, 0)?;
        maps.flows.insert(key, slot.entry(&reply), 0)?;
        moved += 2;
    }
    Ok(moved)
}
