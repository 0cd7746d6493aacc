//! The fake API server's HTTP side: discovery, list, watch (a chunked
//! stream of JSON events resuming from a resourceVersion, `410 Gone` from
//! a compacted one), get, create, replace (with the resourceVersion
//! check), merge patches of objects and of the status subresource, delete.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, watch};

use super::{
    discovery,
    store::{Change, Resource, Store, merge},
};

pub type Body = BoxBody<Bytes, Infallible>;

pub struct Shared {
    pub store: Mutex<Store>,
    /// Bumped to end every open watch (a dropped connection, for tests).
    pub cut_watches: watch::Sender<u64>,
}

/// Where a request goes, from its path.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

pub async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect();
    let content_type =
        request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    shared.store.lock().await.requests.push(format!("{method} {}", request.uri()));
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(document) = discovery::document(&segments) {
        return Ok(json_response(StatusCode::OK, &document));
    }
    let Some(target) = target(&segments) else {
        return Ok(failure(StatusCode::NOT_FOUND, "NotFound", &format!("the server could not find {path}")));
    };
    let body: Value =
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    // The API server reads booleans as Go's ParseBool: the Python client
    // sends `watch=True`.
    let watching =
        matches!(query.get("watch").map(String::as_str), Some("1" | "t" | "T" | "true" | "True" | "TRUE"));
    Ok(match (&method, &target.name, watching) {
        (&Method::GET, None, true) => watch_stream(&shared, &target, &query).await,
        (&Method::GET, None, false) => list(&shared, &target).await,
        (&Method::GET, Some(name), _) => match get(&shared, &target, name).await {
            Some(object) => json_response(StatusCode::OK, &object),
            None => not_found(&target, name),
        },
        (&Method::POST, None, _) => create(&shared, &target, body).await,
        (&Method::PUT, Some(name), _) => replace(&shared, &target, name, body).await,
        (&Method::PATCH, Some(name), _) if content_type.contains("merge-patch") => {
            patch(&shared, &target, name, &body).await
        }
        (&Method::PATCH, Some(_), _) => {
            failure(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "only merge patches")
        }
        (&Method::DELETE, Some(name), _) => {
            let key = (target.resource, target.namespace.clone().unwrap_or_default(), name.clone());
            match shared.store.lock().await.delete(&key) {
                Some(object) => json_response(StatusCode::OK, &object),
                None => not_found(&target, name),
            }
        }
        _ => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported by the fake"),
    })
}

fn target(segments: &[&str]) -> Option<Target> {
    let rest = match segments {
        ["api", "v1", rest @ ..] => rest,
        ["apis", "coordination.k8s.io" | "events.k8s.io", "v1", rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some((*namespace).to_owned()), rest),
        rest => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let resource = match plural {
        "services" => Resource::Services,
        "nodes" => Resource::Nodes,
        "leases" => Resource::Leases,
        "events" => Resource::Events,
        _ => return None,
    };
    Some(Target { resource, namespace, name, status })
}

async fn list(shared: &Shared, target: &Target) -> Response<Body> {
    let store = shared.store.lock().await;
    let items = store.list(target.resource, target.namespace.as_deref());
    let list = json!({
        "kind": format!("{}List", target.resource.kind()),
        "apiVersion": target.resource.api_version(),
        "metadata": { "resourceVersion": store.version.to_string() },
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

async fn get(shared: &Shared, target: &Target, name: &str) -> Option<Value> {
    let key = (target.resource, target.namespace.clone().unwrap_or_default(), name.to_owned());
    shared.store.lock().await.objects.get(&key).cloned()
}

async fn create(shared: &Shared, target: &Target, mut object: Value) -> Response<Body> {
    let mut store = shared.store.lock().await;
    object["kind"] = json!(target.resource.kind());
    object["metadata"]["namespace"] = json!(target.namespace.clone().unwrap_or_default());
    if object["metadata"].get("name").is_none_or(Value::is_null) {
        let prefix = object["metadata"]["generateName"].as_str().unwrap_or("object-").to_owned();
        object["metadata"]["name"] = json!(format!("{prefix}{}", store.version + 1));
    }
    let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let key = (target.resource, target.namespace.clone().unwrap_or_default(), name.clone());
    if store.objects.contains_key(&key) {
        let message = format!("{} {name:?} already exists", target.resource.kind());
        return failure(StatusCode::CONFLICT, "AlreadyExists", &message);
    }
    let created = store.put(object);
    json_response(StatusCode::CREATED, &created)
}

async fn replace(shared: &Shared, target: &Target, name: &str, mut object: Value) -> Response<Body> {
    let mut store = shared.store.lock().await;
    let key = (target.resource, target.namespace.clone().unwrap_or_default(), name.to_owned());
    let Some(current) = store.objects.get(&key) else { return not_found(target, name) };
    let sent = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !sent.is_empty() && sent != current["metadata"]["resourceVersion"].as_str().unwrap_or("") {
        let message = format!(
            "Operation cannot be fulfilled on {} {name:?}: the object has been modified; \
             please apply your changes to the latest version and try again",
            target.resource.kind()
        );
        return failure(StatusCode::CONFLICT, "Conflict", &message);
    }
    object["kind"] = json!(target.resource.kind());
    object["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
    let replaced = store.put(object);
    json_response(StatusCode::OK, &replaced)
}

async fn patch(shared: &Shared, target: &Target, name: &str, patch: &Value) -> Response<Body> {
    let mut store = shared.store.lock().await;
    let key = (target.resource, target.namespace.clone().unwrap_or_default(), name.to_owned());
    let Some(mut object) = store.objects.get(&key).cloned() else { return not_found(target, name) };
    if target.status {
        // The status subresource changes the status only.
        let mut status = object.get("status").cloned().unwrap_or_else(|| json!({}));
        merge(&mut status, patch.get("status").unwrap_or(&Value::Null));
        object["status"] = status;
    } else {
        merge(&mut object, patch);
    }
    let patched = store.put(object);
    json_response(StatusCode::OK, &patched)
}

/// `?watch=true`: events after `resourceVersion` (all objects as ADDED
/// for none or "0"), then live ones, until `timeoutSeconds` or a cut.
async fn watch_stream(
    shared: &Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let since: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(300);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let matches = {
        let (resource, namespace) = (target.resource, target.namespace.clone());
        move |c: &Change| c.resource == resource && namespace.as_ref().is_none_or(|n| *n == c.namespace)
    };
    let line =
        |kind: &str, object: &Value| Bytes::from(format!("{}\n", json!({ "type": kind, "object": object })));
    let mut cut = shared.cut_watches.subscribe();
    let (backlog, mut live) = {
        let mut store = shared.store.lock().await;
        let backlog: Vec<Bytes> = if since != 0 && since < store.compacted {
            let gone = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {since} ({})", store.compacted),
                "reason": "Expired", "code": 410 });
            vec![line("ERROR", &gone)]
        } else if since == 0 {
            store
                .list(target.resource, target.namespace.as_deref())
                .iter()
                .map(|o| line("ADDED", o))
                .collect()
        } else {
            store
                .history
                .iter()
                .filter(|c| c.version > since && matches(c))
                .map(|c| line(c.kind, &c.object))
                .collect()
        };
        let expired = since != 0 && since < store.compacted;
        store.gone += usize::from(expired);
        (backlog, (!expired).then(|| store.live.subscribe()))
    };
    tokio::spawn(async move {
        for chunk in backlog {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        let Some(live) = live.as_mut() else { return };
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) if matches(&change) => {
                        if tx.send(line(change.kind, &change.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Lagged or closed: end, the client lists again.
                    Err(_) => return,
                },
                () = &mut deadline => return,
                _ = cut.changed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("a valid response")
}

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("a valid response")
}

fn not_found(target: &Target, name: &str) -> Response<Body> {
    let plural = format!("{:?}", target.resource).to_lowercase();
    failure(StatusCode::NOT_FOUND, "NotFound", &format!("{plural} {name:?} not found"))
}

fn failure(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": status.as_u16() });
    json_response(status, &body)
}
