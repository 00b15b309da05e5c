//! Feeds secrets through every logging path (messages, kv fields by Display and Debug, error
//! values, Debug of structs holding `Secret`, URLs, creds text) in both formats, through the
//! installed global logger and a second logger, and finds none of them in the output.
//! All keys and tokens below are test values made for this file.

use std::sync::{Mutex, OnceLock};

use log::Log;
use nats_k8s_callout::authz::AuthRequest;
use nats_k8s_callout::logging::{self, Filter, Format, Logger, MemorySink};
use nats_k8s_callout::secret::Secret;

// A made-up ServiceAccount-token-shaped JWT (header.payload.signature).
const JWT_HEADER: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3Qta2V5In0";
const JWT_PAYLOAD: &str = "eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMuZGVmYXVsdC5zdmMiLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c2hvcDpvcmRlcnMifQ";
const JWT_SIG: &str = "dGVzdC1zaWduYXR1cmUtbm90LXJlYWwtMDEyMzQ1Njc4OWFiY2RlZg";
// A test nkey seed (user seed shape: S, U, then 56 base32 characters).
const SEED: &str = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY";
const XKEY_SEED: &str = "SXAFGPD3AWLY7ORGGYJHEC5EMHTWOWVYIXY2UXSMZCYRUVD4F4PUKUPIMA";
const PASSWORD: &str = "Tr0ub4dor-and-3";

fn jwt() -> String {
    format!("{JWT_HEADER}.{JWT_PAYLOAD}.{JWT_SIG}")
}

fn secrets() -> Vec<&'static str> {
    vec![JWT_HEADER, JWT_PAYLOAD, JWT_SIG, SEED, XKEY_SEED, PASSWORD]
}

#[derive(Debug)]
#[allow(dead_code)]
struct Settings {
    url: String,
    password: Secret,
    token: Secret,
}

/// Every path, through `logger`. Returns how many records were emitted.
fn emit<L: Log + ?Sized>(logger: &L) -> usize {
    let jwt = jwt();
    let req = AuthRequest {
        auth_token: Some(Secret::new(jwt.clone())),
        pass: Some(Secret::new(PASSWORD)),
        user: Some("shop".into()),
        client_host: "10.0.0.7".into(),
        ..Default::default()
    };
    let settings = Settings {
        url: "nats://127.0.0.1:4222".into(),
        password: Secret::new(PASSWORD),
        token: Secret::new(jwt.clone()),
    };
    let io_err = std::io::Error::other(format!("request failed: token {jwt} rejected"));
    let url_err = format!("GET https://api/x?access_token={jwt}&watch=1 failed");
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{SEED}\n------END USER NKEY SEED------\n"
    );

    // Messages.
    log::info!(logger: logger, "client token {}", jwt);
    log::warn!(logger: logger, "loaded seed {} and xkey {}", SEED, XKEY_SEED);
    log::info!(logger: logger, "connect with password={} then", PASSWORD);
    log::warn!(logger: logger, "login failed, password: {}", PASSWORD);
    log::info!(logger: logger, "header Authorization: Bearer {}", jwt);
    log::info!(logger: logger, "dial nats://admin:{}@nats:4222", PASSWORD);
    log::debug!(logger: logger, "creds file:\n{}", creds);
    // kv fields with sensitive keys, by Display and Debug.
    log::info!(logger: logger, token = jwt.as_str(), password = PASSWORD, nkey_seed = SEED; "kv sensitive keys");
    log::info!(logger: logger, auth_token:? = jwt, NATS_PASSWORD:% = PASSWORD; "kv debug/display");
    // kv fields with innocent keys but secret values.
    log::warn!(logger: logger, detail = jwt.as_str(), url = url_err.as_str(), note:% = SEED; "kv innocent keys");
    // Errors, in fields and messages, Display and Debug.
    log::error!(logger: logger, error:% = io_err; "kube request failed");
    log::error!(logger: logger, error:? = io_err; "kube request failed (debug)");
    log::error!(logger: logger, "failed: {} / {:?}", io_err, url_err);
    // Debug of structs holding Secret.
    log::debug!(logger: logger, request:? = req; "auth request");
    log::debug!(logger: logger, "settings {:?} request {:#?}", settings, req);
    15
}

fn assert_clean(out: &str, records: usize, what: &str) {
    assert!(
        out.lines().count() >= records,
        "{what}: expected at least {records} lines, got:\n{out}"
    );
    for s in secrets() {
        assert!(!out.contains(s), "{what}: secret {s} leaked in:\n{out}");
    }
    assert!(
        out.contains("[REDACTED"),
        "{what}: nothing was masked?\n{out}"
    );
    // Ordinary information survives.
    assert!(out.contains("10.0.0.7"), "{what}: {out}");
    assert!(out.contains("kube request failed"), "{what}: {out}");
}

fn global_sink() -> &'static MemorySink {
    static SINK: OnceLock<MemorySink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = MemorySink::new();
        logging::init_with_sink("trace", "json", Box::new(sink.clone())).expect("init logger");
        sink
    })
}

/// Tests share the global sink: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn json_global_logger_leaks_nothing_and_stays_valid_json() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let sink = global_sink();
    sink.clear();
    let n = emit(log::logger());
    let out = sink.contents();
    assert_clean(&out, n, "json");
    for line in out.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v.get(key).is_some(), "{key} missing: {line}");
        }
    }
    assert!(out.contains("\"password\":\"[REDACTED]\""), "{out}");
}

#[test]
fn text_logger_leaks_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    global_sink(); // sets the max level
    let sink = MemorySink::new();
    let logger = Logger::new(
        Filter::parse("trace").unwrap(),
        Format::Text,
        Box::new(sink.clone()),
    );
    let n = emit(&logger);
    let out = sink.contents();
    assert_clean(&out, n, "text");
    assert!(out.contains("password=[REDACTED]"), "{out}");
}

#[test]
fn a_secret_really_would_show_without_redaction() {
    // Guards the test itself: the inputs above do contain the secrets before redaction.
    let raw = format!("{} {SEED} password={PASSWORD}", jwt());
    for s in secrets().into_iter().filter(|s| *s != XKEY_SEED) {
        assert!(raw.contains(s));
    }
    let red = logging::redact(&raw);
    for s in secrets().into_iter().filter(|s| *s != XKEY_SEED) {
        assert!(!red.contains(s), "{s} in {red}");
    }
}
