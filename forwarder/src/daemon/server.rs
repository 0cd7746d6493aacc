//! The control socket: each connection sends JSON request lines; each is
//! handed to the daemon's main loop, which owns all state, and its answer
//! written back. Lines are bounded ([`MAX_REQUEST`]), connections capped
//! and timed out ([`super::limits`]).

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, mpsc, oneshot},
};
use tracing::debug;

use super::limits::{self, IDLE_TIMEOUT};
use crate::control::{Request, Response};

/// The longest request line: room for a service file of tens of thousands
/// of services (`apply` sends the whole file).
pub const MAX_REQUEST: usize = 16 << 20;

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// Serves the control socket until the process ends.
pub fn spawn(listener: UnixListener, calls: mpsc::Sender<Call>) {
    tokio::spawn(limits::serve_forever("control socket", listener, move |stream, permit| {
        serve(stream, calls.clone(), permit)
    }));
}

async fn serve(stream: UnixStream, calls: mpsc::Sender<Call>, _permit: OwnedSemaphorePermit) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let (response, last) = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                (Response::Refused(format!("request longer than {MAX_REQUEST} bytes")), true)
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Ok(request) => (ask(&calls, request).await, false),
                Err(err) => (Response::Refused(format!("bad request: {err}")), false),
            },
        };
        let mut text = serde_json::to_string(&response).expect("responses serialise");
        text.push('\n');
        let written = tokio::time::timeout(IDLE_TIMEOUT, write.write_all(text.as_bytes())).await;
        if !matches!(written, Ok(Ok(()))) || last {
            debug!("control client went away");
            return;
        }
    }
}

/// Asks the main loop and waits for its answer.
pub async fn ask(calls: &mpsc::Sender<Call>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    if calls.send((request, reply)).await.is_err() {
        return Response::Refused("the daemon is stopping".to_owned());
    }
    answer.await.unwrap_or_else(|_| Response::Refused("the daemon is stopping".to_owned()))
}
