use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use crate::{build, cmd};

/// Build, then install the daemon: the binary, systemd units (the daemon,
/// and `forwarder kube run` for Kubernetes clusters), shell
/// completions, the README, and (where none exist yet) an example service
/// file and unit settings. Needs root unless --root points elsewhere.
#[derive(Debug, Args)]
pub struct Install {
    /// Installation prefix of the binary and documentation.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Install below this directory instead of / (for packaging).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

impl Install {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { prefix, root } = self;
        build::release()?;
        let workspace = cmd::workspace_root();
        let binary = workspace.join("target/release/forwarder");
        let at = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
        let bin_dir = prefix.join("bin");

        copy(&binary, &at(&bin_dir.join("forwarder")), 0o755)?;
        for (source, target) in [
            ("forwarder/packaging/forwarder.service", "/etc/systemd/system/forwarder.service"),
            ("forwarder/packaging/kube/forwarder-kube.service", "/etc/systemd/system/forwarder-kube.service"),
        ] {
            let unit = std::fs::read_to_string(workspace.join(source))?
                .replace("@BINDIR@", &bin_dir.display().to_string())
                .replace("/usr/local/share/doc", &prefix.join("share/doc").display().to_string());
            write(&at(Path::new(target)), &unit, 0o644)?;
        }
        copy(&workspace.join("README.md"), &at(&prefix.join("share/doc/forwarder/README.md")), 0o644)?;
        let kube_doc = prefix.join("share/doc/forwarder/kubernetes.md");
        copy(&workspace.join("forwarder/packaging/kube/README.md"), &at(&kube_doc), 0o644)?;
        for (shell, path) in [
            ("bash", "share/bash-completion/completions/forwarder"),
            ("zsh", "share/zsh/site-functions/_forwarder"),
            ("fish", "share/fish/vendor_completions.d/forwarder.fish"),
        ] {
            let out = std::process::Command::new(&binary).args(["completions", shell]).output()?;
            anyhow::ensure!(out.status.success(), "generating {shell} completions");
            write(&at(&prefix.join(path)), &String::from_utf8(out.stdout)?, 0o644)?;
        }
        for (source, target) in [
            ("forwarder/packaging/forwarder.default", "/etc/default/forwarder"),
            ("forwarder/packaging/kube/forwarder-kube.default", "/etc/default/forwarder-kube"),
            ("forwarder/examples/services.toml", "/etc/forwarder/services.toml"),
        ] {
            let target = at(Path::new(target));
            if target.exists() {
                eprintln!("kept existing {}", target.display());
            } else {
                copy(&workspace.join(source), &target, 0o644)?;
            }
        }
        eprintln!(
            "installed. Edit /etc/forwarder/services.toml and /etc/default/forwarder, then: \
             systemctl daemon-reload && systemctl enable --now forwarder"
        );
        Ok(())
    }
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let text = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_bytes(to, &text, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    eprintln!("  {}", to.display());
    Ok(())
}
