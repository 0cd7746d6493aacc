//! The fake API server's objects: one resourceVersion counter, a history
//! of watch events (so a watch can resume from a version, and `410 Gone`
//! once the history is compacted), and live subscribers.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// A resource the fake serves: plural name, whether it is namespaced, and
/// its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Services,
    Nodes,
    Leases,
    Events,
}

impl Resource {
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::Nodes => "Node",
            Resource::Leases => "Lease",
            Resource::Events => "Event",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "v1",
            Resource::Leases => "coordination.k8s.io/v1",
            Resource::Events => "events.k8s.io/v1",
        }
    }

    pub fn of_kind(kind: &str) -> Option<Self> {
        [Resource::Services, Resource::Nodes, Resource::Leases, Resource::Events]
            .into_iter()
            .find(|r| r.kind() == kind)
    }
}

/// (resource, namespace or "", name)
pub type Key = (Resource, String, String);

/// One watch event: its version, resource, type and object.
#[derive(Clone, Debug)]
pub struct Change {
    pub version: u64,
    pub resource: Resource,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
}

pub struct Store {
    pub version: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: Vec<Change>,
    /// Versions at or below this are gone (`410`).
    pub compacted: u64,
    pub live: broadcast::Sender<Change>,
    /// Every request, as "METHOD path?query".
    pub requests: Vec<String>,
    /// How many watches were answered `410 Gone`.
    pub gone: usize,
}

pub fn key_of(object: &Value) -> Option<Key> {
    let resource = Resource::of_kind(object.get("kind")?.as_str()?)?;
    let metadata = object.get("metadata")?;
    let namespace = metadata.get("namespace").and_then(Value::as_str).unwrap_or("").to_owned();
    Some((resource, namespace, metadata.get("name")?.as_str()?.to_owned()))
}

impl Default for Store {
    fn default() -> Self {
        Self {
            version: 1000,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: 0,
            live: broadcast::channel(1024).0,
            requests: Vec::new(),
            gone: 0,
        }
    }
}

impl Store {
    /// Creates or replaces `object` (with kind and metadata), as the API
    /// server does: a new resourceVersion, a uid and creation time kept.
    pub fn put(&mut self, mut object: Value) -> Value {
        let key = key_of(&object).expect("an object with kind, metadata.name");
        self.version += 1;
        let old = self.objects.get(&key).cloned();
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(self.version.to_string());
        if let Some(old) = &old {
            for field in ["uid", "creationTimestamp"] {
                metadata[field] = old["metadata"][field].clone();
            }
        } else {
            if metadata.get("uid").is_none() {
                metadata["uid"] = json!(format!("00000000-fake-4000-8000-{:012}", self.version));
            }
            if metadata.get("creationTimestamp").is_none() {
                metadata["creationTimestamp"] = json!("2026-12-02T06:00:00Z");
            }
        }
        object["apiVersion"] = json!(key.0.api_version());
        self.objects.insert(key.clone(), object.clone());
        self.record(&key, if old.is_some() { "MODIFIED" } else { "ADDED" }, object.clone());
        object
    }

    pub fn delete(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.record(key, "DELETED", object.clone());
        Some(object)
    }

    fn record(&mut self, key: &Key, kind: &'static str, object: Value) {
        let change =
            Change { version: self.version, resource: key.0, namespace: key.1.clone(), kind, object };
        self.history.push(change.clone());
        // No subscriber is fine.
        let _ = self.live.send(change);
    }

    /// The objects of `resource` (in `namespace`, or all).
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Forgets the history, as etcd's compaction does: a watch resuming
    /// from any version seen so far gets `410 Gone`; a list (at the new
    /// version) works.
    pub fn compact(&mut self) {
        self.version += 1;
        self.compacted = self.version;
        self.history.clear();
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}
