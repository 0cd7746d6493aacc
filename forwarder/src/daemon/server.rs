//! The control socket: each connection sends JSON request lines; each is
//! handed to the daemon's main loop, which owns all state, and its answer
//! written back.

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::debug;

use crate::control::{Request, Response};

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// Serves the control socket until the daemon's loop goes away.
pub fn spawn(listener: UnixListener, calls: mpsc::Sender<Call>) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, calls.clone()));
        }
    });
}

async fn serve(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => ask(&calls, request).await,
            Err(err) => Response::Refused(format!("bad request: {err}")),
        };
        let mut text = serde_json::to_string(&response).expect("responses serialise");
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
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
