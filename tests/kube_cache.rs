//! The ServiceAccount cache (list + watch + lazy GET) against the Kubernetes API double:
//! initial sync through pages, live updates, recovery from cut streams, 410s, outages,
//! token rotation, RBAC errors and TLS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nats_k8s_callout::backoff::Backoff;
use nats_k8s_callout::kube::{
    ApiConfig, CacheConfig, KubeClient, Lookup, SaCache, SaRecord, WatcherHandle,
};
use nats_k8s_callout::testkit::k8s_double::{
    DoubleOptions, Fault, K8sDouble, ServiceAccount, Target,
};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "kube-cache-{tag}-{}-{}",
            std::process::id(),
            nats_k8s_callout::backoff::random_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn fast_backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(400),
        Duration::from_secs(60),
    )
}

struct Setup {
    cache: SaCache,
    watcher: Option<WatcherHandle>,
    _dir: TempDir,
    token_path: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
    }
}

fn start_cache(d: &K8sDouble, cfg: CacheConfig) -> Setup {
    start_cache_with(d, cfg, true)
}

fn start_cache_with(d: &K8sDouble, cfg: CacheConfig, ca: bool) -> Setup {
    let dir = TempDir::new("t");
    let token_path = dir.0.join("token");
    std::fs::write(&token_path, format!("{}\n", d.token())).unwrap();
    let ca_file = if ca {
        let p = dir.0.join("ca.crt");
        std::fs::write(&p, d.ca_pem()).unwrap();
        Some(p)
    } else {
        None
    };
    let mut api = ApiConfig::new(&d.url(), Some(token_path.clone()), ca_file);
    api.request_timeout = Duration::from_secs(5);
    api.connect_timeout = Duration::from_secs(2);
    let client: Arc<KubeClient> = KubeClient::new(&api).unwrap();
    let (cache, watcher) = SaCache::start_with_backoff(client, cfg, fast_backoff());
    Setup {
        cache,
        watcher: Some(watcher),
        _dir: dir,
        token_path,
    }
}

fn cfg() -> CacheConfig {
    CacheConfig {
        page_size: 2,
        watch_timeout: Duration::from_secs(30),
        watch_idle: Duration::from_secs(10),
        ..CacheConfig::default()
    }
}

fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn uid_of(c: &SaCache, ns: &str, name: &str) -> Option<String> {
    c.get_cached(ns, name).map(|r| r.uid.to_string())
}

fn annotations(r: &SaRecord) -> Vec<(&str, &str)> {
    r.annotations.iter().map(|(k, v)| (&**k, &**v)).collect()
}

fn seed7(d: &K8sDouble) {
    for i in 0..5 {
        d.create_sa(
            "shop",
            &format!("sa-{i}"),
            &[("nats.io/allowed-pub-subjects", "shop.>")],
        );
    }
    d.create_sa(
        "billing",
        "invoicer",
        &[
            ("nats.io/allowed-sub-subjects", "billing.>"),
            ("other.io/ignored", "x"),
        ],
    );
    d.create_sa("billing", "default", &[]);
}

#[test]
fn initial_sync_through_pages_then_live_updates_and_deletes() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    assert_eq!(s.cache.len(), 7);
    assert!(d.requests("list") >= 4, "7 items at 2 per page = 4 pages");
    let inv = s.cache.get_cached("billing", "invoicer").unwrap();
    assert_eq!(inv.uid, d.get_sa("billing", "invoicer").unwrap().uid);
    assert_eq!(
        annotations(&inv),
        [("nats.io/allowed-sub-subjects", "billing.>")],
        "only the nats.io/ prefix is kept"
    );
    let st = s.cache.status();
    assert!(
        st.synced && st.healthy && st.relists == 1 && st.size == 7,
        "{st:?}"
    );

    // An annotation change reaches the cache within a second.
    let t0 = Instant::now();
    assert!(d.set_annotations(
        "shop",
        "sa-1",
        &[("nats.io/allowed-pub-subjects", "shop.orders.>")]
    ));
    eventually("annotation update", Duration::from_secs(5), || {
        s.cache
            .get_cached("shop", "sa-1")
            .is_some_and(|r| r.annotation("nats.io/allowed-pub-subjects") == Some("shop.orders.>"))
    });
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );

    // Create, deletion in progress, delete.
    let new = d.create_sa("shop", "fresh", &[]);
    eventually("create", Duration::from_secs(5), || {
        uid_of(&s.cache, "shop", "fresh") == Some(new.uid.clone())
    });
    d.mark_deleting("shop", "sa-2");
    eventually("deletionTimestamp", Duration::from_secs(5), || {
        s.cache
            .get_cached("shop", "sa-2")
            .is_some_and(|r| r.deleting)
    });
    assert!(d.delete_sa("shop", "sa-2"));
    eventually("delete", Duration::from_secs(5), || {
        s.cache.get_cached("shop", "sa-2").is_none()
    });
    assert_eq!(s.cache.lookup("shop", "sa-2"), Lookup::NotFound);
    assert_eq!(s.cache.len(), 7);
    // A re-created account with the same name has a new uid.
    let again = d.create_sa("shop", "sa-2", &[]);
    eventually("re-create", Duration::from_secs(5), || {
        uid_of(&s.cache, "shop", "sa-2") == Some(again.uid.clone())
    });
    assert_eq!(
        s.cache.status().relists,
        1,
        "no relist needed for plain events"
    );
}

#[test]
fn a_cut_stream_mid_event_is_resumed_from_the_last_rv_without_relist() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    eventually("watch open", Duration::from_secs(5), || {
        d.open_watches() == 1
    });
    d.cut_watches(true);
    // Changes while the watch is being re-established are replayed from history.
    d.set_annotations("shop", "sa-0", &[("nats.io/allowed-pub-subjects", "a.b")]);
    d.delete_sa("shop", "sa-3");
    eventually("recovered after cut", Duration::from_secs(5), || {
        s.cache.get_cached("shop", "sa-3").is_none()
            && s.cache
                .get_cached("shop", "sa-0")
                .is_some_and(|r| r.annotation("nats.io/allowed-pub-subjects") == Some("a.b"))
    });
    eventually("watch restarted", Duration::from_secs(5), || {
        s.cache.status().watch_restarts >= 1
    });
    let st = s.cache.status();
    assert_eq!(st.relists, 1, "{st:?}");
    assert_eq!(st.size, 6);
    d.cut_watches(false);
    let late = d.create_sa("shop", "late", &[]);
    eventually("event after a clean cut", Duration::from_secs(5), || {
        uid_of(&s.cache, "shop", "late") == Some(late.uid.clone())
    });
}

#[test]
fn error_410_and_504_too_large_relist_and_replace_the_cache() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    eventually("watch open", Duration::from_secs(5), || {
        d.open_watches() == 1
    });
    // Stop the watch, change things, forget history: the re-watch gets ERROR 410.
    d.go_down();
    d.delete_sa("shop", "sa-4");
    let added = d.create_sa("billing", "new-one", &[]);
    d.compact_history();
    d.come_back().unwrap();
    eventually("relist after 410", Duration::from_secs(10), || {
        s.cache.status().relists >= 2
    });
    eventually("converged", Duration::from_secs(5), || {
        s.cache.get_cached("shop", "sa-4").is_none()
            && uid_of(&s.cache, "billing", "new-one") == Some(added.uid.clone())
    });
    assert_eq!(s.cache.len(), d.sa_count());
    let st = s.cache.status();
    assert!(
        st.api_errors.iter().any(|(k, n)| *k == "gone" && *n >= 1),
        "{st:?}"
    );

    // 504 TooLarge on the next watch → relist too.
    d.inject(Target::Watch, Fault::Http504TooLarge);
    d.cut_watches(false);
    eventually("relist after 504", Duration::from_secs(10), || {
        s.cache.status().relists >= 3
    });
    // And an expired continue during the relist restarts the list from page 1.
    d.inject(Target::Watch, Fault::ErrorEvent410);
    d.inject(Target::List, Fault::Http410);
    d.cut_watches(false);
    d.delete_sa("shop", "sa-0");
    eventually("relist after list 410", Duration::from_secs(10), || {
        s.cache.status().relists >= 4 && s.cache.get_cached("shop", "sa-0").is_none()
    });
    assert_eq!(s.cache.len(), d.sa_count());
}

#[test]
fn an_outage_with_a_delete_during_it_recovers_without_stale_entries() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    eventually("watch open", Duration::from_secs(5), || {
        d.open_watches() == 1
    });
    d.go_down();
    std::thread::sleep(Duration::from_millis(600));
    assert!(d.delete_sa("shop", "sa-1"));
    d.set_annotations(
        "billing",
        "invoicer",
        &[("nats.io/allowed-sub-subjects", "billing.invoices.>")],
    );
    let created = d.create_sa("shop", "during-outage", &[]);
    // While down the cache keeps serving the last state.
    assert!(s.cache.get_cached("shop", "sa-1").is_some());
    assert!(matches!(s.cache.lookup("shop", "sa-1"), Lookup::Found(_)));
    d.come_back().unwrap();
    eventually("converged after outage", Duration::from_secs(10), || {
        s.cache.get_cached("shop", "sa-1").is_none()
            && uid_of(&s.cache, "shop", "during-outage") == Some(created.uid.clone())
            && s.cache.get_cached("billing", "invoicer").is_some_and(|r| {
                r.annotation("nats.io/allowed-sub-subjects") == Some("billing.invoices.>")
            })
    });
    assert_eq!(s.cache.len(), d.sa_count());
    let st = s.cache.status();
    assert!(
        st.api_errors.iter().any(|(k, _)| *k == "transport"),
        "{st:?}"
    );
    eventually("healthy again", Duration::from_secs(5), || {
        s.cache.is_healthy()
    });
}

#[test]
fn lazy_get_on_miss_is_single_flight_and_404s_are_remembered() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    // Only accounts labelled team=a are watched. With a selector the lazy lookup is a list of
    // the one name with that selector: unlabelled accounts are not found, a labelled one the
    // watch has not delivered yet is.
    d.create_sa_full("shop", "labelled", None, &[("team", "a")], &[]);
    let s = start_cache(
        &d,
        CacheConfig {
            label_selector: Some("team=a".into()),
            negative_ttl: Duration::from_millis(700),
            positive_ttl: Duration::from_secs(30),
            ..cfg()
        },
    );
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    assert_eq!(s.cache.len(), 1);
    // The lazy lookups (GET, or list with a selector), not the watcher's list.
    let api = || d.requests("get") + d.requests("list");
    let gets0 = api();
    assert_eq!(
        s.cache.lookup("shop", "sa-2"),
        Lookup::NotFound,
        "unlabelled"
    );
    assert_eq!(api() - gets0, 1);
    // sa-3 labelled without a watch event.
    let mut sa3 = d.get_sa("shop", "sa-3").unwrap();
    sa3.labels.insert("team".into(), "a".into());
    d.seed([sa3]);
    let gets0 = api();
    match s.cache.lookup("shop", "sa-3") {
        Lookup::Found(r) => assert_eq!(r.uid, d.get_sa("shop", "sa-3").unwrap().uid),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.cache.lookup("shop", "sa-3"), Lookup::Found(_)));
    assert_eq!(api() - gets0, 1, "the found result is remembered");

    // A flood for a missing account: one GET, then the negative entry.
    d.set_delay(Duration::from_millis(150));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let c = s.cache.clone();
            std::thread::spawn(move || c.lookup("shop", "ghost"))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), Lookup::NotFound);
    }
    d.set_delay(Duration::ZERO);
    for _ in 0..100 {
        assert_eq!(s.cache.lookup("shop", "ghost"), Lookup::NotFound);
    }
    assert_eq!(
        api() - gets0,
        2,
        "one GET for 116 lookups of a missing account"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(s.cache.lookup("shop", "ghost"), Lookup::NotFound);
    assert_eq!(api() - gets0, 3, "negative entry expired");
    let st = s.cache.status();
    assert!(
        st.lazy_gets.contains(&("found", 1)) && st.lazy_gets.contains(&("not_found", 3)),
        "{st:?}"
    );

    // A slow API server: the GET is bounded by the deadline; synced → NotFound.
    d.set_delay(Duration::from_secs(2));
    let t0 = Instant::now();
    assert_eq!(s.cache.lookup("shop", "sa-4"), Lookup::NotFound);
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert!(s.cache.status().lazy_gets.contains(&("error", 1)));
    // Names that cannot exist never reach the API server.
    let before = api();
    assert_eq!(s.cache.lookup("..", "x"), Lookup::NotFound);
    assert_eq!(s.cache.lookup("shop", "a/b"), Lookup::NotFound);
    assert_eq!(api(), before);
    d.set_delay(Duration::ZERO);
}

#[test]
fn token_file_is_reread_after_a_401() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    eventually("watch open", Duration::from_secs(5), || {
        d.open_watches() == 1
    });
    d.rotate_token("rotated-token-2", false);
    std::fs::write(&s.token_path, "rotated-token-2\n").unwrap();
    d.cut_watches(false);
    let added = d.create_sa("shop", "after-rotation", &[]);
    eventually(
        "recovered with the new token",
        Duration::from_secs(5),
        || uid_of(&s.cache, "shop", "after-rotation") == Some(added.uid.clone()),
    );
    let st = s.cache.status();
    assert!(
        st.api_errors.contains(&("unauthorized", 1)),
        "exactly one 401 before re-reading: {st:?}"
    );
    assert!(d.requests("unauthorized") >= 1);
}

#[test]
fn forbidden_marks_unhealthy_but_keeps_serving() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    assert!(s.cache.is_healthy());
    d.set_forbidden(true);
    d.cut_watches(false);
    eventually("a 403 seen", Duration::from_secs(5), || {
        s.cache
            .status()
            .api_errors
            .iter()
            .any(|(k, _)| *k == "forbidden")
    });
    assert!(!s.cache.is_healthy());
    assert!(s.cache.is_synced());
    assert!(matches!(s.cache.lookup("shop", "sa-0"), Lookup::Found(_)));
    d.set_forbidden(false);
    eventually("healthy again", Duration::from_secs(5), || {
        s.cache.is_healthy()
    });
}

#[test]
fn tls_with_the_test_ca_and_failure_with_the_wrong_ca() {
    let d = K8sDouble::start(DoubleOptions {
        tls: true,
        ..DoubleOptions::default()
    })
    .unwrap();
    seed7(&d);
    let s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    assert_eq!(s.cache.len(), 7);
    drop(s);
    // Without the test CA (public web roots only) the server is not trusted.
    let bad = start_cache_with(&d, cfg(), false);
    assert!(!bad.cache.wait_synced(Duration::from_secs(1)));
    assert_eq!(bad.cache.lookup("shop", "sa-0"), Lookup::Unavailable);
    let st = bad.cache.status();
    assert!(
        st.api_errors
            .iter()
            .any(|(k, n)| *k == "transport" && *n >= 1),
        "{st:?}"
    );
    assert_eq!(
        d.requests("list"),
        4,
        "only the trusted client's pages reached the server"
    );
}

#[test]
fn namespaced_cache_sees_only_its_namespace() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(
        &d,
        CacheConfig {
            namespace: Some("billing".into()),
            lazy_get: false,
            ..cfg()
        },
    );
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    assert_eq!(s.cache.len(), 2);
    d.create_sa("shop", "elsewhere", &[]);
    let here = d.create_sa("billing", "here", &[]);
    eventually("namespaced event", Duration::from_secs(5), || {
        uid_of(&s.cache, "billing", "here") == Some(here.uid.clone())
    });
    assert!(s.cache.get_cached("shop", "elsewhere").is_none());
    assert_eq!(s.cache.lookup("shop", "elsewhere"), Lookup::NotFound);
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn trim() {
    // Give freed heap pages back so RSS reflects live data only.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Memory of the cache with 100 000 ServiceAccounts (each with a uid and two realistic
/// `nats.io/` annotations plus one foreign annotation and a label), in process (the double's
/// copy is in the "before" figure). The release-profile measurement with the double in its
/// own process is `scripts/measure-cache-memory`.
#[test]
#[ignore = "slow; cargo test --test kube_cache memory_for_100k_service_accounts -- --ignored --nocapture"]
fn memory_for_100k_service_accounts() {
    const N: usize = 100_000;
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    d.seed((0..N).map(|i| {
        ServiceAccount {
            namespace: format!("team-{:03}", i % 500),
            name: format!("workload-{i:06}"),
            uid: format!("{:08x}-1111-4222-8333-{:012x}", i, i * 7919),
            resource_version: 0,
            labels: [(
                "app.kubernetes.io/name".to_string(),
                format!("workload-{i}"),
            )]
            .into(),
            annotations: [
                (
                    "nats.io/allowed-pub-subjects".to_string(),
                    format!("team-{:03}.orders.>, audit.team-{:03}", i % 500, i % 500),
                ),
                (
                    "nats.io/allowed-sub-subjects".to_string(),
                    "_INBOX.>, events.*.public".to_string(),
                ),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                    "{\"apiVersion\":\"v1\",\"kind\":\"ServiceAccount\"}".to_string(),
                ),
            ]
            .into(),
            deleting: false,
        }
    }));
    trim();
    let before = rss_kib();
    let s = start_cache(
        &d,
        CacheConfig {
            watch_timeout: Duration::from_secs(60),
            ..CacheConfig::default()
        },
    );
    assert!(s.cache.wait_synced(Duration::from_secs(300)));
    assert_eq!(s.cache.len(), N);
    d.expire_continue_tokens();
    std::thread::sleep(Duration::from_millis(200));
    trim();
    let after = rss_kib();
    let delta = after.saturating_sub(before);
    println!(
        "RSS before cache: {before} KiB, after: {after} KiB, cache delta: {delta} KiB ({:.1} MiB, {} bytes/ServiceAccount)",
        delta as f64 / 1024.0,
        delta * 1024 / N as u64
    );
    assert!(
        delta < 200 * 1024,
        "cache uses {delta} KiB for {N} accounts"
    );
}

#[test]
fn server_timeout_rewatches_without_error_and_a_silent_stream_trips_the_idle_guard() {
    // Server closes after timeoutSeconds: a clean EOF, re-watched from the last RV.
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let s = start_cache(
        &d,
        CacheConfig {
            watch_timeout: Duration::from_secs(1),
            ..cfg()
        },
    );
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    eventually(
        "re-watch after the server timeout",
        Duration::from_secs(5),
        || s.cache.status().watch_restarts >= 2,
    );
    let st = s.cache.status();
    assert!(st.api_errors.is_empty(), "{st:?}");
    assert_eq!(st.relists, 1);
    let late = d.create_sa("shop", "late", &[]);
    eventually("event on a later watch", Duration::from_secs(5), || {
        uid_of(&s.cache, "shop", "late") == Some(late.uid.clone())
    });

    // No bookmarks, no events: the per-read idle guard ends the watch.
    let quiet = K8sDouble::start(DoubleOptions {
        bookmark_period: None,
        ..DoubleOptions::default()
    })
    .unwrap();
    seed7(&quiet);
    let q = start_cache(
        &quiet,
        CacheConfig {
            watch_idle: Duration::from_millis(500),
            ..cfg()
        },
    );
    assert!(q.cache.wait_synced(Duration::from_secs(5)));
    eventually("idle guard fired", Duration::from_secs(5), || {
        let st = q.cache.status();
        st.watch_restarts >= 1 && st.api_errors.iter().any(|(k, _)| *k == "transport")
    });
    let x = quiet.create_sa("shop", "x", &[]);
    eventually("still receives events", Duration::from_secs(5), || {
        uid_of(&q.cache, "shop", "x") == Some(x.uid.clone())
    });
}

#[test]
fn stop_ends_the_watcher_and_its_watch() {
    let d = K8sDouble::start(DoubleOptions::default()).unwrap();
    seed7(&d);
    let mut s = start_cache(&d, cfg());
    assert!(s.cache.wait_synced(Duration::from_secs(5)));
    eventually("watch open", Duration::from_secs(5), || {
        d.open_watches() == 1
    });
    let watches = d.requests("watch");
    let t0 = Instant::now();
    s.watcher.take().unwrap().stop();
    assert!(t0.elapsed() < Duration::from_secs(3));
    eventually("watch closed", Duration::from_secs(5), || {
        d.open_watches() == 0
    });
    d.create_sa("shop", "after-stop", &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.cache.get_cached("shop", "after-stop").is_none());
    assert_eq!(d.requests("watch"), watches, "no new watch after stop");
    // The stopped cache still answers from its last state.
    assert!(matches!(s.cache.lookup("shop", "sa-0"), Lookup::Found(_)));
}
