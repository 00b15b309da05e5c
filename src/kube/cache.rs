//! The ServiceAccount cache: a compact map `namespace/name → SaRecord` filled by the list+watch
//! thread (`watch.rs`), plus the lookup the decision calls: cache hit, else a short-lived
//! negative/positive entry, else one bounded lazy GET per key (single flight).
//!
//! It owns the cache contents, its counters and readiness flags. It must never clear the map
//! before a complete replacement is ready, never keep anything but the fields in [`SaRecord`],
//! and never let a flood of lookups for one missing account reach the API server more than
//! once per negative TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::api::{encode_query_value, ErrorKind, KubeClient};
use crate::metrics::{global, Counter, Gauge};

/// What the decision needs to know about one ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaRecord {
    pub uid: String,
    /// Annotations whose key starts with the configured prefix; full keys, sorted by key.
    pub annotations: Vec<(String, String)>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Opaque `metadata.resourceVersion`.
    pub resource_version: String,
}

impl SaRecord {
    /// The value of annotation `key` (full key, prefix included).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to "does this ServiceAccount exist, and what is it like?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Arc<SaRecord>),
    NotFound,
    /// The cache is not synced and the lazy GET failed: we cannot tell.
    Unavailable,
}

/// Settings of the cache and its watcher.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Watch only this namespace (`None` = cluster-wide).
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    /// Annotations kept (default `nats.io/`).
    pub annotation_prefix: String,
    pub page_size: u32,
    /// Server-side watch timeout before jitter (the request uses 90–100 % of it).
    pub watch_timeout: Duration,
    /// No byte for this long on a watch = dead connection (bookmarks arrive about every minute).
    pub watch_idle: Duration,
    /// Bound on one lazy GET (well under the NATS auth timeout of 2 s).
    pub lazy_get_deadline: Duration,
    /// How long a 404 from a lazy GET is remembered.
    pub negative_ttl: Duration,
    /// How long a lazy GET result is served before the watch is expected to have it.
    pub positive_ttl: Duration,
    /// Enable the lazy GET on cache misses.
    pub lazy_get: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            namespace: None,
            label_selector: None,
            annotation_prefix: "nats.io/".to_string(),
            page_size: 500,
            watch_timeout: Duration::from_secs(290),
            watch_idle: Duration::from_secs(120),
            lazy_get_deadline: Duration::from_millis(500),
            negative_ttl: Duration::from_secs(5),
            positive_ttl: Duration::from_secs(5),
            lazy_get: true,
        }
    }
}

/// The metadata we read from a ServiceAccount (list item, watch object, GET) or a Status.
#[derive(Debug, Default, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default, rename = "deletionTimestamp")]
    pub deletion_timestamp: Option<serde::de::IgnoredAny>,
}

/// A ServiceAccount (or a Status in watch ERROR events: then `code`/`reason`/`message` are set).
#[derive(Debug, Default, Deserialize)]
pub struct Object {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl Object {
    /// `(key, record)` if the object has namespace, name and uid.
    pub fn into_record(self, prefix: &str) -> Option<(Box<str>, SaRecord)> {
        let m = self.metadata;
        let key = cache_key(m.namespace.as_deref()?, m.name.as_deref()?);
        let mut annotations: Vec<(String, String)> = m
            .annotations
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect();
        annotations.sort_unstable();
        annotations.shrink_to_fit();
        Some((
            key,
            SaRecord {
                uid: m.uid?,
                annotations,
                deleting: m.deletion_timestamp.is_some(),
                resource_version: m.resource_version.unwrap_or_default(),
            },
        ))
    }
}

pub fn cache_key(namespace: &str, name: &str) -> Box<str> {
    let mut s = String::with_capacity(namespace.len() + name.len() + 1);
    s.push_str(namespace);
    s.push('/');
    s.push_str(name);
    s.into_boxed_str()
}

pub type SaMap = HashMap<Box<str>, Arc<SaRecord>>;

/// A point-in-time view of the cache state, for /readyz, /metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    /// The first complete list has been stored.
    pub synced: bool,
    /// The last list/watch attempt succeeded (false after errors such as 403, until recovery).
    pub healthy: bool,
    /// Unix seconds of the last list or watch event (0 = never).
    pub last_event_unix: u64,
    pub relists: u64,
    pub watch_restarts: u64,
    pub size: usize,
    /// `(kind, count)` for every error kind seen by this cache.
    pub api_errors: Vec<(&'static str, u64)>,
    /// `(result, count)` of lazy GETs: found, not_found, error.
    pub lazy_gets: Vec<(&'static str, u64)>,
}

struct Metrics {
    relists: Arc<Counter>,
    watch_restarts: Arc<Counter>,
    events: [Arc<Counter>; 4],
    errors: Vec<(ErrorKind, Arc<Counter>)>,
    lazy: [Arc<Counter>; 3],
    size: Arc<Gauge>,
    synced: Arc<Gauge>,
    healthy: Arc<Gauge>,
    last_event: Arc<Gauge>,
}

impl Metrics {
    fn new() -> Self {
        let r = global();
        let ev = |t: &str| {
            r.counter(
                "nats_k8s_callout_kube_watch_events_total",
                "ServiceAccount watch events received, by type.",
                &[("type", t)],
            )
        };
        let lazy = |res: &str| {
            r.counter(
                "nats_k8s_callout_sa_cache_lazy_gets_total",
                "GETs of single ServiceAccounts on a cache miss, by result.",
                &[("result", res)],
            )
        };
        Metrics {
            relists: r.counter(
                "nats_k8s_callout_kube_relists_total",
                "Complete lists of ServiceAccounts (initial and after 410/too large).",
                &[],
            ),
            watch_restarts: r.counter(
                "nats_k8s_callout_kube_watch_restarts_total",
                "Watch requests started after the first one.",
                &[],
            ),
            events: [ev("added"), ev("modified"), ev("deleted"), ev("bookmark")],
            errors: ErrorKind::ALL
                .iter()
                .map(|k| {
                    (
                        *k,
                        r.counter(
                            "nats_k8s_callout_kube_api_errors_total",
                            "Kubernetes API errors, by kind.",
                            &[("kind", k.as_str())],
                        ),
                    )
                })
                .collect(),
            lazy: [lazy("found"), lazy("not_found"), lazy("error")],
            size: r.gauge(
                "nats_k8s_callout_sa_cache_size",
                "ServiceAccounts in the cache.",
                &[],
            ),
            synced: r.gauge(
                "nats_k8s_callout_sa_cache_synced",
                "1 once the first complete list of ServiceAccounts is stored.",
                &[],
            ),
            healthy: r.gauge(
                "nats_k8s_callout_sa_cache_healthy",
                "1 while the last ServiceAccount list/watch attempt succeeded.",
                &[],
            ),
            last_event: r.gauge(
                "nats_k8s_callout_kube_last_event_timestamp_seconds",
                "Unix time of the last list or watch event.",
                &[],
            ),
        }
    }
}

/// The event types counted separately.
#[derive(Debug, Clone, Copy)]
pub enum EventType {
    Added = 0,
    Modified = 1,
    Deleted = 2,
    Bookmark = 3,
}

struct Flight {
    done: Mutex<Option<Lookup>>,
    cv: Condvar,
}

/// Shared state between the lookup side and the watcher thread.
pub struct Shared {
    pub(crate) cfg: CacheConfig,
    pub(crate) client: Option<Arc<KubeClient>>,
    map: RwLock<SaMap>,
    /// Results of lazy GETs: `Some` = found, `None` = 404; with expiry.
    lazy: Mutex<HashMap<Box<str>, LazyEntry>>,
    inflight: Mutex<HashMap<Box<str>, Arc<Flight>>>,
    synced: AtomicBool,
    healthy: AtomicBool,
    last_event_unix: AtomicU64,
    relists: AtomicU64,
    watch_restarts: AtomicU64,
    errors: Mutex<HashMap<ErrorKind, u64>>,
    lazy_counts: [AtomicU64; 3],
    /// Bumped on every delete: a lazy GET that raced with one is not remembered.
    deletions: AtomicU64,
    metrics: Metrics,
}

/// A lazy GET result with its expiry: `Some` = found, `None` = 404.
type LazyEntry = (Instant, Option<Arc<SaRecord>>);

const LAZY_MAX_ENTRIES: usize = 10_000;

impl Shared {
    pub fn new(cfg: CacheConfig, client: Option<Arc<KubeClient>>) -> Self {
        Shared {
            cfg,
            client,
            map: RwLock::new(HashMap::new()),
            lazy: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            synced: AtomicBool::new(false),
            healthy: AtomicBool::new(false),
            last_event_unix: AtomicU64::new(0),
            relists: AtomicU64::new(0),
            watch_restarts: AtomicU64::new(0),
            errors: Mutex::new(HashMap::new()),
            lazy_counts: Default::default(),
            deletions: AtomicU64::new(0),
            metrics: Metrics::new(),
        }
    }

    // ---- writer side (the watcher thread) ----

    /// Replaces the whole map atomically (after a complete list).
    pub fn replace_all(&self, map: SaMap) {
        let n = map.len();
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        // A relist may reveal deletions: remembered lazy answers are not trusted past it.
        self.lazy.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.deletions.fetch_add(1, Ordering::SeqCst);
        self.metrics.size.set(n as i64);
        self.metrics.relists.inc();
        self.relists.fetch_add(1, Ordering::Relaxed);
        self.synced.store(true, Ordering::Release);
        self.metrics.synced.set(1);
        self.touch();
    }

    pub fn upsert(&self, key: Box<str>, rec: SaRecord, ev: EventType) {
        let n = {
            let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
            m.insert(key, Arc::new(rec));
            m.len()
        };
        self.metrics.size.set(n as i64);
        self.event(ev);
    }

    pub fn remove(&self, key: &str) {
        let n = {
            let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
            m.remove(key);
            m.len()
        };
        self.deletions.fetch_add(1, Ordering::SeqCst);
        // A lazy positive entry must not outlive a delete.
        self.lazy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.metrics.size.set(n as i64);
        self.event(EventType::Deleted);
    }

    pub fn event(&self, ev: EventType) {
        self.metrics.events[ev as usize].inc();
        self.touch();
    }

    fn touch(&self) {
        let now = crate::clock::unix_now();
        self.last_event_unix.store(now, Ordering::Relaxed);
        self.metrics.last_event.set(now as i64);
    }

    pub fn watch_restarted(&self) {
        self.watch_restarts.fetch_add(1, Ordering::Relaxed);
        self.metrics.watch_restarts.inc();
    }

    pub fn api_error(&self, kind: ErrorKind) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        if let Some((_, c)) = self.metrics.errors.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
    }

    pub fn set_healthy(&self, h: bool) {
        self.healthy.store(h, Ordering::Relaxed);
        self.metrics.healthy.set(i64::from(h));
    }

    // ---- reader side ----

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get_cached(&self, namespace: &str, name: &str) -> Option<Arc<SaRecord>> {
        let key = cache_key(namespace, name);
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    pub fn status(&self) -> CacheStatus {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        CacheStatus {
            synced: self.is_synced(),
            healthy: self.healthy.load(Ordering::Relaxed),
            last_event_unix: self.last_event_unix.load(Ordering::Relaxed),
            relists: self.relists.load(Ordering::Relaxed),
            watch_restarts: self.watch_restarts.load(Ordering::Relaxed),
            size: self.len(),
            api_errors: ErrorKind::ALL
                .iter()
                .filter_map(|k| errors.get(k).map(|n| (k.as_str(), *n)))
                .collect(),
            lazy_gets: ["found", "not_found", "error"]
                .iter()
                .zip(&self.lazy_counts)
                .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Cache, then remembered lazy results, then a single-flight lazy GET.
    pub fn lookup(&self, namespace: &str, name: &str) -> Lookup {
        let key = cache_key(namespace, name);
        if let Some(r) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Lookup::Found(r.clone());
        }
        let now = Instant::now();
        if let Some((exp, r)) = self
            .lazy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if *exp > now {
                return match r {
                    Some(r) => Lookup::Found(r.clone()),
                    None => Lookup::NotFound,
                };
            }
        }
        let fallback = if self.is_synced() {
            Lookup::NotFound
        } else {
            Lookup::Unavailable
        };
        let Some(client) = self.client.as_ref().filter(|_| self.cfg.lazy_get) else {
            return fallback;
        };
        if !valid_name(namespace) || !valid_name(name) {
            return Lookup::NotFound;
        }
        // Single flight: the first caller fetches, the others wait for its answer.
        let (flight, leader) = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight {
                        done: Mutex::new(None),
                        cv: Condvar::new(),
                    });
                    inflight.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let deadline = now + self.cfg.lazy_get_deadline + Duration::from_millis(50);
            let mut done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
            while done.is_none() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return fallback;
                }
                done = flight
                    .cv
                    .wait_timeout(done, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            return done.clone().unwrap_or(fallback);
        }
        let result = self.fetch_one(client, namespace, name, &key, fallback);
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        *flight.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.clone());
        flight.cv.notify_all();
        result
    }

    fn fetch_one(
        &self,
        client: &KubeClient,
        namespace: &str,
        name: &str,
        key: &str,
        fallback: Lookup,
    ) -> Lookup {
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}",
            encode_query_value(namespace),
            encode_query_value(name)
        );
        let deletions = self.deletions.load(Ordering::SeqCst);
        let res = client.get_json::<Object>(&path, Some(self.cfg.lazy_get_deadline));
        let (result, remembered, ttl) = match res {
            Ok(obj) => match obj.into_record(&self.cfg.annotation_prefix) {
                Some((_, rec)) => {
                    let rec = Arc::new(rec);
                    self.lazy_counts[0].fetch_add(1, Ordering::Relaxed);
                    self.metrics.lazy[0].inc();
                    (
                        Lookup::Found(rec.clone()),
                        Some(Some(rec)),
                        self.cfg.positive_ttl,
                    )
                }
                None => {
                    self.api_error(ErrorKind::Decode);
                    self.lazy_counts[2].fetch_add(1, Ordering::Relaxed);
                    self.metrics.lazy[2].inc();
                    (fallback, None, Duration::ZERO)
                }
            },
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.lazy_counts[1].fetch_add(1, Ordering::Relaxed);
                self.metrics.lazy[1].inc();
                (Lookup::NotFound, Some(None), self.cfg.negative_ttl)
            }
            Err(e) => {
                log::warn!(kind = e.kind.as_str(), namespace = namespace; "lazy ServiceAccount GET failed: {}", e.message);
                self.api_error(e.kind);
                self.lazy_counts[2].fetch_add(1, Ordering::Relaxed);
                self.metrics.lazy[2].inc();
                (fallback, None, Duration::ZERO)
            }
        };
        // A delete seen by the watch while the GET was in flight may be newer than its answer:
        // answer this caller, but do not remember a possibly stale "found".
        let raced = self.deletions.load(Ordering::SeqCst) != deletions;
        if let Some(entry) = remembered.filter(|e| e.is_none() || !raced) {
            let now = Instant::now();
            let mut lazy = self.lazy.lock().unwrap_or_else(|p| p.into_inner());
            if lazy.len() >= LAZY_MAX_ENTRIES {
                lazy.retain(|_, (exp, _)| *exp > now);
                if lazy.len() >= LAZY_MAX_ENTRIES {
                    lazy.clear();
                }
            }
            lazy.insert(key.into(), (now + ttl, entry));
        }
        result
    }
}

/// A DNS-1123 subdomain-ish name (what namespaces and ServiceAccount names may be): we refuse
/// to put anything else into a URL path.
fn valid_name(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_only_prefixed_annotations_and_the_deletion_flag() {
        let obj: Object = serde_json::from_str(
            r#"{"kind":"ServiceAccount","metadata":{"name":"a","namespace":"ns","uid":"u1","resourceVersion":"7",
            "deletionTimestamp":"2026-01-01T00:00:00Z",
            "annotations":{"nats.io/b":"2","nats.io/a":"1","other.io/x":"y","nats.iox":"z"},
            "managedFields":[{"manager":"x"}]}}"#,
        )
        .unwrap();
        let (k, r) = obj.into_record("nats.io/").unwrap();
        assert_eq!(&*k, "ns/a");
        assert_eq!(r.uid, "u1");
        assert!(r.deleting);
        assert_eq!(r.resource_version, "7");
        assert_eq!(
            r.annotations,
            vec![
                ("nats.io/a".into(), "1".into()),
                ("nats.io/b".into(), "2".into())
            ]
        );
        assert_eq!(r.annotation("nats.io/b"), Some("2"));
        let no_uid: Object =
            serde_json::from_str(r#"{"metadata":{"name":"a","namespace":"n"}}"#).unwrap();
        assert!(no_uid.into_record("nats.io/").is_none());
    }

    #[test]
    fn lookup_without_client_is_unavailable_until_synced() {
        let s = Shared::new(CacheConfig::default(), None);
        assert_eq!(s.lookup("ns", "a"), Lookup::Unavailable);
        let mut m = SaMap::new();
        let (k, r) = serde_json::from_str::<Object>(
            r#"{"metadata":{"name":"a","namespace":"ns","uid":"u"}}"#,
        )
        .unwrap()
        .into_record("nats.io/")
        .unwrap();
        m.insert(k, Arc::new(r));
        s.replace_all(m);
        assert!(matches!(s.lookup("ns", "a"), Lookup::Found(r) if r.uid == "u"));
        assert_eq!(s.lookup("ns", "b"), Lookup::NotFound);
        s.remove("ns/a");
        assert_eq!(s.lookup("ns", "a"), Lookup::NotFound);
    }

    #[test]
    fn names_that_cannot_be_kubernetes_names_are_refused() {
        assert!(valid_name("shop-1.x"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("A"));
        assert!(!valid_name(".."));
        assert!(!valid_name(""));
    }
}
