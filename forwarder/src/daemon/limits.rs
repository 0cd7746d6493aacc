//! Limits that keep the daemon's servers (control socket, metrics) alive
//! whatever a local client does: a cap on open connections (beyond it a
//! new one is closed at once, so idle connections cannot take every file
//! descriptor), accept loops that survive errors (backing off while the
//! process is out of descriptors), and idle timeouts.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// Connections one server keeps open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a control connection may stay silent before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a metrics client may take to send its request headers, and
/// (twice that) to be served.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait after an accept error (EMFILE, ENFILE, ENOMEM...)
/// before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections with `accept` forever, serving each with `serve`
/// while fewer than [`MAX_CONNECTIONS`] are open.
pub async fn serve_forever<S, A, F, Fut>(what: &'static str, mut accept: A, serve: F)
where
    S: Send + 'static,
    A: AsyncAccept<S>,
    F: Fn(S, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut warned_full = false;
    loop {
        match accept.accept().await {
            Ok(stream) => match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => {
                    warned_full = false;
                    tokio::spawn(serve(stream, permit));
                }
                Err(_) => {
                    if !warned_full {
                        warn!("{what}: {MAX_CONNECTIONS} connections open; closing new ones until some end");
                        warned_full = true;
                    }
                    drop(stream);
                }
            },
            Err(err) => {
                warn!("{what}: accepting a connection: {err}; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Something that accepts connections of type `S`.
pub trait AsyncAccept<S> {
    fn accept(&mut self) -> impl Future<Output = std::io::Result<S>> + Send;
}

impl AsyncAccept<tokio::net::UnixStream> for tokio::net::UnixListener {
    async fn accept(&mut self) -> std::io::Result<tokio::net::UnixStream> {
        tokio::net::UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

impl AsyncAccept<tokio::net::TcpStream> for tokio::net::TcpListener {
    async fn accept(&mut self) -> std::io::Result<tokio::net::TcpStream> {
        tokio::net::TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}
