//! The discovery documents kubectl reads before anything else (the legacy
//! ones: a plain `application/json` answer makes kubectl fall back from
//! aggregated discovery).

use serde_json::{Value, json};

fn resource(name: &str, kind: &str, namespaced: bool, short: &[&str], verbs: &[&str]) -> Value {
    let singular = kind.to_lowercase();
    json!({ "name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
            "verbs": verbs, "shortNames": short })
}

const ALL: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

fn group(name: &str) -> Value {
    let version = json!({ "groupVersion": format!("{name}/v1"), "version": "v1" });
    json!({ "name": name, "versions": [version], "preferredVersion": version })
}

/// The document at `segments`, if it is a discovery path.
pub fn document(segments: &[&str]) -> Option<Value> {
    Some(match segments {
        ["version"] => {
            json!({ "major": "1", "minor": "32", "gitVersion": "v1.32.4-fake", "platform": "linux/amd64" })
        }
        ["api"] => json!({ "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443" }] }),
        ["apis"] => json!({ "kind": "APIGroupList", "apiVersion": "v1",
            "groups": [group("coordination.k8s.io"), group("events.k8s.io")] }),
        ["api", "v1"] => json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource("services", "Service", true, &["svc"], ALL),
            resource("services/status", "Service", true, &[], &["get", "patch", "update"]),
            resource("nodes", "Node", false, &["no"], ALL),
        ] }),
        ["apis", "coordination.k8s.io", "v1"] => json!({ "kind": "APIResourceList",
            "groupVersion": "coordination.k8s.io/v1", "resources": [resource("leases", "Lease", true, &[], ALL)] }),
        ["apis", "events.k8s.io", "v1"] => json!({ "kind": "APIResourceList",
            "groupVersion": "events.k8s.io/v1", "resources": [resource("events", "Event", true, &["ev"], ALL)] }),
        _ => return None,
    })
}
