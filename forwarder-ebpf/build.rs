//! Fails early, with a clear message, when bpf-linker is missing.
fn main() {
    let linker = which::which("bpf-linker");
    if linker.is_err() {
        panic!("bpf-linker not found on PATH: run `cargo xtask setup` (see README)");
    }
    println!("cargo:rerun-if-env-changed=PATH");
}
