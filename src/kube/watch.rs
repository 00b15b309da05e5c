//! The list+watch state machine (k8s-side §4.6), run on its own thread:
//! list all pages → swap the cache → watch from the list RV → apply events, follow bookmarks →
//! on clean EOF re-watch from the last RV; on 410 / 504 TooLarge relist; on other errors back
//! off (800 ms ×2 → 30 s, reset after 2 min healthy) and retry the same state.
//!
//! It must never clear the cache before a complete list is in hand, never buffer a watch body
//! whole, and never log a token.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::api::{classify, encode_query_value, ApiError, ErrorKind, KubeClient, Status};
use super::cache::{with_annotation_prefix, EventType, Object, SaMap, Shared};
use crate::backoff::{random_u64, Backoff};

/// Stop signal shared between the watcher thread and its handle, and the thread's heartbeat.
#[derive(Debug, Default)]
pub struct Control {
    stopped: Mutex<bool>,
    cv: Condvar,
    heartbeat: Option<crate::http::Heartbeat>,
}

impl Control {
    /// A control whose thread beats `heartbeat` on every event and every wake-up.
    pub fn with_heartbeat(heartbeat: Option<crate::http::Heartbeat>) -> Self {
        Control {
            heartbeat,
            ..Control::default()
        }
    }

    /// The watcher thread is alive (liveness).
    pub fn beat(&self) {
        if let Some(h) = &self.heartbeat {
            h.beat();
        }
    }

    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps `d` unless stopped first; returns whether we were stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        self.beat();
        let deadline = Instant::now() + d;
        let mut s = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*s {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
    #[serde(default, rename = "remainingItemCount")]
    remaining_item_count: Option<u64>,
}

#[derive(Deserialize)]
struct List {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Object>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: Object,
}

const MAX_PAGES: usize = 10_000;
/// Bound on the map size reserved from a list's `remainingItemCount`.
const MAX_PRESIZE: u64 = 1_000_000;

fn collection_path(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!(
            "/api/v1/namespaces/{}/serviceaccounts",
            encode_query_value(ns)
        ),
        None => "/api/v1/serviceaccounts".to_string(),
    }
}

/// Lists every page (no resourceVersion: a consistent, most-recent read) into a new map.
/// Returns the map and the list's resourceVersion.
pub fn list_all(client: &KubeClient, shared: &Shared) -> Result<(SaMap, String), ApiError> {
    let cfg = &shared.cfg;
    let mut query = format!(
        "{}?limit={}",
        collection_path(cfg.namespace.as_deref()),
        cfg.page_size
    );
    if let Some(sel) = &cfg.label_selector {
        query.push_str("&labelSelector=");
        query.push_str(&encode_query_value(sel));
    }
    let mut map = HashMap::new();
    let mut cont: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let path = match &cont {
            Some(c) => format!("{query}&continue={}", encode_query_value(c)),
            None => query.clone(),
        };
        // One page at a time, parsed from the body stream; only our annotations are kept.
        let list: List =
            with_annotation_prefix(&cfg.annotation_prefix, || client.get_json(&path, None))?;
        if map.capacity() == 0 {
            // Size the map once from the first page (no rehash peaks while it grows).
            let total = list.items.len() as u64 + list.metadata.remaining_item_count.unwrap_or(0);
            map.reserve(total.min(MAX_PRESIZE) as usize);
        }
        for item in list.items {
            if let Some((k, r)) = item.into_record(&cfg.annotation_prefix) {
                let r = shared.unchanged(&k, &r).unwrap_or_else(|| Arc::new(r));
                map.insert(k, r);
            }
        }
        match list.metadata.continue_token.filter(|c| !c.is_empty()) {
            Some(c) => cont = Some(c),
            None => {
                let rv = list.metadata.resource_version.unwrap_or_default();
                if rv.is_empty() {
                    return Err(ApiError::new(
                        ErrorKind::Decode,
                        None,
                        "list without metadata.resourceVersion",
                    ));
                }
                map.shrink_to_fit();
                return Ok((map, rv));
            }
        }
    }
    Err(ApiError::new(
        ErrorKind::Decode,
        None,
        "list did not end after 10000 pages",
    ))
}

/// How a watch ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// The server closed the stream cleanly; `events` counts what we received.
    Eof {
        events: u64,
    },
    Stopped,
}

/// One watch request from `rv`, applying events to the cache and advancing `rv`.
pub fn watch_once(
    client: &KubeClient,
    shared: &Shared,
    rv: &mut String,
    ctl: &Control,
    on_open: &mut dyn FnMut(),
) -> Result<WatchEnd, ApiError> {
    let cfg = &shared.cfg;
    let base = cfg.watch_timeout.as_secs().max(1);
    let timeout = base - random_u64() % (base / 10 + 1);
    let mut path = format!(
        "{}?watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={timeout}",
        collection_path(cfg.namespace.as_deref()),
        encode_query_value(rv)
    );
    if let Some(sel) = &cfg.label_selector {
        path.push_str("&labelSelector=");
        path.push_str(&encode_query_value(sel));
    }
    let stream = client.open_stream(&path, cfg.watch_idle, Duration::from_secs(timeout + 30))?;
    on_open();
    consume(stream, shared, rv, ctl)
}

/// Applies a stream of watch events (JSON values, any chunking) until EOF, error or stop.
pub fn consume(
    stream: impl std::io::Read,
    shared: &Shared,
    rv: &mut String,
    ctl: &Control,
) -> Result<WatchEnd, ApiError> {
    // Only our annotations are kept while events are parsed on this thread.
    with_annotation_prefix(&shared.cfg.annotation_prefix, || {
        consume_events(stream, shared, rv, ctl)
    })
}

fn consume_events(
    stream: impl std::io::Read,
    shared: &Shared,
    rv: &mut String,
    ctl: &Control,
) -> Result<WatchEnd, ApiError> {
    let mut events = 0u64;
    for ev in serde_json::Deserializer::from_reader(stream).into_iter::<Event>() {
        ctl.beat();
        if ctl.is_stopped() {
            return Ok(WatchEnd::Stopped);
        }
        let ev = ev.map_err(|e| {
            if e.is_io() || e.is_eof() {
                ApiError::new(
                    ErrorKind::Transport,
                    None,
                    format!("watch stream broken: {e}"),
                )
            } else {
                ApiError::new(ErrorKind::Decode, None, format!("watch event: {e}"))
            }
        })?;
        events += 1;
        apply(shared, ev, rv)?;
    }
    Ok(WatchEnd::Eof { events })
}

fn apply(shared: &Shared, ev: Event, rv: &mut String) -> Result<(), ApiError> {
    let prefix = &shared.cfg.annotation_prefix;
    let new_rv = ev.object.metadata.resource_version.clone();
    match ev.kind.as_str() {
        "ADDED" | "MODIFIED" => {
            let t = if ev.kind == "ADDED" {
                EventType::Added
            } else {
                EventType::Modified
            };
            match ev.object.into_record(prefix) {
                Some((k, r)) => shared.upsert(k, r, t),
                None => log::warn!("watch event without namespace/name/uid ignored"),
            }
        }
        "DELETED" => {
            let m = &ev.object.metadata;
            if let (Some(ns), Some(name)) = (m.namespace.as_deref(), m.name.as_deref()) {
                shared.remove(&super::cache::cache_key(ns, name));
            }
        }
        "BOOKMARK" => shared.event(EventType::Bookmark),
        "ERROR" => {
            let o = ev.object;
            let code = o.code.unwrap_or(500);
            let reason = o.reason.clone().unwrap_or_default();
            let status = Status {
                code: o.code,
                reason: o.reason,
                message: o.message.clone(),
                details: None,
            };
            let kind = if code == 410 || reason == "Expired" || reason == "Gone" {
                ErrorKind::Gone
            } else {
                classify(code, &status)
            };
            return Err(ApiError::new(
                kind,
                Some(code),
                format!("watch ERROR event: {}", o.message.unwrap_or_default()),
            ));
        }
        other => {
            return Err(ApiError::new(
                ErrorKind::Decode,
                None,
                format!("unknown watch event type {other:?}"),
            ))
        }
    }
    if let Some(v) = new_rv.filter(|v| !v.is_empty()) {
        *rv = v;
    }
    Ok(())
}

/// The watcher thread body: runs until `ctl` is stopped.
pub fn run(client: Arc<KubeClient>, shared: Arc<Shared>, ctl: Arc<Control>, mut backoff: Backoff) {
    let mut rv: Option<String> = None;
    let mut watches = 0u64;
    while !ctl.is_stopped() {
        ctl.beat();
        let Some(cur) = rv.as_mut() else {
            match list_all(&client, &shared) {
                Ok((map, list_rv)) => {
                    log::info!(size = map.len(), resource_version = list_rv.as_str(); "ServiceAccount list complete");
                    shared.replace_all(map);
                    shared.set_healthy(true);
                    rv = Some(list_rv);
                }
                Err(e) => {
                    failed(&shared, &e, "list");
                    if ctl.sleep(backoff.next_delay()) {
                        break;
                    }
                }
            }
            continue;
        };
        if watches > 0 {
            shared.watch_restarted();
        }
        watches += 1;
        let started = Instant::now();
        let mut on_open = || {
            shared.set_healthy(true);
            backoff.succeeded();
        };
        match watch_once(&client, &shared, cur, &ctl, &mut on_open) {
            Ok(WatchEnd::Stopped) => break,
            Ok(WatchEnd::Eof { events }) => {
                // A watch that ends at once without events is suspicious (client-go's
                // "very short watch"): pause briefly instead of spinning.
                if events == 0 && started.elapsed() < Duration::from_secs(1) {
                    log::warn!("very short watch without events; backing off");
                    if ctl.sleep(backoff.next_delay()) {
                        break;
                    }
                }
            }
            Err(e) if e.kind.needs_relist() => {
                shared.api_error(e.kind);
                log::info!(kind = e.kind.as_str(); "watch needs a relist: {}", e.message);
                rv = None;
            }
            Err(e) => {
                failed(&shared, &e, "watch");
                if ctl.sleep(backoff.next_delay()) {
                    break;
                }
            }
        }
    }
    log::debug!("ServiceAccount watcher stopped");
}

fn failed(shared: &Shared, e: &ApiError, what: &str) {
    shared.api_error(e.kind);
    shared.set_healthy(false);
    match e.kind {
        ErrorKind::Forbidden => log::error!(kind = e.kind.as_str(), op = what;
            "Kubernetes API refused access to ServiceAccounts (check RBAC get/list/watch and that the token file is not empty): {}", e.message),
        ErrorKind::Unauthorized => log::error!(kind = e.kind.as_str(), op = what;
            "Kubernetes API rejected our token; re-reading the token file: {}", e.message),
        _ => log::warn!(kind = e.kind.as_str(), op = what; "Kubernetes API error: {}", e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::cache::{cache_key, CacheConfig, ResourceVersion, Uid};
    use std::io::Read;

    /// Hands out one byte per read: chunk boundaries everywhere.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.split_first() {
                Some((b, rest)) if !buf.is_empty() => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn shared_with(items: &[(&str, &str, &str)]) -> Shared {
        let s = Shared::new(
            CacheConfig {
                annotation_prefix: "nats.example.io/".into(),
                ..CacheConfig::default()
            },
            None,
        );
        let map = items
            .iter()
            .map(|(ns, n, uid)| {
                let rec = super::super::cache::SaRecord {
                    uid: Uid::new(uid),
                    annotations: Box::new([]),
                    deleting: false,
                    resource_version: ResourceVersion::new("1"),
                };
                (cache_key(ns, n), Arc::new(rec))
            })
            .collect();
        s.replace_all(map);
        s
    }

    const STREAM: &str = r#"{"type":"ADDED","object":{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"reporter","namespace":"shop","uid":"u-rep","resourceVersion":"1305"}}}
{"type":"MODIFIED","object":{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"orders-api","namespace":"shop","uid":"u-ord","resourceVersion":"1310","annotations":{"nats.example.io/publish":"orders.>, audit.orders","x/y":"z"},"managedFields":[{"manager":"m","fieldsV1":{"f:x":{}}}]},"automountServiceAccountToken":false}}
{"type":"BOOKMARK","object":{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"resourceVersion":"1315","creationTimestamp":null}}}
{"type":"DELETED","object":{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"invoicer","namespace":"billing","uid":"u-inv","resourceVersion":"1320"}}}
"#;

    #[test]
    fn events_apply_with_chunk_boundaries_anywhere() {
        let s = shared_with(&[
            ("shop", "orders-api", "u-ord"),
            ("billing", "invoicer", "u-inv"),
        ]);
        let mut rv = "1300".to_string();
        let end = consume(Trickle(STREAM.as_bytes()), &s, &mut rv, &Control::default()).unwrap();
        assert_eq!(end, WatchEnd::Eof { events: 4 });
        assert_eq!(rv, "1320");
        assert!(s.get_cached("billing", "invoicer").is_none());
        assert_eq!(s.get_cached("shop", "reporter").unwrap().uid, "u-rep");
        let o = s.get_cached("shop", "orders-api").unwrap();
        assert_eq!(
            o.annotation("nats.example.io/publish"),
            Some("orders.>, audit.orders")
        );
        assert_eq!(o.annotations.len(), 1, "x/y is not kept");
    }

    #[test]
    fn a_bookmark_only_moves_the_rv_and_a_cut_event_is_not_applied() {
        let s = shared_with(&[("shop", "orders-api", "u-ord")]);
        let mut rv = "1".to_string();
        let cut = &STREAM[..STREAM.find("\"DELETED\"").unwrap() + 30];
        let err = consume(Trickle(cut.as_bytes()), &s, &mut rv, &Control::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transport);
        assert_eq!(rv, "1315", "RV of the last complete event (the bookmark)");
        assert_eq!(s.len(), 2, "the half DELETED was not applied");
    }

    #[test]
    fn error_events_map_to_relist_or_backoff() {
        let s = shared_with(&[]);
        let mut rv = "1".to_string();
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1300 (1450)","reason":"Expired","code":410}}"#;
        let e = consume(gone.as_bytes(), &s, &mut rv, &Control::default()).unwrap_err();
        assert!(e.kind.needs_relist());
        let old = r#"{"type":"ERROR","object":{"kind":"Status","reason":"Gone","code":0}}"#;
        assert_eq!(
            consume(old.as_bytes(), &s, &mut rv, &Control::default())
                .unwrap_err()
                .kind,
            ErrorKind::Gone
        );
        let other =
            r#"{"type":"ERROR","object":{"kind":"Status","reason":"InternalError","code":500}}"#;
        let e = consume(other.as_bytes(), &s, &mut rv, &Control::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Server);
        assert!(!e.kind.needs_relist());
        let junk = "{\"type\":\"ADDED\"} nonsense";
        assert_eq!(
            consume(junk.as_bytes(), &s, &mut rv, &Control::default())
                .unwrap_err()
                .kind,
            ErrorKind::Decode
        );
        assert_eq!(rv, "1");
    }
}
