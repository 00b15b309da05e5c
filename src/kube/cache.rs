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

use super::api::{encode_query_value, ApiError, ErrorKind, KubeClient};
use crate::metrics::{global, Counter, Gauge};
use crate::policy::{is_dns_label, is_dns_subdomain};

/// What the decision needs to know about one ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaRecord {
    pub uid: Uid,
    /// Annotations whose key starts with the configured prefix; full keys (shared between
    /// records), sorted by key. Empty costs no allocation.
    pub annotations: Box<[(Arc<str>, Box<str>)]>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Opaque `metadata.resourceVersion`.
    pub resource_version: ResourceVersion,
}

impl SaRecord {
    /// The value of annotation `key` (full key, prefix included).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| **k == *key)
            .map(|(_, v)| &**v)
    }
}

/// A ServiceAccount UID, compared exactly like the string it came from. Stored in 16 bytes
/// when it is a canonical UUID (lowercase hex, hyphenated: what Kubernetes generates), else
/// as the string itself.
#[derive(Clone)]
pub enum Uid {
    Uuid([u8; 16]),
    Other(Box<str>),
}

impl Uid {
    pub fn new(s: &str) -> Uid {
        match parse_uuid(s) {
            Some(b) => Uid::Uuid(b),
            None => Uid::Other(s.into()),
        }
    }

    /// Exactly `self.to_string() == s`, without formatting.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Uid::Uuid(b) => parse_uuid(s).as_ref() == Some(b),
            Uid::Other(o) => **o == *s,
        }
    }
}

/// The 16 bytes of a canonical UUID string (36 characters, lowercase hex, hyphens at 8, 13,
/// 18, 23); `None` for anything else, so that the bytes format back to the same string.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[n] = (hex(b[i])? << 4) | hex(b[i + 1])?;
        n += 1;
        i += 2;
    }
    Some(out)
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Uuid(b) => {
                for (i, x) in b.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
            Uid::Other(s) => f.write_str(s),
        }
    }
}

impl std::fmt::Debug for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl PartialEq for Uid {
    fn eq(&self, other: &Uid) -> bool {
        match (self, other) {
            (Uid::Uuid(a), Uid::Uuid(b)) => a == b,
            (a, Uid::Other(s)) => a.matches(s),
            (Uid::Other(s), b) => b.matches(s),
        }
    }
}
impl Eq for Uid {}

impl PartialEq<str> for Uid {
    fn eq(&self, s: &str) -> bool {
        self.matches(s)
    }
}
impl PartialEq<&str> for Uid {
    fn eq(&self, s: &&str) -> bool {
        self.matches(s)
    }
}
impl PartialEq<String> for Uid {
    fn eq(&self, s: &String) -> bool {
        self.matches(s)
    }
}
impl PartialEq<Uid> for String {
    fn eq(&self, u: &Uid) -> bool {
        u.matches(self)
    }
}

/// An opaque `metadata.resourceVersion`, compared like the string. Stored inline when it is a
/// canonical decimal number (what etcd-backed API servers send), else as the string.
#[derive(Clone)]
pub enum ResourceVersion {
    Number(u64),
    Other(Box<str>),
}

impl ResourceVersion {
    pub fn new(s: &str) -> ResourceVersion {
        match parse_decimal(s) {
            Some(n) => ResourceVersion::Number(n),
            None => ResourceVersion::Other(s.into()),
        }
    }

    /// Exactly `self.to_string() == s`.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            ResourceVersion::Number(n) => parse_decimal(s) == Some(*n),
            ResourceVersion::Other(o) => **o == *s,
        }
    }
}

/// A decimal without sign or leading zeros that fits a u64 (formats back to the same string).
fn parse_decimal(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 20 || (b[0] == b'0' && b.len() > 1) {
        return None;
    }
    if !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.parse().ok()
}

impl std::fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceVersion::Number(n) => write!(f, "{n}"),
            ResourceVersion::Other(s) => f.write_str(s),
        }
    }
}

impl std::fmt::Debug for ResourceVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl PartialEq for ResourceVersion {
    fn eq(&self, other: &ResourceVersion) -> bool {
        match (self, other) {
            (ResourceVersion::Number(a), ResourceVersion::Number(b)) => a == b,
            (a, ResourceVersion::Other(s)) => a.matches(s),
            (ResourceVersion::Other(s), b) => b.matches(s),
        }
    }
}
impl Eq for ResourceVersion {}

impl PartialEq<&str> for ResourceVersion {
    fn eq(&self, s: &&str) -> bool {
        self.matches(s)
    }
}
impl PartialEq<String> for ResourceVersion {
    fn eq(&self, s: &String) -> bool {
        self.matches(s)
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
    /// Where the watcher thread registers its heartbeat (liveness), if anywhere.
    pub health: Option<Arc<crate::http::Health>>,
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
            health: None,
        }
    }
}

/// The metadata we read from a ServiceAccount (list item, watch object, GET) or a Status.
/// Everything else (`managedFields`, labels, other fields) is skipped without allocating.
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
    pub annotations: Option<KeptAnnotations>,
    #[serde(default, rename = "deletionTimestamp")]
    pub deletion_timestamp: Option<serde::de::IgnoredAny>,
}

/// `metadata.annotations`, keeping only the keys that start with the prefix set by
/// [`with_annotation_prefix`] (all keys when none is set): other keys are read into the
/// parser's scratch buffer and their values skipped, so a large
/// `kubectl.kubernetes.io/last-applied-configuration` is never materialised.
#[derive(Debug, Default)]
pub struct KeptAnnotations(pub Vec<(Box<str>, Box<str>)>);

thread_local! {
    static KEEP_PREFIX: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (which parses ServiceAccounts on this thread) keeping only annotations under
/// `prefix`. `Object::into_record` filters by prefix again, so this only saves memory.
pub fn with_annotation_prefix<T>(prefix: &str, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<String>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take();
            KEEP_PREFIX.with_borrow_mut(|p| *p = old);
        }
    }
    let _restore = Restore(KEEP_PREFIX.with_borrow_mut(|p| p.replace(prefix.to_string())));
    f()
}

impl<'de> Deserialize<'de> for KeptAnnotations {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
        /// A key: `Some` (allocated) when kept, `None` (not allocated) otherwise.
        struct Key;
        impl<'de> DeserializeSeed<'de> for Key {
            type Value = Option<Box<str>>;
            fn deserialize<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Self::Value, D::Error> {
                d.deserialize_str(self)
            }
        }
        impl Visitor<'_> for Key {
            type Value = Option<Box<str>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an annotation key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Self::Value, E> {
                let keep =
                    KEEP_PREFIX.with_borrow(|p| p.as_deref().is_none_or(|p| k.starts_with(p)));
                Ok(keep.then(|| k.into()))
            }
        }
        struct Map;
        impl<'de> Visitor<'de> for Map {
            type Value = KeptAnnotations;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an annotations object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut kept = Vec::new();
                while let Some(k) = m.next_key_seed(Key)? {
                    match k {
                        Some(k) => kept.push((k, m.next_value::<Box<str>>()?)),
                        None => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(KeptAnnotations(kept))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeptAnnotations::default())
            }
        }
        d.deserialize_any(Map)
    }
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
        let uid = Uid::new(m.uid.as_deref()?);
        let mut kept = m.annotations.unwrap_or_default().0;
        kept.retain(|(k, _)| k.starts_with(prefix));
        // Duplicate keys: the last one wins (as a JSON object read into a map would).
        kept.reverse();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        kept.dedup_by(|a, b| a.0 == b.0);
        let annotations = kept.into_iter().map(|(k, v)| (intern_key(&k), v)).collect();
        Some((
            key,
            SaRecord {
                uid,
                annotations,
                deleting: m.deletion_timestamp.is_some(),
                resource_version: ResourceVersion::new(m.resource_version.as_deref().unwrap_or("")),
            },
        ))
    }
}

/// One shared copy of each annotation key (there are only a few distinct ones: the policy's
/// two). Bounded: past 64 distinct keys, new ones get their own copy.
fn intern_key(k: &str) -> Arc<str> {
    static KEYS: Mutex<Vec<Arc<str>>> = Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = keys.iter().find(|a| ***a == *k) {
        return a.clone();
    }
    let a: Arc<str> = k.into();
    if keys.len() < 64 {
        keys.push(a.clone());
    }
    a
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
        let old = std::mem::replace(
            &mut *self.map.write().unwrap_or_else(|p| p.into_inner()),
            map,
        );
        // Freed outside the lock (readers are not held up), and its pages given back.
        drop(old);
        release_free_memory();
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

    /// The cached record for `key` if it equals `rec`: a relist shares unchanged records with
    /// the map it replaces instead of holding two copies.
    pub fn unchanged(&self, key: &str, rec: &SaRecord) -> Option<Arc<SaRecord>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|old| ***old == *rec)
            .cloned()
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
        // Never put anything but a valid name into a URL path. With K8S_NAMESPACE, another
        // namespace's ServiceAccounts do not exist for us (the API server may still answer a GET).
        if !is_dns_label(namespace)
            || !is_dns_subdomain(name)
            || self
                .cfg
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != namespace)
        {
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
        let deadline = Some(self.cfg.lazy_get_deadline);
        let res = with_annotation_prefix(&self.cfg.annotation_prefix, || {
            let Some(selector) = &self.cfg.label_selector else {
                return client.get_json::<Object>(&path, deadline);
            };
            // A GET ignores K8S_LABEL_SELECTOR: list this one name with the selector instead,
            // so an account the watch does not select is not found either.
            #[derive(Deserialize)]
            struct Items {
                #[serde(default)]
                items: Vec<Object>,
            }
            let list = format!(
                "/api/v1/namespaces/{}/serviceaccounts?fieldSelector={}&labelSelector={}",
                encode_query_value(namespace),
                encode_query_value(&format!("metadata.name={name}")),
                encode_query_value(selector)
            );
            client
                .get_json::<Items>(&list, deadline)?
                .items
                .into_iter()
                .find(|o| o.metadata.name.as_deref() == Some(name))
                .ok_or_else(|| ApiError::new(ErrorKind::NotFound, Some(404), "not selected"))
        });
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

/// Returns freed heap pages to the system (after a relist dropped the old map).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of / inside the heap.
    unsafe {
        libc::malloc_trim(0);
    }
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
        let kept: Vec<(&str, &str)> = r.annotations.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(kept, [("nats.io/a", "1"), ("nats.io/b", "2")]);
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
    fn uids_compare_exactly_like_their_strings() {
        let canon = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
        let u = Uid::new(canon);
        assert!(matches!(u, Uid::Uuid(_)));
        assert_eq!(u.to_string(), canon);
        assert_eq!(u, canon);
        assert_eq!(u, Uid::Other(canon.into()), "same string, other storage");
        // Anything that is not byte-for-byte the same string is a different UID.
        for other in [
            "0F1E2D3C-4B5A-4968-8776-A5B4C3D2E1F0",
            "0f1e2d3c4b5a49688776a5b4c3d2e1f0",
            "{0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0}",
            "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f1",
            "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0 ",
            "0f1e2d3c-4b5a-4968-8776+a5b4c3d2e1f0",
            "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1g0",
            "",
        ] {
            assert_ne!(u, other, "{other:?}");
            assert_ne!(u, Uid::new(other), "{other:?}");
            let kept = Uid::new(other);
            assert!(
                matches!(kept, Uid::Other(_)) || other.len() == 36,
                "{other:?}"
            );
            assert_eq!(kept.to_string(), other, "kept as given");
        }
        let odd = Uid::new("not-a-uuid");
        assert_eq!(odd, "not-a-uuid");
        assert_ne!(odd, "not-a-uuiD");
    }

    #[test]
    fn a_record_fits_in_72_bytes() {
        // With the Arc counts: 88 bytes, one 96-byte malloc chunk (glibc) per account.
        assert!(
            std::mem::size_of::<SaRecord>() <= 72,
            "{}",
            std::mem::size_of::<SaRecord>()
        );
    }

    #[test]
    fn resource_versions_compare_exactly_like_their_strings() {
        for (s, inline) in [
            ("0", true),
            ("1305", true),
            ("18446744073709551615", true),
            ("18446744073709551616", false),
            ("007", false),
            ("+7", false),
            ("", false),
            ("abc", false),
        ] {
            let rv = ResourceVersion::new(s);
            assert_eq!(matches!(rv, ResourceVersion::Number(_)), inline, "{s:?}");
            assert_eq!(rv.to_string(), s);
            assert_eq!(rv, s);
        }
        assert_ne!(ResourceVersion::new("7"), "07");
        assert_ne!(ResourceVersion::new("07"), "7");
        assert_eq!(
            ResourceVersion::new("7"),
            ResourceVersion::Other("7".into())
        );
    }

    #[test]
    fn only_prefixed_annotations_are_parsed_and_the_last_duplicate_wins() {
        let json = r#"{"metadata":{"name":"a","namespace":"ns","uid":"u","annotations":{
            "kubectl.kubernetes.io/last-applied-configuration":"{\"big\":true}",
            "nats.io/x":"1","nats.io/x":"2","nats.io/a":"0","nats.iox":"no"}}}"#;
        let obj: Object =
            with_annotation_prefix("nats.io/", || serde_json::from_str(json)).unwrap();
        let parsed = obj.metadata.annotations.as_ref().unwrap();
        assert!(
            parsed.0.iter().all(|(k, _)| k.starts_with("nats.io/")),
            "{parsed:?}"
        );
        let (_, r) = obj.into_record("nats.io/").unwrap();
        assert_eq!(r.annotation("nats.io/x"), Some("2"));
        assert_eq!(r.annotation("nats.io/a"), Some("0"));
        assert_eq!(r.annotations.len(), 2);
        // Without a prefix set (e.g. a plain serde_json call), all are parsed and
        // into_record still filters.
        let obj: Object = serde_json::from_str(json).unwrap();
        assert_eq!(obj.metadata.annotations.as_ref().unwrap().0.len(), 5);
        let (_, r2) = obj.into_record("nats.io/").unwrap();
        assert_eq!(r, r2);
        // Keys are shared between records.
        assert!(Arc::ptr_eq(&r.annotations[0].0, &r2.annotations[0].0));
    }

    #[test]
    fn an_unchanged_record_is_shared_with_the_map_a_relist_replaces() {
        let s = Shared::new(CacheConfig::default(), None);
        let rec = |rv: &str| {
            let json = format!(
                r#"{{"metadata":{{"name":"a","namespace":"ns","uid":"u","resourceVersion":"{rv}"}}}}"#
            );
            serde_json::from_str::<Object>(&json)
                .unwrap()
                .into_record("nats.io/")
                .unwrap()
                .1
        };
        let mut m = SaMap::new();
        m.insert(cache_key("ns", "a"), Arc::new(rec("5")));
        s.replace_all(m);
        let old = s.get_cached("ns", "a").unwrap();
        assert!(Arc::ptr_eq(&s.unchanged("ns/a", &rec("5")).unwrap(), &old));
        assert!(s.unchanged("ns/a", &rec("6")).is_none());
        assert!(s.unchanged("ns/b", &rec("5")).is_none());
    }
}
