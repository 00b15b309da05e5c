//! A standalone Kubernetes API double for the local demo (TEST-ONLY keys and certificates).
//!
//! ```text
//! k8s-api-double [--port N] [--tls] [--seed FILE] [--token TOKEN] [--out-dir DIR]
//!                [--mint NS/NAME]... [--audience AUD] [--token-seconds N]
//! ```
//! Environment equivalents: `K8S_DOUBLE_PORT`, `K8S_DOUBLE_TLS=1`, `K8S_DOUBLE_SEED`,
//! `K8S_DOUBLE_TOKEN`, `K8S_DOUBLE_OUT_DIR`.
//!
//! The seed file is either a `ServiceAccountList` (like `kubectl get sa -A -o json`) or a JSON
//! array of `{"namespace","name","uid"?,"labels"?,"annotations"?}`. On start it prints the URL,
//! the CA file, the API token file and one line per `--mint` with a ServiceAccount token, then
//! serves until killed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use nats_k8s_callout::testkit::k8s_double::{DoubleOptions, K8sDouble};
use serde_json::Value;

fn usage() -> ! {
    eprintln!(
        "usage: k8s-api-double [--port N] [--tls] [--seed FILE] [--token TOKEN] [--out-dir DIR] \
         [--mint NS/NAME]... [--audience AUD] [--token-seconds N]"
    );
    std::process::exit(2)
}

fn strings(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn load_seed(d: &K8sDouble, path: &str) -> Result<usize, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let items: Vec<Value> = match &v {
        Value::Array(a) => a.clone(),
        Value::Object(o) if o.contains_key("items") => o["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i["metadata"].clone())
            .collect(),
        _ => return Err(format!("{path}: expected a ServiceAccountList or an array")),
    };
    for it in &items {
        let (Some(ns), Some(name)) = (it["namespace"].as_str(), it["name"].as_str()) else {
            return Err(format!("{path}: item without namespace/name: {it}"));
        };
        let labels: BTreeMap<_, _> = strings(&it["labels"]).into_iter().collect();
        let ann: BTreeMap<_, _> = strings(&it["annotations"]).into_iter().collect();
        let l: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let a: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        d.create_sa_full(ns, name, it["uid"].as_str(), &l, &a);
    }
    Ok(items.len())
}

fn main() {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut opts = DoubleOptions {
        bookmark_period: Some(Duration::from_secs(60)),
        ..DoubleOptions::default()
    };
    if let Some(p) = env("K8S_DOUBLE_PORT") {
        opts.port = p.parse().unwrap_or_else(|_| usage());
    }
    opts.tls = env("K8S_DOUBLE_TLS").is_some_and(|v| v == "1" || v == "true");
    let mut seed = env("K8S_DOUBLE_SEED");
    if let Some(t) = env("K8S_DOUBLE_TOKEN") {
        opts.token = t;
    }
    let mut out_dir = env("K8S_DOUBLE_OUT_DIR").map(PathBuf::from);
    let mut mints: Vec<String> = Vec::new();
    let mut audience = "nats".to_string();
    let mut token_seconds: u64 = 3600;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--port" => opts.port = val().parse().unwrap_or_else(|_| usage()),
            "--tls" => opts.tls = true,
            "--seed" => seed = Some(val()),
            "--token" => opts.token = val(),
            "--out-dir" => out_dir = Some(PathBuf::from(val())),
            "--mint" => mints.push(val()),
            "--audience" => audience = val(),
            "--token-seconds" => token_seconds = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let d = match K8sDouble::start(opts) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("k8s-api-double: cannot start: {e}");
            std::process::exit(1)
        }
    };
    if let Some(s) = seed {
        match load_seed(&d, &s) {
            Ok(n) => eprintln!("k8s-api-double: seeded {n} ServiceAccounts from {s}"),
            Err(e) => {
                eprintln!("k8s-api-double: {e}");
                std::process::exit(1)
            }
        }
    }
    let dir = out_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("k8s-api-double-{}", std::process::id()))
    });
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("k8s-api-double: cannot create {}: {e}", dir.display());
        std::process::exit(1)
    }
    let ca = dir.join("ca.crt");
    let tok = dir.join("token");
    if std::fs::write(&ca, d.ca_pem()).is_err() || std::fs::write(&tok, d.token()).is_err() {
        eprintln!("k8s-api-double: cannot write into {}", dir.display());
        std::process::exit(1)
    }
    println!("K8S_API_URL={}", d.url());
    println!("K8S_CA_FILE={}", ca.display());
    println!("K8S_TOKEN_FILE={}", tok.display());
    println!("K8S_TOKEN={}", d.token());
    println!("K8S_ISSUER={}", d.issuer());
    for m in &mints {
        let Some((ns, name)) = m.split_once('/') else {
            usage()
        };
        let exp = nats_k8s_callout::clock::unix_now() + token_seconds;
        println!(
            "SA_TOKEN {ns}/{name}={}",
            d.mint_token(ns, name, &[audience.as_str()], exp)
        );
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
