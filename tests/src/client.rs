//! Clients for the nodes' servers: HTTP over TCP (one request per
//! connection, or many on a kept-alive one) and UDP datagrams. Each node
//! answers `node=NAME client=IP:PORT`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Who answered, and whom it saw as the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub node: String,
    pub client: SocketAddrV4,
}

impl Answer {
    fn parse(body: &str) -> anyhow::Result<Self> {
        let mut node = None;
        let mut client = None;
        for field in body.split_whitespace() {
            match field.split_once('=') {
                Some(("node", v)) => node = Some(v.to_owned()),
                Some(("client", v)) => client = Some(v.parse().with_context(|| format!("client {v:?}"))?),
                _ => {}
            }
        }
        match (node, client) {
            (Some(node), Some(client)) => Ok(Self { node, client }),
            _ => bail!("unexpected answer {body:?}"),
        }
    }
}

/// An HTTP/1.1 connection kept alive across requests.
pub struct HttpConnection {
    stream: TcpStream,
}

impl HttpConnection {
    pub fn open(addr: SocketAddrV4) -> anyhow::Result<Self> {
        Self::open_within(addr, TIMEOUT)
    }

    /// [`HttpConnection::open`], waiting up to `timeout` for the connection
    /// and for each read and write (where a flood makes TCP retransmit).
    pub fn open_within(addr: SocketAddrV4, timeout: Duration) -> anyhow::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr.into(), timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self { stream })
    }

    /// `GET /` on this connection.
    pub fn get(&mut self) -> anyhow::Result<Answer> {
        self.stream.write_all(b"GET / HTTP/1.1\r\nHost: forwarder-test\r\n\r\n")?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed mid-response after {} bytes", buf.len());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head_len) = response.parse(&buf)? else { continue };
            if response.code != Some(200) {
                bail!("HTTP status {:?}", response.code);
            }
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .context("no Content-Length")?
                .value
                .iter()
                .map(|&b| char::from(b))
                .collect::<String>()
                .parse()?;
            if buf.len() >= head_len + length {
                return Answer::parse(&String::from_utf8_lossy(&buf[head_len..head_len + length]));
            }
        }
    }
}

/// One request on a new connection.
pub fn http_get(addr: SocketAddrV4) -> anyhow::Result<Answer> {
    HttpConnection::open(addr)?.get()
}

/// One datagram, one answer, no retry: a lost datagram is an error.
pub fn udp_ask(addr: SocketAddrV4) -> anyhow::Result<Answer> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.send_to(b"who?", addr)?;
    let mut buf = [0u8; 256];
    let (n, _) = socket.recv_from(&mut buf).with_context(|| format!("no answer from {addr}"))?;
    Answer::parse(&String::from_utf8_lossy(&buf[..n]))
}

/// Polls until something accepts TCP connections at `addr`.
pub fn wait_until_listening(addr: SocketAddrV4, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listening on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Requests on new connections, one after another, from a background
/// thread in the client's namespace, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    thread: JoinHandle<()>,
}

/// What a [`Load`] saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Each answer, with when it came.
    pub answers: Vec<(Instant, Answer)>,
    /// Each failure, with when it happened and why.
    pub failures: Vec<(Instant, String)>,
}

impl LoadReport {
    /// Nodes that answered requests started after `since`.
    #[must_use]
    pub fn nodes_since(&self, since: Instant) -> std::collections::BTreeSet<String> {
        self.answers.iter().filter(|(at, _)| *at > since).map(|(_, a)| a.node.clone()).collect()
    }
}

impl Load {
    /// Starts requesting `GET /` from `addr` about every `pause`.
    pub fn start(ns: &crate::netns::Netns, addr: SocketAddrV4, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let (flag, shared) = (Arc::clone(&stop), Arc::clone(&report));
        let thread = ns.spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = http_get(addr);
                let mut report = shared.lock().expect("report lock");
                match result {
                    Ok(answer) => report.answers.push((started, answer)),
                    Err(err) => report.failures.push((started, format!("{err:#}"))),
                }
                drop(report);
                std::thread::sleep(pause);
            }
        });
        Self { stop, report, thread }
    }

    /// What it has seen so far.
    #[must_use]
    pub fn report(&self) -> LoadReport {
        self.report.lock().expect("report lock").clone()
    }

    /// Waits until a request started after `since` was answered by `node`.
    pub fn wait_for_node(&self, node: &str, since: Instant, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.report().nodes_since(since).contains(node) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("no answer from {node} within {timeout:?}")
    }

    pub fn stop(self) -> LoadReport {
        let Self { stop, report, thread } = self;
        stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
        report.lock().expect("report lock").clone()
    }
}
