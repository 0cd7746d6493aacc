//! The command-line contract: `check`, and `run` refusing bad input with a
//! one-line error before it changes anything. Needs no root.

use std::process::Command;

use forwarder_tests::forwarder_bin;

fn forwarder(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(forwarder_bin()).args(args).output().expect("run forwarder");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("services.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const GOOD: &str = "snat_ip = \"198.18.2.1\"\n\n[[service]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\n\
                    protocol = \"tcp\"\nmode = \"snat\"\nbackends = [\"198.18.2.11:30080\", { addr = \"198.18.2.12:30080\", weight = 2 }]\n";

#[test]
fn check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, GOOD);
    let (code, stdout, _) = forwarder(&["check", &path]);
    assert_eq!(code, 0);
    assert_eq!(stdout, format!("{path}: ok: 1 services, 2 backends\n"));
}

#[test]
fn check_rejects_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &GOOD.replace("port = 80", "port = 0"));
    let (code, stdout, stderr) = forwarder(&["check", &path]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert_eq!(stderr, format!("error: {path}:6:8: port must be between 1 and 65535, not 0\n"));
}

#[test]
fn run_with_a_bad_file_exits_with_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &GOOD.replace("\"tcp\"", "\"sctp\""));
    // `lo` exists everywhere; validation fails before anything is touched.
    let (code, _, stderr) = forwarder(&["run", "--iface", "lo", "--services", &path]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("{path}:7:12: unknown protocol \"sctp\"")), "{stderr}");
}

#[test]
fn bad_arguments_are_refused() {
    for args in [
        &["run", "--services", "x.toml"][..],                // no --iface
        &["run", "--iface", "lo", "--snat-ip", "not-an-ip"], // bad address
        &["run", "--iface", "lo", "--xdp-mode", "turbo"],    // unknown mode
        &["check"],                                          // no file
    ] {
        let (code, _, stderr) = forwarder(args);
        assert_eq!(code, 2, "{args:?}: clap usage error: {stderr}");
    }
    let (code, _, stderr) = forwarder(&["run", "--iface", "no-such-if0", "--services", "/nonexistent.toml"]);
    assert_eq!(code, 1);
    assert_eq!(stderr, "error: /nonexistent.toml: No such file or directory (os error 2)\n");
}

/// A verb whose output pipe closes early ends quietly, as other Unix tools
/// do, instead of panicking with "failed printing to stdout".
#[test]
fn a_closed_output_pipe_ends_a_verb_quietly() {
    use std::io::Read as _;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // the reader is gone before anything is written
    let mut child = Command::new(forwarder_bin())
        .args(["completions", "bash"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "ended by SIGPIPE like `yes | head`: {status}");
}
