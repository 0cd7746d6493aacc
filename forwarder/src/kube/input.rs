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
    /// The parser's error is part of the message (not a `source`) so the
    /// one-line error names it once.
    #[error("not JSON: {0}")]
    Json(serde_json::Error),
    #[error("expected a Kubernetes List or object with a \"kind\", as `kubectl get -o json` prints")]
    NotKubernetes,
    #[error("item {index} ({kind}): {error}")]
    Item { index: usize, kind: String, error: serde_json::Error },
}

impl Cluster {
    /// Parses kubectl's JSON output.
    pub fn from_json(text: &str) -> Result<Self, InputError> {
        let value: Value = serde_json::from_str(text).map_err(InputError::Json)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}, "status": {}}"#;
    const SERVICE: &str = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                              "spec": {"type": "LoadBalancer"}}"#;

    fn counts(text: &str) -> (usize, usize) {
        let cluster = Cluster::from_json(text).unwrap();
        (cluster.services.len(), cluster.nodes.len())
    }

    #[test]
    fn lists_typed_lists_and_single_objects_are_read() {
        let mixed = format!(
            r#"{{"apiVersion": "v1", "kind": "List", "metadata": {{"resourceVersion": ""}},
            "items": [{SERVICE}, {NODE}, {{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "x"}}}}]}}"#
        );
        assert_eq!(counts(&mixed), (1, 1), "other kinds are ignored");
        // The API server's own lists leave the items' kind out.
        let typed = r#"{"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "42"},
            "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]}"#;
        assert_eq!(counts(typed), (0, 2));
        assert_eq!(counts(SERVICE), (1, 0));
        assert_eq!(counts(r#"{"apiVersion": "v1", "kind": "List", "items": null}"#), (0, 0));
    }

    #[test]
    fn bad_input_says_where() {
        let cases = [
            ("[1, 2]", "expected a Kubernetes List or object with a \"kind\""),
            ("{\"kind\": \"List\", \"items\": 3}", "expected a Kubernetes List"),
            (
                "{\"kind\": \"List\", \"items\": [{\"kind\": \"Service\", \"metadata\": {\"name\": 7}}]}",
                "item 0 (Service): invalid type: integer `7`, expected a string",
            ),
            ("{\"kind\": ", "not JSON: EOF while parsing a value at line 1 column 9"),
        ];
        for (text, want) in cases {
            let err = Cluster::from_json(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text}: {err:?} should start with {want:?}");
        }
    }
}
