//! Adversarial tests of the decision path (security review): each test either reproduces a
//! weakness that was fixed or pins behaviour an attacker would like to break.
//!
//! Vectors are found at `$NATS_K8S_VECTORS_DIR`, else `<CARGO_MANIFEST_DIR>/../shared/vectors`.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nats_k8s_callout::logging::{self, MemorySink};
use nats_k8s_callout::policy::{evaluate, PolicySettings, Verdict};

/// The global logger (JSON into memory), installed once for this test binary.
fn global_sink() -> &'static MemorySink {
    static SINK: OnceLock<MemorySink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = MemorySink::new();
        logging::init_with_sink("debug", "json", Box::new(sink.clone())).expect("init logger");
        sink
    })
}

/// Tests that read the global sink run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A comma-separated annotation value of about `bytes` bytes made of distinct entries.
fn many_entries(bytes: usize, f: impl Fn(u64) -> String) -> (String, u64) {
    let mut s = String::with_capacity(bytes + 32);
    let mut n = 0;
    while s.len() < bytes {
        s.push_str(&f(n));
        s.push(',');
        n += 1;
    }
    (s, n)
}

// ---------------------------------------------------------------------------------------------
// Policy: annotations

/// Kubernetes allows 256 KiB of annotations per object. Whoever may annotate a ServiceAccount
/// must not be able to make every connection of it cost seconds of CPU on the shared decision
/// workers (the policy runs on every connect). Was quadratic in the number of entries.
#[test]
fn a_maximal_annotation_is_evaluated_promptly() {
    let (value, n) = many_entries(250 * 1024, |i| format!("t{i}"));
    assert!(n > 30_000, "{n}");
    let started = Instant::now();
    let o = evaluate(
        &PolicySettings::default(),
        "shop",
        "api",
        Some(&value),
        Some(&value),
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(o.permissions.publish.allow.len() as u64, n + 1);
    assert_eq!(o.permissions.subscribe.allow.len() as u64, n + 2);
    assert!(o.entries.iter().all(|e| e.verdict == Verdict::Kept));
    // Liveness bound, generous for a debug build on a busy machine (it took > 40 s before).
    assert!(took < Duration::from_secs(5), "evaluate took {took:?}");
}

/// Entries that repeat a default grant or an earlier entry are granted once, also in bulk.
#[test]
fn repeated_entries_are_granted_once() {
    let value = "shop.>,a.b,a.b,shop.>,c.>,a.b,".repeat(3);
    let o = evaluate(
        &PolicySettings::default(),
        "shop",
        "api",
        Some(&value),
        None,
    )
    .unwrap();
    assert_eq!(o.permissions.publish.allow, vec!["shop.>", "a.b", "c.>"]);
}

/// One connection of a ServiceAccount whose annotation holds thousands of invalid entries
/// must not write thousands of log lines (log flooding by whoever may annotate it); every
/// dropped entry is still counted.
#[test]
fn dropped_entries_do_not_flood_the_log() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sink = global_sink();
    let (value, n) = many_entries(64 * 1024, |i| format!("bad..{i}"));
    let o = evaluate(
        &PolicySettings::default(),
        "flood",
        "writer",
        Some(&value),
        None,
    )
    .unwrap();
    assert_eq!(o.dropped().count() as u64, n);
    let counter = nats_k8s_callout::metrics::global().counter(
        "nats_k8s_callout_annotation_entries_dropped_total",
        "ServiceAccount annotation entries dropped, by reason.",
        &[("reason", "invalid_subject")],
    );
    let before = counter.get();
    sink.clear();
    o.report("flood", "writer");
    let out = sink.contents();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"namespace\":\"flood\""))
        .collect();
    assert!(!lines.is_empty(), "nothing logged: {out}");
    assert!(
        lines.len() <= 32,
        "{} log lines for one connection",
        lines.len()
    );
    // The lines that are written say how many were left out.
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("\"dropped\":{n}"))),
        "no summary with the total: {lines:?}"
    );
    assert!(counter.get() >= before + n, "every drop is still counted");
}
