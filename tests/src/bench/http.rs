//! Short HTTP requests through each path, one connection per request:
//! `wrk` in the lab's client, nginx on the lab's two nodes, and between
//! them the forwarder or one of the tools it replaces.

use std::{fmt::Write as _, net::SocketAddrV4, path::Path, time::Duration};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    lab::{Flavour, HTTP_NODEPORT, LAN_IFACE, Lab, VIP, node_addr, service_file},
    netns::Process,
};

/// Concurrent connections `wrk` keeps open.
pub const CONNECTIONS: u32 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpPath {
    /// Straight to one node's NodePort, routed by the forwarder host's
    /// kernel: no load balancer at all.
    Direct,
    ForwarderSnat,
    ForwarderPreserve,
    /// The forwarder attached at TC, in a lab whose veths keep the
    /// kernel's defaults (what `--attach auto` picks there).
    ForwarderSnatTc,
    ForwarderPreserveTc,
    /// nftables DNAT + masquerade.
    Nftables,
    /// nginx stream proxy, TCP.
    NginxTcp,
    /// HAProxy in TCP mode.
    HaproxyTcp,
}

impl HttpPath {
    pub const ALL: [HttpPath; 8] = [
        HttpPath::Direct,
        HttpPath::ForwarderSnat,
        HttpPath::ForwarderPreserve,
        HttpPath::ForwarderSnatTc,
        HttpPath::ForwarderPreserveTc,
        HttpPath::Nftables,
        HttpPath::NginxTcp,
        HttpPath::HaproxyTcp,
    ];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            HttpPath::Direct => "no load balancer (kernel routing)",
            HttpPath::ForwarderSnat => "forwarder snat (XDP)",
            HttpPath::ForwarderPreserve => "forwarder preserve (XDP)",
            HttpPath::ForwarderSnatTc => "forwarder snat (TC, default veths)",
            HttpPath::ForwarderPreserveTc => "forwarder preserve (TC, default veths)",
            HttpPath::Nftables => "nftables DNAT + masquerade",
            HttpPath::NginxTcp => "nginx stream (TCP)",
            HttpPath::HaproxyTcp => "HAProxy (TCP mode)",
        }
    }

    /// The lab it is measured in: the XDP-tuned one for all but the TC
    /// paths, as before TC existed, so that their figures compare.
    fn flavour(self) -> Flavour {
        match self {
            HttpPath::ForwarderSnatTc | HttpPath::ForwarderPreserveTc => Flavour::DefaultsTc,
            _ => Flavour::TunedXdp,
        }
    }

    fn target(self) -> SocketAddrV4 {
        match self {
            HttpPath::Direct => SocketAddrV4::new(node_addr(0), HTTP_NODEPORT),
            _ => SocketAddrV4::new(VIP, 80),
        }
    }
}

/// What `wrk` measured in one run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WrkRun {
    /// Requests per second; each on its own connection.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
    pub requests: u64,
}

/// Latency at a fixed, moderate request rate: one new connection per
/// request, each sent on a schedule rather than as soon as the last one
/// was answered, so that queueing at saturation does not hide the path's
/// own delay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Paced {
    pub rate: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: u64,
    pub requests: u64,
}

/// Requests per second of the paced run.
pub const PACED_RATE: u32 = 500;

/// A lab with its servers running, for one path's measurement: a fresh
/// one each time, so no path meets the connection state (conntrack
/// entries, the nodes' TIME_WAIT sockets) of the one before.
pub struct HttpBench {
    lab: Lab,
}

/// What is running for a path; stopped and removed by [`HttpBench::uninstall`].
enum Installed {
    Nothing,
    Process(Process),
    Nftables,
}

impl HttpBench {
    fn new(flavour: Flavour) -> anyhow::Result<Self> {
        let mut lab = Lab::with_flavour("fwh", 2, flavour)?;
        lab.start_servers()?;
        // The kernel-stack paths route and NAT on the forwarder host; the
        // client's ports are many so TIME_WAIT never runs them out.
        lab.forwarder.exec("sysctl", "-qw net.ipv4.conf.all.forwarding=1")?;
        crate::netns::run(
            lab.client.command("sysctl").args(["-qw", "net.ipv4.ip_local_port_range=1024 65000"]),
        )?;
        Ok(Self { lab })
    }

    fn install(&self, path: HttpPath) -> anyhow::Result<Installed> {
        let lab = &self.lab;
        let fwd = &lab.forwarder;
        let dir = lab.dir.path();
        let backends = [node_addr(0), node_addr(1)];
        match path {
            HttpPath::Direct => Ok(Installed::Nothing),
            HttpPath::ForwarderSnat
            | HttpPath::ForwarderPreserve
            | HttpPath::ForwarderSnatTc
            | HttpPath::ForwarderPreserveTc => {
                let mode = if matches!(path, HttpPath::ForwarderSnat | HttpPath::ForwarderSnatTc) {
                    "snat"
                } else {
                    "preserve"
                };
                let services = lab.write_services(&service_file(mode, &[0, 1], ""))?;
                Ok(Installed::Process(lab.start_forwarder(&services, &[])?))
            }
            HttpPath::Nftables => {
                let rules = format!(
                    "table ip forwarder_bench {{\n\
                       chain pre {{ type nat hook prerouting priority dstnat; \
                         ip daddr {VIP} tcp dport 80 dnat ip to numgen random mod 2 \
                         map {{ 0 : {} . {HTTP_NODEPORT}, 1 : {} . {HTTP_NODEPORT} }}; }}\n\
                       chain post {{ type nat hook postrouting priority srcnat; \
                         oifname \"{LAN_IFACE}\" masquerade; }}\n\
                     }}\n",
                    backends[0], backends[1]
                );
                let file = dir.join("nftables-http.conf");
                std::fs::write(&file, rules)?;
                fwd.exec("nft", &format!("-f {}", file.display()))?;
                Ok(Installed::Nftables)
            }
            HttpPath::NginxTcp | HttpPath::HaproxyTcp => {
                fwd.ip(&format!("addr add {VIP}/32 dev lo"))?;
                let (name, mut cmd) = if path == HttpPath::NginxTcp {
                    let conf = dir.join("nginx-proxy.conf");
                    std::fs::write(&conf, nginx_conf(dir, &backends))?;
                    let mut cmd = fwd.command("nginx");
                    cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
                    ("nginx proxy", cmd)
                } else {
                    let conf = dir.join("haproxy.cfg");
                    std::fs::write(&conf, haproxy_conf(&backends))?;
                    let mut cmd = fwd.command("haproxy");
                    cmd.arg("-db").arg("-f").arg(&conf);
                    ("haproxy", cmd)
                };
                cmd.current_dir(dir);
                let process = Process::spawn(name, cmd)?;
                let ready =
                    fwd.enter(|| crate::client::wait_until_listening(path.target(), Duration::from_secs(10)));
                ready.with_context(|| format!("{name} listening on {}", path.target()))?;
                Ok(Installed::Process(process))
            }
        }
    }

    fn uninstall(&self, path: HttpPath, installed: Installed) -> anyhow::Result<()> {
        let fwd = &self.lab.forwarder;
        match installed {
            Installed::Nothing => {}
            Installed::Process(process) => {
                process.stop()?;
            }
            Installed::Nftables => {
                fwd.exec("nft", "delete table ip forwarder_bench")?;
            }
        }
        if matches!(path, HttpPath::NginxTcp | HttpPath::HaproxyTcp) {
            fwd.ip(&format!("addr del {VIP}/32 dev lo"))?;
        }
        Ok(())
    }

    /// Runs `wrk` through `path` for `duration` after a short warm-up,
    /// then `paced` requests at [`PACED_RATE`], in a lab of its own.
    pub fn measure(path: HttpPath, duration: Duration, paced: u32) -> anyhow::Result<(WrkRun, Paced)> {
        let bench = Self::new(path.flavour())?;
        let installed = bench.install(path).with_context(|| format!("setting up {}", path.label()))?;
        let result = bench
            .wrk(path, Duration::from_secs(1))
            .and_then(|_| bench.wrk(path, duration))
            .map(|wrk| (wrk, bench.paced(path, paced)));
        bench.uninstall(path, installed)?;
        result.with_context(|| format!("wrk through {}", path.label()))
    }

    fn paced(&self, path: HttpPath, requests: u32) -> Paced {
        let target = path.target();
        let interval = Duration::from_secs(1) / PACED_RATE;
        let (mut latencies, failed) = self.lab.client.enter(|| {
            let start = std::time::Instant::now();
            let mut latencies = Vec::with_capacity(requests as usize);
            let mut failed = 0;
            for i in 0..requests {
                let due = start + interval * i;
                if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
                let sent = std::time::Instant::now();
                match crate::client::http_get(target) {
                    Ok(_) => latencies.push(sent.elapsed().as_secs_f64() * 1e3),
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        });
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied();
        Paced {
            rate: PACED_RATE,
            p50_ms: at(0.5).unwrap_or(f64::NAN),
            p99_ms: at(0.99).unwrap_or(f64::NAN),
            failed,
            requests: u64::from(requests),
        }
    }

    fn wrk(&self, path: HttpPath, duration: Duration) -> anyhow::Result<WrkRun> {
        let url = format!("http://{}/", path.target());
        let out = self
            .lab
            .client
            .command("wrk")
            .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{}s", duration.as_secs().max(1))])
            .args(["--latency", "-H", "Connection: close", &url])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        parse_wrk(&text)
    }
}

fn nginx_conf(dir: &Path, backends: &[std::net::Ipv4Addr]) -> String {
    let mut servers = String::new();
    for backend in backends {
        let _ = write!(servers, "server {backend}:{HTTP_NODEPORT}; ");
    }
    super::nginx_stream_conf(
        dir,
        "nginx-proxy",
        &servers,
        &format!("listen {VIP}:80 reuseport; proxy_pass backends;"),
    )
}

fn haproxy_conf(backends: &[std::net::Ipv4Addr]) -> String {
    let mut servers = String::new();
    for (i, backend) in backends.iter().enumerate() {
        let _ = writeln!(servers, "    server node{i} {backend}:{HTTP_NODEPORT}");
    }
    format!(
        "global\n    maxconn 8000\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
         frontend vip\n    bind {VIP}:80\n    default_backend nodes\n\
         backend nodes\n    balance roundrobin\n{servers}"
    )
}

/// A duration as `wrk` prints it ("812.00us", "1.23ms", "2.01s"), in ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

/// Reads `wrk --latency` output.
pub fn parse_wrk(text: &str) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun { per_second: f64::NAN, p50_ms: f64::NAN, p99_ms: f64::NAN, errors: 0, requests: 0 };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => run.p50_ms = wrk_ms(value).context("p50")?,
            ["99%", value] => run.p99_ms = wrk_ms(value).context("p99")?,
            ["Requests/sec:", value] => run.per_second = value.parse()?,
            [count, "requests", "in", ..] => run.requests = count.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                run.errors +=
                    rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => run.errors += count.parse::<u64>()?,
            _ => {}
        }
    }
    anyhow::ensure!(run.per_second.is_finite() && run.p99_ms.is_finite(), "unexpected wrk output:\n{text}");
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 2s test @ http://10.0.100.10:80/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.01ms    2.10ms  30.12ms   80.00%
    Req/Sec     5.31k   312.00     5.80k    70.00%
  Latency Distribution
     50%  812.00us
     75%    6.50ms
     90%    8.00ms
     99%    1.20s
  10620 requests in 2.00s, 1.62MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 1
Requests/sec:   5309.50
Transfer/sec:    827.12KB
";
        let run = parse_wrk(text).unwrap();
        assert_eq!(
            run,
            WrkRun { per_second: 5309.5, p50_ms: 0.812, p99_ms: 1200.0, errors: 6, requests: 10620 }
        );
    }
}
