//! The service file the controller writes: the hand-written part of the
//! current file as it was (comments, layout, the `[kube]` table), the
//! generated services replaced by the new ones.

use std::path::Path;

use crate::config::{
    ConfigError, KubeSettings, Service, ServiceFile,
    edit::{EditError, Editor},
};

use super::names;

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The result is refused by the service file's own rules: a bug, or a
    /// base file that was invalid. (Not a `source`: named once.)
    #[error("the generated service file is invalid: {0}")]
    Invalid(ConfigError),
}

/// `base` (the current file's text, `""` for none) with its generated
/// services replaced by `generated`; `kube` replaces the `[kube]` table
/// when it differs from the base's (so the file says which settings made
/// it). The text is validated like any service file.
pub fn render(
    base: &str,
    kube: Option<&KubeSettings>,
    generated: &[Service],
) -> Result<(String, ServiceFile), DocumentError> {
    let mut editor = Editor::parse(base)?;
    let current =
        ServiceFile::parse(Path::new("<current service file>"), base).map_err(DocumentError::Invalid)?;
    for service in current.services.iter().filter(|s| names::is_generated(&s.name)) {
        editor.remove_service(&service.name)?;
    }
    if let Some(kube) = kube.filter(|kube| current.kube.as_ref() != Some(*kube)) {
        editor.set_kube(kube);
    }
    for service in generated {
        editor.add_service(service)?;
    }
    let text = editor.text();
    let file =
        ServiceFile::parse(Path::new("<generated service file>"), &text).map_err(DocumentError::Invalid)?;
    Ok((text, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"# Edge forwarder: hand-written services first.
snat_ip = "198.18.2.1"

[kube]
pools = ["203.0.113.0/28"]   # the routed VIP range

# The old HAProxy box's TLS passthrough, kept by hand.
[[service]]
name = "legacy-tls"
vip = "198.51.100.10"
port = 443
protocol = "tcp"
backends = ["198.18.2.11:31443"]

[[service]]
name = "kube.default.gone.80"
vip = "203.0.113.1"
port = 80
protocol = "tcp"
backends = ["198.18.2.11:30080"]
"#;

    fn generated() -> Service {
        let mut file = ServiceFile::parse(Path::new("b.toml"), BASE).unwrap();
        let mut service = file.services.pop().unwrap();
        service.name = "kube.default.web.http".to_owned();
        service.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
        service
    }

    #[test]
    fn the_hand_written_part_survives_and_generated_services_are_replaced() {
        let base = ServiceFile::parse(Path::new("b.toml"), BASE).unwrap();
        let (text, file) = render(BASE, base.kube.as_ref(), &[generated()]).unwrap();
        assert!(text.starts_with(&BASE[..BASE.find("[[service]]\nname = \"kube").unwrap()]), "{text}");
        assert!(!text.contains("gone"), "{text}");
        let names: Vec<&str> = file.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["legacy-tls", "kube.default.web.http"]);
        assert_eq!(file.services[1], generated());
        // Rendering again over the result changes nothing.
        assert_eq!(render(&text, file.kube.as_ref(), &[generated()]).unwrap().0, text);
    }

    #[test]
    fn other_settings_replace_the_kube_table() {
        let kube = KubeSettings { pools: vec!["10.9.0.0/24".parse().unwrap()], ..KubeSettings::default() };
        let (text, file) = render(BASE, Some(&kube), &[]).unwrap();
        assert_eq!(file.kube, Some(kube));
        assert!(text.contains("pools = [\"10.9.0.0/24\"]"), "{text}");
        let (fresh, file) = render("", Some(&KubeSettings::default()), &[generated()]).unwrap();
        assert_eq!(file.services, [generated()]);
        assert!(fresh.starts_with("[kube]\n"), "{fresh}");
    }

    #[test]
    fn an_invalid_base_is_refused() {
        let err = render("[[service]]\nname = 1\n", None, &[]).unwrap_err();
        assert!(
            err.to_string().starts_with("the generated service file is invalid: <current service file>:2:8:"),
            "{err}"
        );
    }
}
