//! A Kubernetes API double for tests, the local demo and the benchmarks: a small HTTP/1.1
//! server (std `TcpListener`, one thread per connection, optional TLS with the TEST-ONLY
//! certificate in `tests/fixtures/tls`) that behaves like kube-apiserver for ServiceAccount
//! list/watch/get, TokenRequest, the OIDC discovery document and the JWKS (k8s-side §4.8).
//!
//! Tests drive it in-process: mutate ServiceAccounts (each mutation bumps a global
//! resourceVersion and fans out to open watches), inject faults (410, 504, 403, cut streams,
//! outages, delays), rotate the bearer token, count requests and mint tokens signed by the
//! TEST-ONLY RSA key in `tests/fixtures/k8s`. It must never be used by the service itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use data_encoding::BASE64URL_NOPAD;
use serde::Serialize;
use serde_json::{json, Value};

/// TEST-ONLY TLS material (127.0.0.1 / localhost).
pub const CA_PEM: &str = include_str!("../../tests/fixtures/tls/ca.pem");
const SERVER_CERT_PEM: &str = include_str!("../../tests/fixtures/tls/server.pem");
const SERVER_KEY_PEM: &str = include_str!("../../tests/fixtures/tls/server-key.pem");
/// TEST-ONLY RSA signing key (PKCS#1) and its public key (PKIX).
const RSA_PRIVATE_PEM: &str = include_str!("../../tests/fixtures/k8s/rsa_private.pem");
const RSA_PUBLIC_PEM: &str = include_str!("../../tests/fixtures/k8s/rsa_public.pem");

/// The issuer the double puts into tokens and discovery by default (same as the vectors).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The identity the double reports in 403 messages for an authenticated caller.
const CALLER: &str = "system:serviceaccount:nats:nats-callout";

/// How to start the double.
#[derive(Debug, Clone)]
pub struct DoubleOptions {
    /// 0 = any free port.
    pub port: u16,
    pub tls: bool,
    /// The bearer token accepted at start.
    pub token: String,
    pub issuer: String,
    /// Bookmark period for watches with `allowWatchBookmarks=true`; `None` = never.
    pub bookmark_period: Option<Duration>,
    /// Smallest TokenRequest `expirationSeconds` (kube: 600).
    pub min_token_seconds: u64,
    /// Serve discovery and JWKS to requests without a bearer token.
    pub anonymous_discovery: bool,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        DoubleOptions {
            port: 0,
            tls: false,
            token: "test-api-token-1".to_string(),
            issuer: DEFAULT_ISSUER.to_string(),
            bookmark_period: Some(Duration::from_secs(1)),
            min_token_seconds: 600,
            anonymous_discovery: true,
        }
    }
}

/// A ServiceAccount as the double stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: u64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub deleting: bool,
}

impl ServiceAccount {
    fn to_json(&self, with_kind: bool) -> Value {
        let mut meta = json!({
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "resourceVersion": self.resource_version.to_string(),
            "creationTimestamp": "2025-12-31T23:00:00Z",
        });
        if !self.labels.is_empty() {
            meta["labels"] = json!(self.labels);
        }
        if !self.annotations.is_empty() {
            meta["annotations"] = json!(self.annotations);
        }
        if self.deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        if with_kind {
            json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": meta})
        } else {
            json!({ "metadata": meta })
        }
    }
}

/// Which requests an injected fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    List,
    Watch,
    Get,
}

/// A fault answered instead of the next request of a [`Target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 410 Expired Status.
    Http410,
    /// HTTP 504 "Too large resource version" Status.
    Http504TooLarge,
    /// HTTP 500 InternalError Status.
    Http500,
    /// (watch only) 200 stream with one ERROR 410 event.
    ErrorEvent410,
}

struct HistEvent {
    rv: u64,
    namespace: String,
    labels: BTreeMap<String, String>,
    line: Arc<str>,
}

enum WatchMsg {
    Event(Arc<HistEvent>),
    Cut { partial: bool },
}

struct Watcher {
    tx: Sender<WatchMsg>,
}

struct Snapshot {
    rv: u64,
    items: Vec<Arc<ServiceAccount>>,
}

struct State {
    sas: BTreeMap<(String, String), Arc<ServiceAccount>>,
    rv: u64,
    history: VecDeque<Arc<HistEvent>>,
    /// Watches may resume from any RV ≥ this.
    history_floor: u64,
    watchers: Vec<Watcher>,
    snapshots: HashMap<u64, Snapshot>,
    next_snapshot: u64,
    tokens: Vec<String>,
    forbidden: bool,
    delay: Duration,
    faults: Vec<(Target, Fault)>,
    counts: HashMap<&'static str, u64>,
    bookmarks: bool,
    min_token_seconds: u64,
    uid_counter: u64,
}

const MAX_HISTORY: usize = 100_000;
const MAX_SNAPSHOTS: usize = 16;

struct Inner {
    state: Mutex<State>,
    opts: DoubleOptions,
    port: u16,
    down: AtomicBool,
    active_watches: AtomicUsize,
    tls: Option<Arc<rustls::ServerConfig>>,
    key: ring::signature::RsaKeyPair,
    kid: String,
    jwks: String,
}

/// The running double. Dropping it stops the listener and cuts every open watch.
pub struct K8sDouble {
    inner: Arc<Inner>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// Claims of a minted token beyond the defaults ([`K8sDouble::mint_token_with`]).
#[derive(Debug, Clone, Default)]
pub struct MintSpec {
    pub namespace: String,
    pub name: String,
    /// Defaults to the ServiceAccount's uid (or a fixed dummy when it does not exist).
    pub uid: Option<String>,
    pub audiences: Vec<String>,
    /// Unix seconds; defaults to now.
    pub iat: Option<u64>,
    /// Unix seconds.
    pub exp: u64,
    /// `(name, uid)` of a bound pod.
    pub pod: Option<(String, String)>,
    pub secret: Option<(String, String)>,
    pub node: Option<(String, String)>,
    pub jti: Option<String>,
    /// Defaults to the double's issuer.
    pub issuer: Option<String>,
}

#[derive(Serialize)]
struct Ref {
    name: String,
    uid: String,
}

#[derive(Serialize)]
struct KubeClaims {
    namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<Ref>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<Ref>,
    serviceaccount: Ref,
}

/// Field order = alphabetical, like kube's JSON serialization of the claims.
#[derive(Serialize)]
struct Claims {
    aud: Vec<String>,
    exp: u64,
    iat: u64,
    iss: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubeClaims,
    nbf: u64,
    sub: String,
}

fn random_uuid() -> String {
    let a = crate::backoff::random_u64();
    let b = crate::backoff::random_u64();
    let h = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn to_rfc3339(unix: u64) -> String {
    let (y, m, d) = crate::logging::civil_from_days((unix / 86_400) as i64);
    let secs = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v["code"] = json!(code);
    v
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        406 => "Not Acceptable",
        410 => "Gone",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(c: &mut dyn Conn) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(1024 * 1024);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

fn respond(c: &mut dyn Conn, code: u16, content_type: &str, extra: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(code),
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(body);
    let _ = c.flush();
}

fn respond_json(c: &mut dyn Conn, code: u16, v: &Value) {
    let body = serde_json::to_vec(v).unwrap_or_default();
    respond(c, code, "application/json", &[], &body);
}

fn write_chunk(c: &mut dyn Conn, data: &[u8]) -> std::io::Result<()> {
    c.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    c.write_all(data)?;
    c.write_all(b"\r\n")?;
    c.flush()
}

/// A simple label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated.
fn selector_matches(sel: &str, labels: &BTreeMap<String, String>) -> bool {
    sel.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                labels.get(k.trim()).map(String::as_str) != Some(v.trim())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                labels.get(k.trim()).map(String::as_str) == Some(v.trim())
            } else if let Some(k) = t.strip_prefix('!') {
                !labels.contains_key(k.trim())
            } else {
                labels.contains_key(t)
            }
        })
}

impl State {
    fn bump(&mut self, kind: &str, sa: &ServiceAccount) {
        let line: Arc<str> =
            format!("{}\n", json!({"type": kind, "object": sa.to_json(true)})).into();
        let ev = Arc::new(HistEvent {
            rv: sa.resource_version,
            namespace: sa.namespace.clone(),
            labels: sa.labels.clone(),
            line,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > MAX_HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.history_floor = old.rv;
            }
        }
        self.watchers
            .retain(|w| w.tx.send(WatchMsg::Event(ev.clone())).is_ok());
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn take_fault(&mut self, t: Target) -> Option<Fault> {
        let i = self.faults.iter().position(|(tt, _)| *tt == t)?;
        Some(self.faults.remove(i).1)
    }
}

impl K8sDouble {
    /// Starts the double on 127.0.0.1.
    pub fn start(opts: DoubleOptions) -> std::io::Result<K8sDouble> {
        use rustls_pki_types::pem::PemObject;
        let key_der =
            rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(RSA_PRIVATE_PEM.as_bytes())
                .map_err(|e| std::io::Error::other(format!("test RSA key: {e:?}")))?;
        let key = ring::signature::RsaKeyPair::from_der(key_der.secret_pkcs1_der())
            .map_err(|e| std::io::Error::other(format!("test RSA key: {e}")))?;
        let spki =
            rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(RSA_PUBLIC_PEM.as_bytes())
                .map_err(|e| std::io::Error::other(format!("test RSA public key: {e:?}")))?;
        let kid =
            BASE64URL_NOPAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
        let comps: ring::rsa::PublicKeyComponents<Vec<u8>> = key.public().into();
        let jwks = format!(
            r#"{{"keys":[{{"use":"sig","kty":"RSA","kid":"{kid}","alg":"RS256","n":"{}","e":"{}"}}]}}"#,
            BASE64URL_NOPAD.encode(&comps.n),
            BASE64URL_NOPAD.encode(&comps.e)
        );
        let tls = if opts.tls { Some(server_tls()?) } else { None };
        let listener = TcpListener::bind(("127.0.0.1", opts.port))?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                sas: BTreeMap::new(),
                rv: 1000,
                history: VecDeque::new(),
                history_floor: 1000,
                watchers: Vec::new(),
                snapshots: HashMap::new(),
                next_snapshot: 1,
                tokens: vec![opts.token.clone()],
                forbidden: false,
                delay: Duration::ZERO,
                faults: Vec::new(),
                counts: HashMap::new(),
                bookmarks: opts.bookmark_period.is_some(),
                min_token_seconds: opts.min_token_seconds,
                uid_counter: 0,
            }),
            opts,
            port,
            down: AtomicBool::new(false),
            active_watches: AtomicUsize::new(0),
            tls,
            key,
            kid,
            jwks,
        });
        let d = K8sDouble {
            inner,
            acceptor: Mutex::new(None),
        };
        d.spawn_acceptor(listener)?;
        Ok(d)
    }

    fn spawn_acceptor(&self, listener: TcpListener) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let inner = self.inner.clone();
        let t = std::thread::Builder::new()
            .name("k8s-double-accept".into())
            .spawn(move || {
                while !inner.down.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let inner = inner.clone();
                            let _ = std::thread::Builder::new()
                                .name("k8s-double-conn".into())
                                .spawn(move || serve_conn(&inner, s));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })?;
        *self.acceptor.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- where it is ----

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.inner.port))
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub fn url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.inner.port)
    }

    /// The TEST-ONLY CA that signed the server certificate.
    pub fn ca_pem(&self) -> &'static str {
        CA_PEM
    }

    /// The first currently accepted bearer token.
    pub fn token(&self) -> String {
        self.state().tokens.first().cloned().unwrap_or_default()
    }

    pub fn issuer(&self) -> &str {
        &self.inner.opts.issuer
    }

    /// The kid of the signing key (`JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU`).
    pub fn kid(&self) -> &str {
        &self.inner.kid
    }

    /// The JWKS document served at `/openid/v1/jwks`.
    pub fn jwks_json(&self) -> &str {
        &self.inner.jwks
    }

    // ---- ServiceAccounts ----

    /// Creates (or replaces) a ServiceAccount with a fresh uid; returns it. Emits ADDED
    /// (MODIFIED when it existed).
    pub fn create_sa(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> ServiceAccount {
        self.create_sa_full(namespace, name, None, &[], annotations)
    }

    /// As [`K8sDouble::create_sa`] with an explicit uid (`None` = generated) and labels.
    pub fn create_sa_full(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> ServiceAccount {
        let mut st = self.state();
        st.rv += 1;
        st.uid_counter += 1;
        let sa = ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.map(str::to_string).unwrap_or_else(random_uuid),
            resource_version: st.rv,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            deleting: false,
        };
        let existed = st
            .sas
            .insert(
                (sa.namespace.clone(), sa.name.clone()),
                Arc::new(sa.clone()),
            )
            .is_some();
        st.bump(if existed { "MODIFIED" } else { "ADDED" }, &sa);
        sa
    }

    /// Bulk load without watch events or history (for big seeds such as 100 000 accounts).
    pub fn seed(&self, sas: impl IntoIterator<Item = ServiceAccount>) {
        let mut st = self.state();
        for mut sa in sas {
            st.rv += 1;
            sa.resource_version = st.rv;
            st.sas
                .insert((sa.namespace.clone(), sa.name.clone()), Arc::new(sa));
        }
        st.history.clear();
        st.history_floor = st.rv;
    }

    fn modify(&self, namespace: &str, name: &str, f: impl FnOnce(&mut ServiceAccount)) -> bool {
        let mut st = self.state();
        let key = (namespace.to_string(), name.to_string());
        let Some(old) = st.sas.get(&key) else {
            return false;
        };
        let mut sa = (**old).clone();
        f(&mut sa);
        st.rv += 1;
        sa.resource_version = st.rv;
        st.sas.insert(key, Arc::new(sa.clone()));
        st.bump("MODIFIED", &sa);
        true
    }

    /// Replaces the annotations (MODIFIED). False if the account does not exist.
    pub fn set_annotations(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> bool {
        self.modify(namespace, name, |sa| {
            sa.annotations = annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    }

    /// Sets `deletionTimestamp` (MODIFIED), like a delete held by a finalizer.
    pub fn mark_deleting(&self, namespace: &str, name: &str) -> bool {
        self.modify(namespace, name, |sa| sa.deleting = true)
    }

    /// Deletes (DELETED with the last state and a new RV). False if it did not exist.
    pub fn delete_sa(&self, namespace: &str, name: &str) -> bool {
        let mut st = self.state();
        let Some(old) = st.sas.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        st.rv += 1;
        let mut sa = (*old).clone();
        sa.resource_version = st.rv;
        st.bump("DELETED", &sa);
        true
    }

    pub fn get_sa(&self, namespace: &str, name: &str) -> Option<ServiceAccount> {
        self.state()
            .sas
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| (**s).clone())
    }

    pub fn sa_count(&self) -> usize {
        self.state().sas.len()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    // ---- faults and switches ----

    /// Answer every ServiceAccount request with 403 Forbidden (RBAC), or stop doing so.
    pub fn set_forbidden(&self, on: bool) {
        self.state().forbidden = on;
    }

    /// Accept `new` from now on; keep accepting the old tokens too when `keep_old`.
    pub fn rotate_token(&self, new: &str, keep_old: bool) {
        let mut st = self.state();
        if !keep_old {
            st.tokens.clear();
        }
        st.tokens.insert(0, new.to_string());
    }

    /// Delay every response by `d`.
    pub fn set_delay(&self, d: Duration) {
        self.state().delay = d;
    }

    /// Turn bookmarks on or off (when on, they follow `bookmark_period`).
    pub fn set_bookmarks(&self, on: bool) {
        self.state().bookmarks = on && self.inner.opts.bookmark_period.is_some();
    }

    /// TokenRequest: allow `expirationSeconds` down to `secs` (kube: 600).
    pub fn set_min_token_seconds(&self, secs: u64) {
        self.state().min_token_seconds = secs;
    }

    /// Answer the next request of `target` with `fault` (faults queue up).
    pub fn inject(&self, target: Target, fault: Fault) {
        self.state().faults.push((target, fault));
    }

    /// Every outstanding `continue` token becomes expired (410 Expired).
    pub fn expire_continue_tokens(&self) {
        self.state().snapshots.clear();
    }

    /// Forget the watch history: a watch from any RV older than now gets an ERROR 410 event.
    pub fn compact_history(&self) {
        let mut st = self.state();
        st.history.clear();
        st.history_floor = st.rv;
    }

    /// Cut every open watch, without the final chunk; with `partial`, first send half an event.
    pub fn cut_watches(&self, partial: bool) {
        let mut st = self.state();
        for w in st.watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::Cut { partial });
        }
    }

    /// Open watch streams right now.
    pub fn open_watches(&self) -> usize {
        self.inner.active_watches.load(Ordering::SeqCst)
    }

    /// Requests seen by kind: `list`, `watch`, `get`, `token_request`, `jwks`, `discovery`,
    /// `unauthorized`, `forbidden`, `anonymous`.
    pub fn requests(&self, kind: &str) -> u64 {
        self.state().counts.get(kind).copied().unwrap_or(0)
    }

    /// Stops listening and cuts all watches (connections are refused until [`Self::come_back`]).
    pub fn go_down(&self) {
        self.inner.down.store(true, Ordering::SeqCst);
        if let Some(t) = self
            .acceptor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
        self.cut_watches(false);
    }

    /// Listens again on the same port, with the same state.
    pub fn come_back(&self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.inner.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.inner.down.store(false, Ordering::SeqCst);
        self.spawn_acceptor(listener)
    }

    // ---- tokens ----

    /// A token for `namespace/name` with these audiences, issued now, expiring at `exp`
    /// (Unix seconds), bound to no object. The uid is the account's (a dummy if missing).
    pub fn mint_token(&self, namespace: &str, name: &str, audiences: &[&str], exp: u64) -> String {
        self.mint_token_with(&MintSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            exp,
            ..MintSpec::default()
        })
    }

    /// A token with every claim under control (RS256, kid of the TEST key, sorted claims).
    pub fn mint_token_with(&self, spec: &MintSpec) -> String {
        let mut spec = spec.clone();
        if spec.uid.is_none() {
            spec.uid = self.get_sa(&spec.namespace, &spec.name).map(|s| s.uid);
        }
        mint_with(&self.inner, &spec)
    }
}

impl Drop for K8sDouble {
    fn drop(&mut self) {
        self.go_down();
    }
}

fn server_tls() -> std::io::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(SERVER_CERT_PEM.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| std::io::Error::other(format!("test server cert: {e:?}")))?;
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY_PEM.as_bytes())
        .map_err(|e| std::io::Error::other(format!("test server key: {e:?}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(std::io::Error::other)?;
    Ok(Arc::new(cfg))
}

fn serve_conn(inner: &Arc<Inner>, tcp: TcpStream) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_nodelay(true);
    let Ok(raw) = tcp.try_clone() else { return };
    match &inner.tls {
        Some(cfg) => {
            let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                return;
            };
            let mut s = rustls::StreamOwned::new(conn, tcp);
            handle(inner, &mut s, &raw);
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        None => {
            let mut s = tcp;
            handle(inner, &mut s, &raw);
        }
    }
    let _ = raw.shutdown(Shutdown::Both);
}

enum Auth {
    Ok,
    Anonymous,
    Invalid,
}

fn handle(inner: &Arc<Inner>, c: &mut dyn Conn, raw: &TcpStream) {
    let Some(req) = read_request(c) else { return };
    let delay = inner.state.lock().unwrap_or_else(|p| p.into_inner()).delay;
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    let auth = {
        let st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        match req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            None => Auth::Anonymous,
            Some(t) if st.tokens.iter().any(|x| x == t.trim()) => Auth::Ok,
            Some(_) => Auth::Invalid,
        }
    };
    if matches!(auth, Auth::Invalid) {
        count(inner, "unauthorized");
        return respond_json(c, 401, &status(401, "Unauthorized", "Unauthorized", None));
    }
    let path = req.path.clone();
    if path == "/.well-known/openid-configuration" || path == "/openid/v1/jwks" {
        if matches!(auth, Auth::Anonymous) && !inner.opts.anonymous_discovery {
            count(inner, "anonymous");
            let msg = format!("forbidden: User \"system:anonymous\" cannot get path \"{path}\"");
            return respond_json(c, 403, &status(403, "Forbidden", &msg, Some(json!({}))));
        }
        return serve_oidc(inner, c, &req);
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/serviceaccounts | /api/v1/namespaces/NS/serviceaccounts[/NAME[/token]]
    let (ns, name, sub) = match segs.as_slice() {
        ["api", "v1", "serviceaccounts"] => (None, None, None),
        ["api", "v1", "namespaces", ns, "serviceaccounts"] => (Some(*ns), None, None),
        ["api", "v1", "namespaces", ns, "serviceaccounts", n] => (Some(*ns), Some(*n), None),
        ["api", "v1", "namespaces", ns, "serviceaccounts", n, s] => (Some(*ns), Some(*n), Some(*s)),
        _ => {
            let msg = "the server could not find the requested resource";
            return respond_json(c, 404, &status(404, "NotFound", msg, Some(json!({}))));
        }
    };
    let ns = ns.map(percent_decode);
    let name = name.map(percent_decode);
    let watch = matches!(req.param("watch"), Some("1") | Some("true"));
    let (verb, resource) = match (req.method.as_str(), &name, sub) {
        ("POST", Some(_), Some("token")) => ("create", "serviceaccounts/token"),
        ("GET", Some(_), None) => ("get", "serviceaccounts"),
        ("GET", None, None) if watch => ("watch", "serviceaccounts"),
        ("GET", None, None) => ("list", "serviceaccounts"),
        _ => {
            let msg = "the server does not allow this method on the requested resource";
            return respond_json(
                c,
                405,
                &status(405, "MethodNotAllowed", msg, Some(json!({}))),
            );
        }
    };
    let forbidden = inner
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .forbidden;
    if matches!(auth, Auth::Anonymous) || forbidden {
        count(inner, if forbidden { "forbidden" } else { "anonymous" });
        let user = if matches!(auth, Auth::Anonymous) {
            "system:anonymous"
        } else {
            CALLER
        };
        let scope = match &ns {
            Some(n) => format!("in the namespace \"{n}\""),
            None => "at the cluster scope".to_string(),
        };
        let (subject, details) = match &name {
            Some(n) => (
                format!("serviceaccounts \"{n}\""),
                json!({"name": n, "kind": "serviceaccounts"}),
            ),
            None => (
                "serviceaccounts".to_string(),
                json!({"kind": "serviceaccounts"}),
            ),
        };
        let msg = format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"\" {scope}"
        );
        return respond_json(c, 403, &status(403, "Forbidden", &msg, Some(details)));
    }
    match verb {
        "create" => token_request(
            inner,
            c,
            ns.as_deref().unwrap_or(""),
            name.as_deref().unwrap_or(""),
            &req,
        ),
        "get" => get_one(
            inner,
            c,
            ns.as_deref().unwrap_or(""),
            name.as_deref().unwrap_or(""),
        ),
        "watch" => serve_watch(inner, c, raw, ns.as_deref(), &req),
        _ => serve_list(inner, c, ns.as_deref(), &req),
    }
}

fn count(inner: &Inner, what: &'static str) {
    inner
        .state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .count(what);
}

fn serve_oidc(inner: &Arc<Inner>, c: &mut dyn Conn, req: &Request) {
    let cache = [("Cache-Control", "public, max-age=3600")];
    if req.path == "/openid/v1/jwks" {
        count(inner, "jwks");
        let accept = req.header("accept").unwrap_or("*/*");
        let ok = accept
            .split(',')
            .map(|a| a.split(';').next().unwrap_or("").trim())
            .any(|a| a == "application/jwk-set+json" || a == "*/*" || a.is_empty());
        if !ok {
            let msg = "only the following media types are accepted: application/jwk-set+json";
            return respond_json(c, 406, &status(406, "NotAcceptable", msg, None));
        }
        return respond(
            c,
            200,
            "application/jwk-set+json",
            &cache,
            inner.jwks.as_bytes(),
        );
    }
    count(inner, "discovery");
    let iss = &inner.opts.issuer;
    let doc = format!(
        r#"{{"issuer":"{iss}","jwks_uri":"{}/openid/v1/jwks","response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256"]}}"#,
        iss.trim_end_matches('/')
    );
    respond(c, 200, "application/json", &cache, doc.as_bytes())
}

fn fault_response(c: &mut dyn Conn, f: Fault, rv: u64) {
    match f {
        Fault::Http410 | Fault::ErrorEvent410 => respond_json(
            c,
            410,
            &status(
                410,
                "Expired",
                "The resourceVersion for the provided list is too old.",
                None,
            ),
        ),
        Fault::Http504TooLarge => {
            let msg = format!("Too large resource version: {}, current: {rv}", rv + 100);
            let details = json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1});
            respond_json(c, 504, &status(504, "Timeout", &msg, Some(details)))
        }
        Fault::Http500 => respond_json(
            c,
            500,
            &status(
                500,
                "InternalError",
                "Internal error occurred: injected by the test",
                None,
            ),
        ),
    }
}

fn get_one(inner: &Arc<Inner>, c: &mut dyn Conn, ns: &str, name: &str) {
    let (sa, fault, rv) = {
        let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.count("get");
        let f = st.take_fault(Target::Get);
        (
            st.sas.get(&(ns.to_string(), name.to_string())).cloned(),
            f,
            st.rv,
        )
    };
    if let Some(f) = fault {
        return fault_response(c, f, rv);
    }
    match sa {
        Some(sa) => respond_json(c, 200, &sa.to_json(true)),
        None => respond_json(
            c,
            404,
            &status(
                404,
                "NotFound",
                &format!("serviceaccounts \"{name}\" not found"),
                Some(json!({"name": name, "kind": "serviceaccounts"})),
            ),
        ),
    }
}

fn serve_list(inner: &Arc<Inner>, c: &mut dyn Conn, ns: Option<&str>, req: &Request) {
    let limit: usize = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let cont = req.param("continue").filter(|s| !s.is_empty());
    let rv_param = req.param("resourceVersion").filter(|s| !s.is_empty());
    let selector = req.param("labelSelector").unwrap_or("").to_string();
    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
    st.count("list");
    if let Some(f) = st.take_fault(Target::List) {
        let rv = st.rv;
        drop(st);
        return fault_response(c, f, rv);
    }
    if cont.is_some() && rv_param.is_some() {
        drop(st);
        let msg = "specifying resource version is not allowed when using continue";
        return respond_json(c, 400, &status(400, "BadRequest", msg, None));
    }
    let (snap_id, offset) = match cont {
        None => {
            let items: Vec<Arc<ServiceAccount>> = st
                .sas
                .values()
                .filter(|s| ns.is_none_or(|n| s.namespace == n))
                .filter(|s| selector_matches(&selector, &s.labels))
                .cloned()
                .collect();
            let id = st.next_snapshot;
            st.next_snapshot += 1;
            let rv = st.rv;
            st.snapshots.insert(id, Snapshot { rv, items });
            if st.snapshots.len() > MAX_SNAPSHOTS {
                let oldest = *st.snapshots.keys().min().unwrap_or(&id);
                st.snapshots.remove(&oldest);
            }
            (id, 0usize)
        }
        Some(tok) => {
            let parsed = BASE64URL_NOPAD
                .decode(tok.as_bytes())
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| Some((v["s"].as_u64()?, v["o"].as_u64()? as usize)));
            let Some((id, off)) = parsed else {
                drop(st);
                let msg = "continue key is not valid: illegal base64 data";
                return respond_json(c, 400, &status(400, "BadRequest", msg, None));
            };
            if !st.snapshots.contains_key(&id) {
                drop(st);
                let msg = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";
                return respond_json(c, 410, &status(410, "Expired", msg, None));
            }
            (id, off)
        }
    };
    let snap = &st.snapshots[&snap_id];
    let total = snap.items.len();
    let end = if limit == 0 {
        total
    } else {
        (offset + limit).min(total)
    };
    let items: Vec<Value> = snap.items[offset.min(total)..end]
        .iter()
        .map(|s| s.to_json(false))
        .collect();
    let mut meta = json!({"resourceVersion": snap.rv.to_string()});
    if end < total {
        let last = &snap.items[end - 1];
        let tok = json!({"v": "meta.k8s.io/v1", "rv": snap.rv, "start": format!("{}/{}\u{0}", last.namespace, last.name), "s": snap_id, "o": end});
        meta["continue"] = json!(BASE64URL_NOPAD.encode(tok.to_string().as_bytes()));
        meta["remainingItemCount"] = json!(total - end);
    } else {
        st.snapshots.remove(&snap_id);
    }
    drop(st);
    let body =
        json!({"kind": "ServiceAccountList", "apiVersion": "v1", "metadata": meta, "items": items});
    respond_json(c, 200, &body)
}

fn serve_watch(
    inner: &Arc<Inner>,
    c: &mut dyn Conn,
    raw: &TcpStream,
    ns: Option<&str>,
    req: &Request,
) {
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let want_bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let selector = req.param("labelSelector").unwrap_or("").to_string();
    let from: Option<u64> = req
        .param("resourceVersion")
        .filter(|s| !s.is_empty() && *s != "0")
        .map(|s| s.parse().unwrap_or(0));
    let matches = |e_ns: &str, labels: &BTreeMap<String, String>| {
        ns.is_none_or(|n| n == e_ns) && selector_matches(&selector, labels)
    };
    let (rx, initial, error410, mut last_rv): (
        Receiver<WatchMsg>,
        Vec<Arc<str>>,
        Option<String>,
        u64,
    );
    {
        let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.count("watch");
        if let Some(f) = st.take_fault(Target::Watch) {
            if f != Fault::ErrorEvent410 {
                let rv = st.rv;
                drop(st);
                return fault_response(c, f, rv);
            }
            error410 = Some(format!(
                "too old resource version: {} ({})",
                from.unwrap_or(0),
                st.history_floor + 1
            ));
            rx = crossbeam_channel::bounded(1).1;
            initial = Vec::new();
            last_rv = st.rv;
        } else {
            match from {
                Some(rv) if rv > st.rv => {
                    let cur = st.rv;
                    drop(st);
                    return fault_response(c, Fault::Http504TooLarge, cur);
                }
                Some(rv) if rv < st.history_floor => {
                    error410 = Some(format!(
                        "too old resource version: {rv} ({})",
                        st.history_floor + 1
                    ));
                    rx = crossbeam_channel::bounded(1).1;
                    initial = Vec::new();
                    last_rv = st.rv;
                }
                _ => {
                    error410 = None;
                    initial = match from {
                        Some(rv) => st
                            .history
                            .iter()
                            .filter(|e| e.rv > rv && matches(&e.namespace, &e.labels))
                            .map(|e| e.line.clone())
                            .collect(),
                        None => st
                            .sas
                            .values()
                            .filter(|s| matches(&s.namespace, &s.labels))
                            .map(|s| {
                                format!("{}\n", json!({"type": "ADDED", "object": s.to_json(true)}))
                                    .into()
                            })
                            .collect(),
                    };
                    let (tx, r) = crossbeam_channel::unbounded();
                    st.watchers.push(Watcher { tx });
                    rx = r;
                    last_rv = from.unwrap_or(st.rv).max(st.history_floor);
                }
            }
        }
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    if c.write_all(head.as_bytes())
        .and_then(|_| c.flush())
        .is_err()
    {
        return;
    }
    if let Some(msg) = error410 {
        let ev = json!({"type": "ERROR", "object": status(410, "Expired", &msg, None)});
        let _ = write_chunk(c, format!("{ev}\n").as_bytes());
        let _ = write_chunk(c, b"");
        return;
    }
    for line in &initial {
        if write_chunk(c, line.as_bytes()).is_err() {
            return;
        }
    }
    struct Active<'a>(&'a AtomicUsize);
    impl Drop for Active<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    inner.active_watches.fetch_add(1, Ordering::SeqCst);
    let _active = Active(&inner.active_watches);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let period = inner
        .opts
        .bookmark_period
        .unwrap_or(Duration::from_secs(3600));
    let mut next_bookmark = Instant::now() + period;
    loop {
        let now = Instant::now();
        if now >= deadline {
            let _ = write_chunk(c, b"");
            return;
        }
        let wake = deadline.min(next_bookmark);
        match rx.recv_timeout(wake - now) {
            Ok(WatchMsg::Event(e)) => {
                if e.rv > last_rv
                    && matches(&e.namespace, &e.labels)
                    && write_chunk(c, e.line.as_bytes()).is_err()
                {
                    return;
                }
                last_rv = last_rv.max(e.rv);
            }
            Ok(WatchMsg::Cut { partial }) => {
                if partial {
                    let _ = c.write_all(
                        b"40\r\n{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"ServiceAcc",
                    );
                    let _ = c.flush();
                }
                let _ = raw.shutdown(Shutdown::Both);
                return;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if Instant::now() >= next_bookmark {
                    next_bookmark = Instant::now() + period;
                    let (on, rv) = {
                        let st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                        (st.bookmarks, st.rv)
                    };
                    // Drain what is already queued so the bookmark never goes backwards.
                    while let Ok(msg) = rx.try_recv() {
                        match msg {
                            WatchMsg::Event(e) => {
                                if e.rv > last_rv
                                    && matches(&e.namespace, &e.labels)
                                    && write_chunk(c, e.line.as_bytes()).is_err()
                                {
                                    return;
                                }
                                last_rv = last_rv.max(e.rv);
                            }
                            WatchMsg::Cut { .. } => {
                                let _ = raw.shutdown(Shutdown::Both);
                                return;
                            }
                        }
                    }
                    last_rv = last_rv.max(rv);
                    if on && want_bookmarks {
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"resourceVersion": last_rv.to_string(), "creationTimestamp": null}}});
                        if write_chunk(c, format!("{bm}\n").as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let _ = raw.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn token_request(inner: &Arc<Inner>, c: &mut dyn Conn, ns: &str, name: &str, req: &Request) {
    let (uid, min) = {
        let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        st.count("token_request");
        (
            st.sas
                .get(&(ns.to_string(), name.to_string()))
                .map(|s| s.uid.clone()),
            st.min_token_seconds,
        )
    };
    let Some(uid) = uid else {
        return respond_json(
            c,
            404,
            &status(
                404,
                "NotFound",
                &format!("serviceaccounts \"{name}\" not found"),
                Some(json!({"name": name, "kind": "serviceaccounts"})),
            ),
        );
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let spec = &body["spec"];
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![inner.opts.issuer.clone()]);
    let secs = spec["expirationSeconds"].as_u64().unwrap_or(3600);
    if secs < min || secs > u64::from(u32::MAX) {
        let msg = format!(
            "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {secs}: may not specify a duration less than {} seconds",
            min
        );
        let details = json!({"name": name, "group": "authentication.k8s.io", "kind": "TokenRequest",
            "causes": [{"reason": "FieldValueInvalid", "message": "Invalid value", "field": "spec.expirationSeconds"}]});
        return respond_json(c, 422, &status(422, "Invalid", &msg, Some(details)));
    }
    let bound = &spec["boundObjectRef"];
    let bref = match (bound["name"].as_str(), bound["uid"].as_str()) {
        (Some(n), Some(u)) => Some((n.to_string(), u.to_string())),
        (Some(n), None) => Some((n.to_string(), random_uuid())),
        _ => None,
    };
    let kind = bound["kind"].as_str().unwrap_or("");
    let now = crate::clock::unix_now();
    let token = mint_with(
        inner,
        &MintSpec {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: Some(uid),
            audiences: audiences.clone(),
            iat: Some(now),
            exp: now + secs,
            pod: bref.clone().filter(|_| kind == "Pod"),
            secret: bref.clone().filter(|_| kind == "Secret"),
            node: bref.filter(|_| kind == "Node"),
            ..MintSpec::default()
        },
    );
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": secs});
    if bound.is_object() {
        out_spec["boundObjectRef"] = bound.clone();
    }
    let resp = json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": to_rfc3339(now + secs)},
    });
    let body = serde_json::to_vec(&resp).unwrap_or_default();
    respond(c, 201, "application/json", &[], &body)
}

/// Signs a kube-layout token (shared by the in-process API and the TokenRequest endpoint).
fn mint_with(inner: &Inner, spec: &MintSpec) -> String {
    let uid = spec
        .uid
        .clone()
        .unwrap_or_else(|| "00000000-0000-4000-8000-000000000000".to_string());
    let iat = spec.iat.unwrap_or_else(crate::clock::unix_now);
    let r = |p: &Option<(String, String)>| {
        p.as_ref().map(|(n, u)| Ref {
            name: n.clone(),
            uid: u.clone(),
        })
    };
    let claims = Claims {
        aud: spec.audiences.clone(),
        exp: spec.exp,
        iat,
        iss: spec
            .issuer
            .clone()
            .unwrap_or_else(|| inner.opts.issuer.clone()),
        jti: Some(spec.jti.clone().unwrap_or_else(random_uuid)),
        kubernetes: KubeClaims {
            namespace: spec.namespace.clone(),
            node: r(&spec.node),
            pod: r(&spec.pod),
            secret: r(&spec.secret),
            serviceaccount: Ref {
                name: spec.name.clone(),
                uid,
            },
        },
        nbf: iat,
        sub: format!("system:serviceaccount:{}:{}", spec.namespace, spec.name),
    };
    let header = format!(r#"{{"alg":"RS256","kid":"{}"}}"#, inner.kid);
    let payload = serde_json::to_vec(&claims).unwrap_or_default();
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.as_bytes()),
        BASE64URL_NOPAD.encode(&payload)
    );
    let mut sig = vec![0u8; inner.key.public().modulus_len()];
    inner
        .key
        .sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut sig,
        )
        .expect("RSA signing with the test key");
    format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(to_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(1767225600), "2026-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(4102444800), "2100-01-01T00:00:00Z");
        assert_eq!(to_rfc3339(951782400 + 3661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn selectors() {
        let l: BTreeMap<String, String> = [("app".to_string(), "x".to_string())].into();
        assert!(selector_matches("", &l));
        assert!(selector_matches("app=x", &l));
        assert!(selector_matches("app==x,app", &l));
        assert!(!selector_matches("app=y", &l));
        assert!(selector_matches("app!=y", &l));
        assert!(!selector_matches("!app", &l));
        assert!(!selector_matches("tier", &l));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
