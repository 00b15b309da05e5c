//! Process-wide metrics: counters, gauges and histograms with fixed label sets, rendered in the
//! Prometheus text format by the HTTP thread.
//!
//! Modules register a metric once (at start-up or lazily) and keep the returned `Arc` handle;
//! updating a handle is one atomic operation. Label values must come from bounded sets (reason
//! codes, result kinds): never a token, a subject or another unbounded value.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram of durations, observed in seconds, with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds (seconds) suited to decision latency: 50 µs to 2 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.0,
];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Handle {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

impl Handle {
    fn type_name(&self) -> &'static str {
        match self {
            Handle::Counter(_) => "counter",
            Handle::Gauge(_) => "gauge",
            Handle::Histogram(_) => "histogram",
        }
    }
}

#[derive(Debug)]
struct Entry {
    name: String,
    help: String,
    labels: Vec<(String, String)>,
    handle: Handle,
}

/// A set of metrics. Most code uses [`global`].
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<Vec<Entry>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn get_or_insert(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Handle,
    ) -> Handle {
        debug_assert!(valid_name(name), "bad metric name {name}");
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.iter().find(|e| {
            e.name == name
                && e.labels.len() == labels.len()
                && e.labels
                    .iter()
                    .zip(labels)
                    .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
        }) {
            return e.handle.clone();
        }
        let handle = make();
        entries.push(Entry {
            name: name.to_string(),
            help: help.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            handle: handle.clone(),
        });
        handle
    }

    /// The counter `name` with these labels, created on first use.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Counter> {
        match self.get_or_insert(name, help, labels, || Handle::Counter(Arc::default())) {
            Handle::Counter(c) => c,
            other => panic!(
                "metric {name} already registered as a {}",
                other.type_name()
            ),
        }
    }

    /// The gauge `name` with these labels, created on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Gauge> {
        match self.get_or_insert(name, help, labels, || Handle::Gauge(Arc::default())) {
            Handle::Gauge(g) => g,
            other => panic!(
                "metric {name} already registered as a {}",
                other.type_name()
            ),
        }
    }

    /// The histogram `name` with these labels and bucket bounds, created on first use.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &'static [f64],
    ) -> Arc<Histogram> {
        match self.get_or_insert(name, help, labels, || {
            Handle::Histogram(Arc::new(Histogram::new(bounds)))
        }) {
            Handle::Histogram(h) => h,
            other => panic!(
                "metric {name} already registered as a {}",
                other.type_name()
            ),
        }
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut out = String::with_capacity(4096);
        for name in names {
            let family: Vec<&Entry> = entries.iter().filter(|e| e.name == name).collect();
            let first = family[0];
            let _ = writeln!(out, "# HELP {} {}", name, escape_help(&first.help));
            let _ = writeln!(out, "# TYPE {} {}", name, first.handle.type_name());
            for e in family {
                match &e.handle {
                    Handle::Counter(c) => {
                        let _ = writeln!(out, "{}{} {}", name, label_str(&e.labels, None), c.get());
                    }
                    Handle::Gauge(g) => {
                        let _ = writeln!(out, "{}{} {}", name, label_str(&e.labels, None), g.get());
                    }
                    Handle::Histogram(h) => {
                        let mut cum = 0u64;
                        for (i, b) in h.bounds.iter().enumerate() {
                            cum += h.counts[i].load(Ordering::Relaxed);
                            let le = format_float(*b);
                            let _ = writeln!(
                                out,
                                "{}_bucket{} {}",
                                name,
                                label_str(&e.labels, Some(&le)),
                                cum
                            );
                        }
                        let count = h.count.load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {}",
                            name,
                            label_str(&e.labels, Some("+Inf")),
                            count
                        );
                        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                        let _ = writeln!(
                            out,
                            "{}_sum{} {}",
                            name,
                            label_str(&e.labels, None),
                            format_float(sum)
                        );
                        let _ = writeln!(
                            out,
                            "{}_count{} {}",
                            name,
                            label_str(&e.labels, None),
                            count
                        );
                    }
                }
            }
        }
        out
    }
}

/// The process-wide registry.
pub fn global() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(Registry::new)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn label_str(labels: &[(String, String)], le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (k, v) in labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(le.map(|l| ("le", l)))
    {
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_families_once_with_labels() {
        let r = Registry::new();
        r.counter("x_total", "Things.", &[("reason", "a")]).add(2);
        r.counter("x_total", "Things.", &[("reason", "b\"q")]).inc();
        r.gauge("g", "A gauge.", &[]).set(-3);
        let out = r.render();
        assert_eq!(out.matches("# TYPE x_total counter").count(), 1);
        assert!(out.contains("x_total{reason=\"a\"} 2\n"), "{out}");
        assert!(out.contains("x_total{reason=\"b\\\"q\"} 1\n"), "{out}");
        assert!(out.contains("g -3\n"), "{out}");
    }

    #[test]
    fn same_name_and_labels_is_the_same_handle() {
        let r = Registry::new();
        r.counter("c_total", "h", &[("k", "v")]).inc();
        r.counter("c_total", "h", &[("k", "v")]).inc();
        assert_eq!(r.counter("c_total", "h", &[("k", "v")]).get(), 2);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let r = Registry::new();
        let h = r.histogram("lat_seconds", "Latency.", &[], &[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let out = r.render();
        assert!(
            out.contains("lat_seconds_bucket{le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("lat_seconds_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("lat_seconds_count 3\n"), "{out}");
    }

    #[test]
    #[should_panic(expected = "already registered")]
    fn type_clash_panics() {
        let r = Registry::new();
        r.counter("m", "h", &[]);
        r.gauge("m", "h", &[]);
    }
}
