//! A TCP echo server for a node and a client that sends a body through it:
//! bulk data both ways over one connection (large segments, every
//! checksum state the sender's offloads produce), checked byte for byte.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns::Netns;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Echoes the first connection it accepts back to its sender, until the
/// sender closes; stops waiting for one when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl EchoServer {
    /// Listens at `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddrV4) -> anyhow::Result<Self> {
        let listener = ns.enter(|| TcpListener::bind(addr)).with_context(|| format!("bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + TIMEOUT;
            let (stream, _) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        if stopped.load(Ordering::Relaxed) || Instant::now() > deadline {
                            return Ok(0);
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let mut reader = stream.try_clone()?;
            let mut writer = stream;
            let echoed = std::io::copy(&mut reader, &mut writer)?;
            writer.shutdown(Shutdown::Write)?;
            Ok(echoed)
        });
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops waiting; how many bytes it echoed (0: no connection came).
    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow::anyhow!("echo server panicked"))?
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `body` to `addr` (writing and reading at once, so neither side's
/// buffers fill up) and returns what came back once the server closed.
pub fn echo(addr: SocketAddrV4, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let stream =
        TcpStream::connect_timeout(&addr.into(), TIMEOUT).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let body = body.to_vec();
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&body)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut back = Vec::new();
    let mut reader = stream;
    let read = reader.read_to_end(&mut back).context("reading the echo");
    sending.join().map_err(|_| anyhow::anyhow!("sender panicked"))?.context("sending the body")?;
    read?;
    Ok(back)
}

/// `len` bytes that no two offsets of a short period share.
#[must_use]
pub fn body(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}
