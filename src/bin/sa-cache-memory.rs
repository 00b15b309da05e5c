//! Measures the memory of the ServiceAccount cache holding a realistic population, with the
//! Kubernetes API double in a separate process (so its copy is not counted). Run by
//! `scripts/measure-cache-memory` (release profile).
//!
//! ```text
//! sa-cache-memory [--count N] [--namespaces N] [--double PATH]
//! ```
//! Population: N ServiceAccounts over the namespaces, each with a UUID uid, a label,
//! `kubectl.kubernetes.io/last-applied-configuration` (~1 KB), one or two other foreign
//! annotations, and every tenth with the two `nats.io/` annotations.
//!
//! Prints the process RSS (`VmRSS`, after `malloc_trim`) before and after the first sync, the
//! live heap bytes counted by this binary's global allocator, and the allocator's peak during
//! the sync. It must never be linked into the service (it is a measuring tool only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nats_k8s_callout::kube::cache::Shared;
use nats_k8s_callout::kube::watch::list_all;
use nats_k8s_callout::kube::{ApiConfig, CacheConfig, KubeClient, SaCache};

/// Counts live heap bytes (as requested) and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_kib() -> u64 {
    trim();
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn usage() -> ! {
    eprintln!("usage: sa-cache-memory [--count N] [--namespaces N] [--double PATH]");
    std::process::exit(2)
}

/// The double's process; killed on every exit path.
struct Double(Child);
impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_seed(path: &PathBuf, count: usize, namespaces: usize) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    // ~1 KB of last-applied-configuration, as kubectl apply leaves it.
    let filler = "x".repeat(800);
    writeln!(f, "[")?;
    for i in 0..count {
        let ns = format!("team-{:03}", i % namespaces);
        let name = format!("workload-{i:06}");
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            i as u32 ^ 0x9e37_79b9,
            i % 0xffff,
            i % 0xfff,
            (i * 7) % 0xfff,
            (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_ffff_ffff
        );
        let applied = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ServiceAccount\",\"metadata\":{{\"annotations\":{{}},\"name\":\"{name}\",\"namespace\":\"{ns}\",\"labels\":{{\"team\":\"{filler}\"}}}}}}\n"
        );
        let mut ann = serde_json::json!({
            "kubectl.kubernetes.io/last-applied-configuration": applied,
            "meta.helm.sh/release-name": format!("release-{}", i % 97),
        });
        if i % 2 == 0 {
            ann["meta.helm.sh/release-namespace"] = serde_json::json!(ns);
        }
        if i % 10 == 0 {
            ann["nats.io/allowed-pub-subjects"] =
                serde_json::json!(format!("{ns}.orders.>, audit.{ns}"));
            ann["nats.io/allowed-sub-subjects"] = serde_json::json!("_INBOX.>, events.*.public");
        }
        let item = serde_json::json!({
            "namespace": ns, "name": name, "uid": uid,
            "labels": {"app.kubernetes.io/name": name},
            "annotations": ann,
        });
        let sep = if i + 1 < count { "," } else { "" };
        writeln!(f, "{item}{sep}")?;
    }
    writeln!(f, "]")?;
    f.flush()
}

fn main() {
    let mut count = 100_000usize;
    let mut namespaces = 500usize;
    let mut double: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--count" => count = val().parse().unwrap_or_else(|_| usage()),
            "--namespaces" => namespaces = val().parse().unwrap_or_else(|_| usage()),
            "--double" => double = Some(PathBuf::from(val())),
            _ => usage(),
        }
    }
    let double = double.unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("current exe");
        exe.with_file_name("k8s-api-double")
    });
    let dir = std::env::temp_dir().join(format!("sa-cache-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let seed = dir.join("seed.json");
    write_seed(&seed, count, namespaces.max(1)).expect("write the seed file");
    let t0 = Instant::now();
    let child = Command::new(&double)
        .arg("--seed")
        .arg(&seed)
        .arg("--out-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", double.display()));
    let mut child = Double(child);
    let out = child.0.stdout.take().expect("double stdout");
    let (mut url, mut token_file) = (None, None);
    for line in BufReader::new(out).lines() {
        let line = line.expect("double output");
        if let Some(v) = line.strip_prefix("K8S_API_URL=") {
            url = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("K8S_TOKEN_FILE=") {
            token_file = Some(PathBuf::from(v));
        }
        if line.starts_with("K8S_ISSUER=") {
            break;
        }
    }
    let (Some(url), Some(token_file)) = (url, token_file) else {
        panic!("the double did not print its URL and token file");
    };
    eprintln!("double ready after {:.1} s", t0.elapsed().as_secs_f64());

    let rss_before = rss_kib();
    let live_before = LIVE.load(Ordering::Relaxed);
    PEAK.store(live_before, Ordering::Relaxed);
    let client =
        KubeClient::new(&ApiConfig::new(&url, Some(token_file.clone()), None)).expect("client");
    let t1 = Instant::now();
    let (cache, watcher) = SaCache::start(client, CacheConfig::default());
    assert!(
        cache.wait_synced(Duration::from_secs(600)),
        "not synced within 10 min"
    );
    let synced_in = t1.elapsed();
    assert_eq!(cache.len(), count, "every ServiceAccount is cached");
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = rss_kib();
    let live_after = LIVE.load(Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    let per = |b: u64| b / count as u64;
    let rss_delta = rss_after.saturating_sub(rss_before) * 1024;
    let live = live_after.saturating_sub(live_before) as u64;
    let peak_d = peak.saturating_sub(live_before) as u64;
    println!("ServiceAccounts: {count} in {namespaces} namespaces, synced in {synced_in:.1?}");
    println!(
        "RSS before sync: {rss_before} KiB, after: {rss_after} KiB, delta: {:.1} MiB ({} B/ServiceAccount)",
        rss_delta as f64 / 1048576.0,
        per(rss_delta)
    );
    println!(
        "heap live after sync: +{:.1} MiB ({} B/ServiceAccount, requested sizes), peak during sync: +{:.1} MiB",
        live as f64 / 1048576.0,
        per(live),
        peak_d as f64 / 1048576.0
    );
    watcher.stop();
    drop(cache);

    // A relist (after 410 Gone): the old map keeps serving while the new one is listed, with
    // the same functions the watcher thread uses.
    let client = KubeClient::new(&ApiConfig::new(&url, Some(token_file), None)).expect("client");
    let shared = Shared::new(CacheConfig::default(), Some(client.clone()));
    let (map, _) = list_all(&client, &shared).expect("list");
    shared.replace_all(map);
    let rss_steady = rss_kib();
    let steady = LIVE.load(Ordering::Relaxed);
    PEAK.store(steady, Ordering::Relaxed);
    let (map, _) = list_all(&client, &shared).expect("relist");
    shared.replace_all(map);
    let relist_peak = PEAK.load(Ordering::Relaxed).saturating_sub(steady) as u64;
    let rss_relisted = rss_kib();
    println!(
        "relist: heap peak above the synced cache: +{:.1} MiB ({} B/ServiceAccount); RSS before: {rss_steady} KiB, after: {rss_relisted} KiB",
        relist_peak as f64 / 1048576.0,
        per(relist_peak)
    );
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}
