//! Test infrastructure shared by the integration tests, the local demo and the benchmarks:
//! real `nats-server` processes with generated configurations, and a Kubernetes API double.
//! The service itself never uses this module.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod k8s_double;
pub mod nats_server;
pub mod operator;
pub mod promtool;
pub mod vectors;

/// A fresh private temporary directory (not removed; see [`TempDir`] for one that is).
pub(crate) fn temp_dir(prefix: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        crate::backoff::random_u64()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A fresh private temporary directory, removed (with its files) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        TempDir(temp_dir(prefix))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to the file `name` in the directory and returns the file's path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` every 10 ms until it holds; panics naming `what` if it does not within `within`.
pub fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
