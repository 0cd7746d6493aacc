//! Reading `kubectl get services,nodes -A -o json` output.
//!
//! kubectl prints a `List` (`apiVersion: v1`) whose items carry their own
//! `kind`; a single object, or a `ServiceList`/`NodeList` from the API
//! server, is accepted too. Items of other kinds are ignored, as are the
//! fields this translation does not read.

use k8s_openapi::api::core::v1::{Node, Service};
use serde_json::Value;

/// The objects the translation reads.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a Kubernetes List or object with a \"kind\", as `kubectl get -o json` prints")]
    NotKubernetes,
    #[error("item {index} ({kind}): {error}")]
    Item { index: usize, kind: String, error: serde_json::Error },
}

impl Cluster {
    /// Parses kubectl's JSON output.
    pub fn from_json(text: &str) -> Result<Self, InputError> {
        let value: Value = serde_json::from_str(text)?;
        let kind = value.get("kind").and_then(Value::as_str).ok_or(InputError::NotKubernetes)?;
        let items = if kind.ends_with("List") {
            match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return Err(InputError::NotKubernetes),
            }
        } else {
            vec![value.clone()]
        };
        // A typed list's items may omit their kind.
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        let mut cluster = Cluster::default();
        for (index, item) in items.into_iter().enumerate() {
            let kind = item.get("kind").and_then(Value::as_str).or(item_kind).unwrap_or("").to_owned();
            let bad = |error| InputError::Item { index, kind: kind.clone(), error };
            match kind.as_str() {
                "Service" => cluster.services.push(serde_json::from_value(item).map_err(bad)?),
                "Node" => cluster.nodes.push(serde_json::from_value(item).map_err(bad)?),
                _ => {}
            }
        }
        Ok(cluster)
    }
}
