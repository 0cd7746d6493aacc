//! The benchmark's results: what ran where, every figure, the targets, and
//! how they are written (markdown, JSON, a PNG chart). The types and the
//! machine description are here; `markdown` writes the report.

mod markdown;

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{
    control::{self, ControlPlane},
    http::{self, HttpPath, Paced, WrkRun},
    median,
    pps::{self, Case},
};

/// The machine and software the run used.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    /// Versions of the tools compared with.
    pub tools: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateRow {
    pub case: Case,
    pub label: String,
    /// Median packets per second, in millions.
    pub mpps: f64,
    /// Every run, packets per second.
    pub runs: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpRow {
    pub path: HttpPath,
    pub label: String,
    /// Medians over the runs.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Summed over the runs.
    pub errors: u64,
    pub requests: u64,
    pub runs: Vec<WrkRun>,
    /// Latency at a fixed rate (medians over the runs); absent from
    /// reports older than it.
    #[serde(default)]
    pub paced_p50_ms: f64,
    #[serde(default)]
    pub paced_p99_ms: f64,
    #[serde(default)]
    pub paced_failed: u64,
    #[serde(default)]
    pub paced: Vec<Paced>,
}

impl HttpRow {
    #[must_use]
    pub fn new(path: HttpPath, runs: Vec<(WrkRun, Paced)>) -> Self {
        let (runs, paced): (Vec<WrkRun>, Vec<Paced>) = runs.into_iter().unzip();
        Self {
            path,
            label: path.label().to_owned(),
            per_second: median(runs.iter().map(|r| r.per_second)),
            p50_ms: median(runs.iter().map(|r| r.p50_ms)),
            p99_ms: median(runs.iter().map(|r| r.p99_ms)),
            errors: runs.iter().map(|r| r.errors).sum(),
            requests: runs.iter().map(|r| r.requests).sum(),
            runs,
            paced_p50_ms: median(paced.iter().map(|r| r.p50_ms)),
            paced_p99_ms: median(paced.iter().map(|r| r.p99_ms)),
            paced_failed: paced.iter().map(|r| r.failed).sum(),
            paced,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CostRow {
    pub case: String,
    pub ns: f64,
    pub lookup_ns: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRow {
    pub axis: String,
    pub value: String,
    pub established_ns: f64,
    /// Parsing and the flow lookup alone.
    pub lookup_ns: Option<f64>,
    /// The rest of the program (median of each round's difference).
    pub after_lookup_ns: Option<f64>,
    pub new_flow_ns: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub goal: String,
    pub holds: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub quick: bool,
    pub machine: Machine,
    pub targets: Vec<Target>,
    pub packet_rates: Vec<RateRow>,
    pub http: Vec<HttpRow>,
    pub costs: Vec<CostRow>,
    pub scaling: Vec<ScaleRow>,
    pub control: Option<ControlPlane>,
    /// Absent from reports older than it.
    #[serde(default)]
    pub churn: Vec<super::churn::ChurnRow>,
    /// Absent from reports older than it.
    #[serde(default)]
    pub verifier: Vec<VerifierRow>,
    /// Which frame generator the packet rates came from. Absent from
    /// reports older than it (live frames, then the only one).
    #[serde(default)]
    pub generator: Option<String>,
}

/// How much of the verifier's budget (a million instructions walked) a
/// datapath program takes on this kernel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifierRow {
    pub program: String,
    pub verified_insns: u32,
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program).args(args).output().map_or_else(
        |_| "not installed".to_owned(),
        |out| {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned()
        },
    )
}

fn machine() -> anyhow::Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
        .unwrap_or("unknown")
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let tools = vec![
        ("nftables".to_owned(), output("nft", &["--version"])),
        ("nginx".to_owned(), output("nginx", &["-v"])),
        ("HAProxy".to_owned(), output("haproxy", &["-v"])),
        ("wrk".to_owned(), output("wrk", &["-v"])),
    ];
    Ok(Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: kib / 1024.0 / 1024.0,
        kernel: output("uname", &["-r"]),
        os,
        tools,
    })
}
