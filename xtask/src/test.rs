use clap::Args;

use crate::{build, cmd};

/// Run every test: host unit tests, then (as root, through sudo if need be)
/// the BPF fixture tests and the end-to-end tests in network namespaces.
#[derive(Debug, Args)]
pub struct Test {
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

impl Test {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { filter } = self;
        let binary = build::for_lab()?;
        let filter: Vec<String> = filter.into_iter().collect();
        cmd::run(
            cmd::cargo()
                .args(["test", "--release", "--package", "forwarder-common", "--package", "forwarder", "--"])
                .args(&filter),
        )?;
        remove_stale_namespaces();
        if !cmd::is_root() {
            eprintln!(
                "the kernel tests load BPF programs and create network namespaces: running them with sudo"
            );
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let bpffs = crate::bpffs::HostBpffs::note();
        let kernel_tests = |flavour: &str, suites: &[&str]| {
            let mut test = cmd::as_root(&cargo);
            test.current_dir(cmd::workspace_root())
                .env("FORWARDER_BIN", &binary)
                .env("FORWARDER_LAB", flavour)
                .args(["test", "--release", "--package", "forwarder-tests"]);
            for suite in suites {
                test.args(["--test", suite]);
            }
            eprintln!("kernel tests, lab flavour {flavour}");
            cmd::run(test.arg("--").arg("--test-threads=1").args(&filter))
        };
        // Everything in the lab as a new user has it (kernel-default veths,
        // `--attach auto`), then the lab suites again with TC forced and in
        // a lab tuned for XDP with XDP forced.
        let result = kernel_tests("defaults", &[])
            .and_then(|()| kernel_tests("defaults-tc", LAB_SUITES))
            .and_then(|()| kernel_tests("tuned-xdp", LAB_SUITES));
        remove_stale_namespaces();
        bpffs.restore();
        result
    }
}

/// The suites that run against the namespace lab, once per lab flavour.
const LAB_SUITES: &[&str] = &["e2e", "live"];
/// Removes what a test run killed before its guards ran left behind:
/// network namespaces named `{prefix}{pid}x{n}{role}` whose pid is gone,
/// and the labs' bpffs mounts (which also detaches anything pinned there).
fn remove_stale_namespaces() {
    remove_stale_mounts();
    let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() else { return };
    for name in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("fw") else { continue };
        let digits: String =
            rest.chars().skip_while(|c| c.is_ascii_alphabetic()).take_while(char::is_ascii_digit).collect();
        let marked = rest.chars().skip_while(|c| c.is_ascii_alphabetic()).nth(digits.len()) == Some('x');
        if digits.is_empty() || !marked || std::path::Path::new("/proc").join(&digits).exists() {
            continue;
        }
        eprintln!("removing stale test namespace {name}");
        let _ = cmd::run(cmd::as_root("ip").args(["netns", "del", name]));
    }
    remove_stale_default_state();
}

/// The default pin and run directories (`forwarder-netns-NAME`) of test
/// labs whose namespace is gone.
fn remove_stale_default_state() {
    for root in [crate::bpffs::BPFFS, "/run"] {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(netns) = name.strip_prefix("forwarder-netns-fw") else { continue };
            if !std::path::Path::new("/run/netns").join(format!("fw{netns}")).exists() {
                eprintln!("removing stale test state {}", entry.path().display());
                let _ = cmd::run(cmd::as_root("rm").arg("-rf").arg(entry.path()));
            }
        }
    }
}

fn remove_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let stale = kind == "bpf"
            && point
                .starts_with(std::env::temp_dir().join("forwarder-lab").to_str().unwrap_or("/nonexistent"))
            && !lab_alive(point);
        if stale {
            eprintln!("unmounting stale lab bpffs {point}");
            let _ = cmd::run(cmd::as_root("umount").arg(point));
        }
    }
}

/// Whether a process still uses the lab holding mount `point` (its temp dir
/// is open as a working directory or file by the test that made it).
fn lab_alive(point: &str) -> bool {
    let Some(lab) = std::path::Path::new(point).parent() else { return false };
    let Ok(procs) = std::fs::read_dir("/proc") else { return true };
    procs.filter_map(Result::ok).any(|p| {
        std::fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(lab)))
        })
    })
}
