//! The shared test vectors (`shared/vectors/` beside the repository, as in CI), for tests and
//! benchmarks. `NATS_K8S_VECTORS_DIR` overrides the location.

use std::path::PathBuf;

/// The vectors folder; panics with a clear message when it is missing, so a test that needs the
/// vectors can never pass without them.
pub fn dir() -> PathBuf {
    let dir = std::env::var_os("NATS_K8S_VECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors"));
    assert!(
        dir.join("README.md").is_file(),
        "test vectors not found at {} (set NATS_K8S_VECTORS_DIR or place shared/ beside the repo)",
        dir.display()
    );
    dir
}

/// The text of the vector file `rel` (relative to [`dir`]).
pub fn read(rel: &str) -> String {
    let p = dir().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
