//! A small Kubernetes API server for the controller's tests: real HTTP on
//! 127.0.0.1, the real list/watch protocol, the status subresource,
//! Leases and Events, enough discovery for kubectl. It runs on its own
//! thread and stops when dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::{Mutex, watch};

mod discovery;
mod http;
pub mod store;

use store::{Key, Resource, Store};

pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Arc<http::Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApi {
    /// Serves `objects` (each with its kind) on a free port of 127.0.0.1.
    pub fn start(objects: Vec<Value>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut store = Store::default();
        for object in objects {
            store.put(object);
        }
        let shared = Arc::new(http::Shared { store: Mutex::new(store), cut_watches: watch::channel(0).0 });
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind a port on 127.0.0.1");
        let addr = listener.local_addr().expect("bound address");
        let serving = shared.clone();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| http::handle(shared.clone(), request));
                    let io = hyper_util::rt::TokioIo::new(stream);
                    // A client hanging up mid-watch is normal.
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Self { addr, shared, runtime: Some(runtime) }
    }

    fn store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let runtime = self.runtime.as_ref().expect("running");
        runtime.block_on(async { f(&mut *self.shared.store.lock().await) })
    }

    /// Creates or replaces an object, as a client would.
    pub fn put(&self, object: Value) -> Value {
        self.store(|store| store.put(object))
    }

    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        let key: Key = (resource, namespace.to_owned(), name.to_owned());
        self.store(|store| store.delete(&key)).expect("the object exists");
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.store(|store| store.objects.get(&(resource, namespace.to_owned(), name.to_owned())).cloned())
    }

    pub fn list(&self, resource: Resource) -> Vec<Value> {
        self.store(|store| store.list(resource, None))
    }

    /// Every request so far, as "METHOD path?query".
    pub fn requests(&self) -> Vec<String> {
        self.store(|store| store.requests.clone())
    }

    /// How many watches were answered `410 Gone`.
    pub fn gone(&self) -> usize {
        self.store(|store| store.gone)
    }

    /// Ends every open watch, as a restarted API server would, and forgets
    /// the history so resuming from an old version gets `410 Gone`.
    pub fn cut_watches_and_compact(&self) {
        self.store(Store::compact);
        self.shared.cut_watches.send_modify(|generation| *generation += 1);
    }

    /// A kubeconfig pointing at this server, written in `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: tester\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n\
             current-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
