//! Editing a service file in place, keeping its comments and layout.
//!
//! Every change made from the command line is an edit of the document;
//! the edited text then goes through [`ServiceFile::parse`] like a file
//! written by hand, so one set of rules validates both.

use std::net::SocketAddrV4;

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value, value};

use super::{BackendSpec, DEFAULT_WEIGHT, KubeSettings, Service, ServiceFile, health};

/// A service file as a document that can be edited.
#[derive(Clone, Debug)]
pub struct Editor {
    doc: DocumentMut,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("no service named {0:?}")]
    NoService(String),
    #[error("a service named {0:?} already exists")]
    ServiceExists(String),
    #[error("service {service:?} has no backend {addr}")]
    NoBackend { service: String, addr: SocketAddrV4 },
    #[error("service {service:?} already has backend {addr}")]
    BackendExists { service: String, addr: SocketAddrV4 },
    #[error("{addr} is the last backend of {service:?}: remove the service instead")]
    LastBackend { service: String, addr: SocketAddrV4 },
    #[error("cannot edit this file's {0}: edit it by hand, or use --runtime-only")]
    Layout(&'static str),
    #[error("not TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
}

impl Editor {
    pub fn parse(text: &str) -> Result<Self, EditError> {
        Ok(Self { doc: text.parse()? })
    }

    /// A fresh document holding `file`.
    #[must_use]
    pub fn render(file: &ServiceFile) -> Self {
        let mut editor = Self { doc: DocumentMut::new() };
        match file.snat_ip.as_slice() {
            [] => {}
            [ip] => editor.doc["snat_ip"] = value(ip.to_string()),
            ips => editor.doc["snat_ip"] = value(ips.iter().map(ToString::to_string).collect::<Array>()),
        }
        if let Some(kube) = &file.kube {
            editor.set_kube(kube);
        }
        for service in &file.services {
            editor.add_service(service).expect("a fresh document has the expected layout");
        }
        editor
    }

    #[must_use]
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    fn services(&mut self) -> Result<&mut ArrayOfTables, EditError> {
        let item = self.doc.entry("service").or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
        item.as_array_of_tables_mut().ok_or(EditError::Layout("service list (expected [[service]] tables)"))
    }

    fn service_index(&mut self, name: &str) -> Result<usize, EditError> {
        self.services()?
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
            .ok_or_else(|| EditError::NoService(name.to_owned()))
    }

    fn backends(&mut self, name: &str) -> Result<&mut Array, EditError> {
        let index = self.service_index(name)?;
        let table = self.services()?.get_mut(index).expect("index found above");
        table
            .get_mut("backends")
            .and_then(Item::as_array_mut)
            .ok_or(EditError::Layout("backends (expected an inline array)"))
    }

    pub fn add_service(&mut self, service: &Service) -> Result<(), EditError> {
        let Service { name, vip, port, protocol, mode, backends, health, source_ranges } = service;
        if self.service_index(name).is_ok() {
            return Err(EditError::ServiceExists(name.clone()));
        }
        let mut table = Table::new();
        table["name"] = value(name.as_str());
        table["vip"] = value(vip.to_string());
        table["port"] = value(i64::from(*port));
        table["protocol"] = value(protocol.to_string());
        table["mode"] = value(mode.to_string());
        let mut list = Array::new();
        for backend in backends {
            list.push(backend_value(backend));
        }
        table["backends"] = value(list);
        if let Some(health) = health {
            table["health"] = value(health::render(health));
        }
        if !source_ranges.is_empty() {
            table["source_ranges"] = value(strings(source_ranges));
        }
        self.services()?.push(table);
        Ok(())
    }

    /// Sets the `[kube]` table, replacing any there was.
    pub fn set_kube(&mut self, kube: &KubeSettings) {
        let KubeSettings { pools, class, address_type } = kube;
        let mut table = Table::new();
        // No pools is written as no key: the parser refuses an empty list.
        if !pools.is_empty() {
            table["pools"] = value(strings(pools));
        }
        table["class"] = value(class.as_str());
        table["address_type"] = value(address_type.as_str());
        self.doc["kube"] = Item::Table(table);
    }

    pub fn remove_service(&mut self, name: &str) -> Result<(), EditError> {
        let index = self.service_index(name)?;
        self.services()?.remove(index);
        Ok(())
    }

    pub fn add_backend(&mut self, service: &str, backend: &BackendSpec) -> Result<(), EditError> {
        let list = self.backends(service)?;
        if find(list, backend.addr).is_some() {
            return Err(EditError::BackendExists { service: service.to_owned(), addr: backend.addr });
        }
        edit_entries(list, |entries| entries.push((backend_value(backend), String::new())));
        Ok(())
    }

    pub fn remove_backend(&mut self, service: &str, addr: SocketAddrV4) -> Result<(), EditError> {
        let list = self.backends(service)?;
        let index =
            find(list, addr).ok_or_else(|| EditError::NoBackend { service: service.to_owned(), addr })?;
        if list.len() == 1 {
            return Err(EditError::LastBackend { service: service.to_owned(), addr });
        }
        edit_entries(list, |entries| {
            entries.remove(index);
        });
        Ok(())
    }

    pub fn set_weight(&mut self, service: &str, addr: SocketAddrV4, weight: u32) -> Result<(), EditError> {
        let list = self.backends(service)?;
        let index =
            find(list, addr).ok_or_else(|| EditError::NoBackend { service: service.to_owned(), addr })?;
        edit_entries(list, |entries| entries[index].0 = backend_value(&BackendSpec { addr, weight }));
        Ok(())
    }
}

/// Edits an array as (entry, comment after it) pairs.
///
/// `toml_edit` keeps a comment that follows an entry's comma in the *next*
/// entry's prefix; an array written one entry per line is rebuilt here so
/// each comment stays with its entry through inserts and removals. A
/// one-line array is edited as is.
fn edit_entries(list: &mut Array, edit: impl FnOnce(&mut Vec<(Value, String)>)) {
    let prefix = |v: &Value| v.decor().prefix().and_then(|p| p.as_str()).unwrap_or("").to_owned();
    let multiline = list.iter().any(|v| prefix(v).contains('\n'));
    if !multiline {
        let mut entries: Vec<(Value, String)> = list.iter().map(|v| (v.clone(), String::new())).collect();
        edit(&mut entries);
        let mut rebuilt = Array::new();
        for (v, _) in entries {
            rebuilt.push_formatted(v);
        }
        rebuilt.fmt();
        *list = rebuilt;
        return;
    }
    let first_line = |text: &str| text.split_once('\n').map_or(String::new(), |(line, _)| line.to_owned());
    let indent = list
        .iter()
        .last()
        .map(|v| prefix(v).rsplit_once('\n').map_or("    ".to_owned(), |(_, indent)| indent.to_owned()))
        .unwrap_or_else(|| "    ".to_owned());
    let head = list.iter().next().map(|v| first_line(&prefix(v))).unwrap_or_default();
    let trailing = list.trailing().as_str().unwrap_or("").to_owned();
    let values: Vec<Value> = list.iter().cloned().collect();
    let mut entries: Vec<(Value, String)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let after =
                values.get(i + 1).map_or_else(|| first_line(&trailing), |next| first_line(&prefix(next)));
            (v.clone(), after)
        })
        .collect();
    edit(&mut entries);
    let mut rebuilt = Array::new();
    let mut before = head;
    for (mut v, after) in entries {
        v.decor_mut().set_prefix(format!("{before}\n{indent}"));
        v.decor_mut().set_suffix("");
        rebuilt.push_formatted(v);
        before = after;
    }
    rebuilt.set_trailing(format!("{before}\n"));
    rebuilt.set_trailing_comma(true);
    *list = rebuilt;
}

/// `"IP:PORT"` at the default weight, `{ addr = "IP:PORT", weight = W }` otherwise.
fn backend_value(backend: &BackendSpec) -> Value {
    if backend.weight == DEFAULT_WEIGHT {
        return backend.addr.to_string().into();
    }
    let mut table = InlineTable::new();
    table.insert("addr", backend.addr.to_string().into());
    table.insert("weight", i64::from(backend.weight).into());
    Value::InlineTable(table)
}

/// An inline array of the items' text.
fn strings<T: ToString>(items: &[T]) -> Array {
    items.iter().map(|item| item.to_string()).collect()
}

fn find(list: &Array, addr: SocketAddrV4) -> Option<usize> {
    list.iter().position(|entry| {
        let text = match entry {
            Value::String(s) => Some(s.value().as_str()),
            Value::InlineTable(t) => t.get("addr").and_then(Value::as_str),
            _ => None,
        };
        text.and_then(|t| t.parse::<SocketAddrV4>().ok()) == Some(addr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# Front door of the cluster.
snat_ip = "198.18.2.1"   # the forwarder's LAN address

[[service]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
backends = [
    "198.18.2.11:30080",   # node a
    "198.18.2.12:30080",   # node b
]
"#;

    fn parsed(editor: &Editor) -> ServiceFile {
        ServiceFile::parse(std::path::Path::new("t.toml"), &editor.text()).expect("still valid")
    }

    #[test]
    fn backend_edits_keep_comments() {
        let mut editor = Editor::parse(FILE).unwrap();
        let c: SocketAddrV4 = "198.18.2.13:30080".parse().unwrap();
        let a: SocketAddrV4 = "198.18.2.11:30080".parse().unwrap();
        editor.add_backend("web", &BackendSpec { addr: c, weight: 3 }).unwrap();
        editor.set_weight("web", a, 0).unwrap();
        editor.remove_backend("web", "198.18.2.12:30080".parse().unwrap()).unwrap();
        let text = editor.text();
        assert!(text.starts_with(
            "# Front door of the cluster.\nsnat_ip = \"198.18.2.1\"   # the forwarder's LAN address"
        ));
        assert!(text.contains("# node a"), "{text}");
        let file = parsed(&editor);
        assert_eq!(
            file.services[0].backends,
            [BackendSpec { addr: a, weight: 0 }, BackendSpec { addr: c, weight: 3 }]
        );
        editor.set_weight("web", a, 1).unwrap();
        assert!(editor.text().contains("\"198.18.2.11:30080\""), "back to the short form");
    }

    #[test]
    fn services_are_added_and_removed() {
        let mut editor = Editor::parse(FILE).unwrap();
        let mut dns = parsed(&editor).services[0].clone();
        dns.name = "dns".to_owned();
        dns.port = 53;
        dns.protocol = super::super::Protocol::Udp;
        editor.add_service(&dns).unwrap();
        assert_eq!(parsed(&editor).services[1], dns);
        editor.remove_service("web").unwrap();
        assert_eq!(parsed(&editor).services, [dns]);
    }

    #[test]
    fn refusals_name_the_problem() {
        let mut editor = Editor::parse(FILE).unwrap();
        let a: SocketAddrV4 = "198.18.2.11:30080".parse().unwrap();
        let z: SocketAddrV4 = "198.18.2.99:30080".parse().unwrap();
        let cases: [(&str, Result<(), EditError>); 5] = [
            ("no service named \"api\"", editor.remove_service("api")),
            ("service \"web\" has no backend 198.18.2.99:30080", editor.set_weight("web", z, 2)),
            (
                "service \"web\" already has backend 198.18.2.11:30080",
                editor.add_backend("web", &BackendSpec { addr: a, weight: 1 }),
            ),
            ("a service named \"web\" already exists", {
                let web = parsed(&Editor::parse(FILE).unwrap()).services[0].clone();
                editor.add_service(&web)
            }),
            ("198.18.2.11:30080 is the last backend", {
                editor.remove_backend("web", "198.18.2.12:30080".parse().unwrap()).unwrap();
                editor.remove_backend("web", a)
            }),
        ];
        for (want, got) in cases {
            let err = got.expect_err(want).to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn rendering_round_trips() {
        let text = FILE.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nmode = \"preserve\"\nhealth = { kind = \"http\", port = 32000, path = \"/healthz\" }\n\
             source_ranges = [\"192.0.2.0/24\", \"198.51.100.7/32\"]",
        ) + "\n[kube]\npools = [\"203.0.113.0/28\"]\nclass = \"example.com/lb\"\n";
        let file = ServiceFile::parse(std::path::Path::new("t.toml"), &text).unwrap();
        assert_eq!(file.services[0].source_ranges.len(), 2);
        assert_eq!(file.kube.as_ref().map(|k| k.address_type.as_str()), Some("InternalIP"));
        assert_eq!(parsed(&Editor::render(&file)), file);
    }
}
