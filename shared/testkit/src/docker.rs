//! The Docker engine and the images `scripts/lib.sh` builds, for tests that run real
//! containers (the stand-in client image, the holder's image).

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What `function` of `scripts/lib.sh` prints (trimmed), after `ensure_docker` has started
/// an engine if none answers: how a bare `cargo test` gets what `scripts/test` builds
/// and exports. Panics, its stderr shown, when either fails.
pub fn from_lib_sh(function: &str) -> String {
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("source scripts/lib.sh && ensure_docker && {function}"),
        ])
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .expect("run bash for scripts/lib.sh");
    assert!(
        out.status.success(),
        "scripts/lib.sh: ensure_docker && {function} failed (its output is above)"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker` with `args`; its stdout, trimmed (panics with stderr when it fails).
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
