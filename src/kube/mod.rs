//! Kubernetes API client and the ServiceAccount cache (list + watch).
//!
//! - `api`: where the API server is, bearer token from a file, HTTP agents, typed errors;
//! - `watch`: the list+watch state machine run on the watcher thread;
//! - `cache`: the compact cache, lazy GET on miss with a negative cache, readiness state.
//!
//! The decision calls [`SaCache::lookup`]; `app` starts the watcher with [`SaCache::start`] and
//! stops it with [`WatcherHandle::stop`]. This module never logs tokens and never mutates the
//! cluster.

pub mod api;
pub mod cache;
pub mod watch;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use api::{ApiConfig, ApiError, ErrorKind, KubeClient};
pub use cache::{CacheConfig, CacheStatus, Lookup, ResourceVersion, SaRecord, Uid};

use crate::backoff::Backoff;

/// The ServiceAccount cache handle: cheap to clone, shared by the decision workers.
#[derive(Clone)]
pub struct SaCache {
    shared: Arc<cache::Shared>,
}

impl std::fmt::Debug for SaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaCache")
            .field("status", &self.status())
            .finish()
    }
}

impl SaCache {
    /// Starts the watcher thread (list, then watch) with the default Kubernetes backoff.
    pub fn start(client: Arc<KubeClient>, cfg: CacheConfig) -> (SaCache, WatcherHandle) {
        Self::start_with_backoff(client, cfg, Backoff::kube())
    }

    /// As [`SaCache::start`] with a chosen backoff (tests use shorter delays).
    pub fn start_with_backoff(
        client: Arc<KubeClient>,
        cfg: CacheConfig,
        backoff: Backoff,
    ) -> (SaCache, WatcherHandle) {
        // The watch read returns within `watch_idle` (the idle guard), and a relist or a
        // backoff takes well under a minute; silence beyond that means a stuck thread.
        let heartbeat = cfg
            .health
            .as_ref()
            .map(|h| h.heartbeat("sa-watch", cfg.watch_idle + Duration::from_secs(90)));
        let shared = Arc::new(cache::Shared::new(cfg, Some(client.clone())));
        let ctl = Arc::new(watch::Control::with_heartbeat(heartbeat));
        let (s2, c2) = (shared.clone(), ctl.clone());
        let thread = std::thread::Builder::new()
            .name("sa-watch".into())
            .spawn(move || watch::run(client, s2, c2, backoff))
            .expect("spawn the ServiceAccount watcher thread");
        (
            SaCache { shared },
            WatcherHandle {
                ctl,
                thread: Some(thread),
            },
        )
    }

    /// A fixed, already-synced cache without an API server (for tests of other modules and
    /// the benchmarks). Items: `(namespace, name, record)`.
    pub fn from_records(records: impl IntoIterator<Item = (String, String, SaRecord)>) -> SaCache {
        let shared = cache::Shared::new(
            CacheConfig {
                lazy_get: false,
                ..CacheConfig::default()
            },
            None,
        );
        let map = records
            .into_iter()
            .map(|(ns, name, r)| (cache::cache_key(&ns, &name), Arc::new(r)))
            .collect();
        shared.replace_all(map);
        shared.set_healthy(true);
        SaCache {
            shared: Arc::new(shared),
        }
    }

    /// Cache hit → `Found`; otherwise a remembered lazy result, otherwise one bounded GET
    /// (single flight per key; 404 remembered for `negative_ttl`). `Unavailable` only while
    /// not synced and the GET failed.
    pub fn lookup(&self, namespace: &str, name: &str) -> Lookup {
        self.shared.lookup(namespace, name)
    }

    /// The cached record only (no GET).
    pub fn get_cached(&self, namespace: &str, name: &str) -> Option<Arc<SaRecord>> {
        self.shared.get_cached(namespace, name)
    }

    /// True after the first complete list.
    pub fn is_synced(&self) -> bool {
        self.shared.is_synced()
    }

    /// Synced, and the last list/watch attempt succeeded.
    pub fn is_healthy(&self) -> bool {
        let s = self.shared.status();
        s.synced && s.healthy
    }

    pub fn len(&self) -> usize {
        self.shared.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn status(&self) -> CacheStatus {
        self.shared.status()
    }

    /// Waits until synced or `timeout`; returns whether synced.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_synced() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// Owns the watcher thread. Dropping it stops the thread too.
pub struct WatcherHandle {
    ctl: Arc<watch::Control>,
    thread: Option<JoinHandle<()>>,
}

impl WatcherHandle {
    /// Signals the thread and waits up to 2 s for it. A thread blocked in a watch read notices
    /// at the next event, bookmark or stream end; it is then detached (it only reads).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.ctl.stop();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
