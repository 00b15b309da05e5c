//! Token validation cost: median (and p90/p99) of N full validations (parse, key selection,
//! signature, claims) of the RS256 and ES256 k8s-testkeys vectors, plus the rejection fast
//! paths. Run with `cargo bench --bench token [-- N]`.
//!
//! Vectors are found at `$NATS_K8S_VECTORS_DIR`, else `<CARGO_MANIFEST_DIR>/../shared/vectors`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nats_k8s_callout::testkit::vectors::read;
use nats_k8s_callout::token::validate::validate;
use nats_k8s_callout::token::{KeySet, TokenConfig};

const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const NOW: u64 = 1_767_229_320;

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this runs as a quick
    // smoke check (every case still asserts its outcome) instead of a measurement.
    let measuring = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if measuring { 5000 } else { 20 });
    let (set, _) = KeySet::from_jwks_json(read("k8s-testkeys/jwks.json").as_bytes()).unwrap();
    let keys: HashMap<String, Arc<KeySet>> = [(ISS.to_string(), Arc::new(set))].into();
    let cfg = TokenConfig::new(vec![ISS.into()], vec!["nats".into()]);

    let cases = [
        ("RS256 accept", "valid_rs256_pod.jwt", true),
        ("ES256 accept", "valid_es256_pod.jwt", true),
        ("RS256 no kid", "valid_rs256_no_kid.jwt", true),
        ("RS256 bad signature", "reject_bad_signature.jwt", false),
        ("wrong issuer (no crypto)", "reject_wrong_iss.jwt", false),
        ("alg none (no crypto)", "reject_alg_none.jwt", false),
    ];
    println!("token validation, {n} iterations each (after 200 warm-up)");
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>12}",
        "case", "median", "p90", "p99", "per second"
    );
    for (name, file, ok) in cases {
        let token = read(&format!("k8s-testkeys/{file}"));
        assert_eq!(validate(&token, &cfg, &keys, NOW).is_ok(), ok, "{file}");
        for _ in 0..n.min(200) {
            black_box(validate(black_box(&token), &cfg, &keys, NOW).is_ok());
        }
        let mut times: Vec<Duration> = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            black_box(validate(black_box(&token), &cfg, &keys, NOW).is_ok());
            times.push(t.elapsed());
        }
        times.sort();
        let q = |p: f64| times[((n as f64 * p) as usize).min(n - 1)];
        let median = q(0.5);
        println!(
            "{:<26} {:>10} {:>10} {:>10} {:>12.0}",
            name,
            fmt(median),
            fmt(q(0.9)),
            fmt(q(0.99)),
            1.0 / median.as_secs_f64()
        );
    }
}

fn fmt(d: Duration) -> String {
    format!("{:.1} µs", d.as_nanos() as f64 / 1000.0)
}
