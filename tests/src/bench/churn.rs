//! New connections at a fixed rate to one node in snat mode, for a while:
//! whether SNAT port reuse keeps up with the rate. Two cases: the client
//! closes first (the node ends in CLOSED), and the node closes first
//! (`Connection: close`: the node holds each tuple in TIME_WAIT for 60 s;
//! once every port is held so, a port is reused after 2 s only because
//! the new SYN comes from the same client: at once where its timestamp is
//! newer than the one of the client's FIN, which the node's TIME_WAIT
//! takes; otherwise only when no such port is found, and then the node
//! may refuse the SYN, taking the client's second about 8 ms later).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::lab::{Flavour, Lab, VIP, service_file};

/// Client threads sharing the rate.
pub const THREADS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Closer {
    Client,
    Node,
}

impl Closer {
    pub const ALL: [Closer; 2] = [Closer::Client, Closer::Node];

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Closer::Client => "client closes first",
            Closer::Node => "node closes first (Connection: close)",
        }
    }
}

/// One run's figures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChurnRow {
    pub closer: Closer,
    pub label: String,
    /// New connections per second asked for, and for how long.
    pub rate: u32,
    pub seconds: u64,
    pub attempted: u64,
    /// Connections that did not get a whole answer.
    pub failed: u64,
    /// Connections made per second over the run.
    pub achieved: f64,
    /// The datapath's `drop_snat_exhausted` count after the run.
    pub snat_exhausted: u64,
    /// Connect to whole answer, of the connections made.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Made connections that took longer than a second (a SYN resent).
    pub over_a_second: u64,
}

/// `rate` new connections per second for `duration` through the VIP to
/// one node, in a lab of its own (kernel-default veths, `--attach auto`).
pub fn measure(closer: Closer, rate: u32, duration: Duration) -> anyhow::Result<ChurnRow> {
    let mut lab = Lab::with_flavour("fwb", 1, Flavour::Defaults)?;
    lab.start_servers()?;
    // The load generator's own side: its closed connections sit in
    // TIME_WAIT for a minute, more than its port range holds at this rate.
    for setting in ["net.ipv4.ip_local_port_range=1024 65535", "net.ipv4.tcp_tw_reuse=1"] {
        crate::netns::run(lab.client.command("sysctl").args(["-qw", setting]))?;
    }
    let path = lab.write_services(&service_file("snat", &[0], ""))?;
    let forwarder = lab.start_forwarder(&path, &[])?;
    let request: &'static [u8] = match closer {
        Closer::Client => b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n",
        Closer::Node => b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
    };
    let web = std::net::SocketAddrV4::new(VIP, 80);
    let start = Instant::now();
    let per_thread = (u64::from(rate) * duration.as_secs()).div_ceil(u64::from(THREADS));
    let interval = Duration::from_secs(1) * THREADS / rate;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            lab.client.spawn(move || {
                let offset = interval / THREADS * t;
                let mut failed = 0u64;
                let mut took = Vec::with_capacity(per_thread as usize);
                for i in 0..per_thread {
                    let due = start + offset + interval * (i as u32);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    if one(web, request, closer) {
                        took.push(sent.elapsed().as_secs_f64() * 1e3);
                    } else {
                        failed += 1;
                    }
                }
                (failed, took)
            })
        })
        .collect::<Vec<_>>();
    let (mut failed, mut took) = (0, Vec::new());
    for thread in threads {
        let (f, t) = thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        failed += f;
        took.extend(t);
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took.get(((took.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    let elapsed = start.elapsed().as_secs_f64();
    let attempted = per_thread * u64::from(THREADS);
    let stats: forwarder::report::Stats = serde_json::from_str(&lab.cli_ok(&["stats", "--json"]))?;
    let snat_exhausted =
        stats.reasons.iter().find(|r| r.reason == "drop_snat_exhausted").map_or(0, |r| r.packets);
    forwarder.stop()?;
    Ok(ChurnRow {
        closer,
        label: closer.label().to_owned(),
        rate,
        seconds: duration.as_secs(),
        attempted,
        failed,
        achieved: (attempted - failed) as f64 / elapsed,
        snat_exhausted,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        over_a_second: took.iter().filter(|&&ms| ms > 1000.0).count() as u64,
    })
}

/// One connection, one request, a whole answer; closed as `closer` says.
fn one(addr: std::net::SocketAddrV4, request: &[u8], closer: Closer) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr.into(), TIMEOUT) else { return false };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut answer = Vec::with_capacity(512);
    match closer {
        // The node closes: read to its FIN.
        Closer::Node => stream.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200"),
        // Read the answer, then close first.
        Closer::Client => {
            let mut chunk = [0u8; 2048];
            matches!(stream.read(&mut chunk), Ok(n) if chunk[..n].starts_with(b"HTTP/1.1 200"))
        }
    }
}
