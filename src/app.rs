//! The running service: builds every part from a validated [`Config`], starts the threads
//! (HTTP endpoints, ServiceAccount watcher, JWKS refresher, NATS connection + callout workers)
//! and shuts them down in order.
//!
//! Start-up does not wait for NATS, the API server or the JWKS endpoint: they may come up later;
//! readiness says what is missing. One exception: in cluster without `JWT_ISSUER`, the issuer is
//! discovered from the API server first (a few attempts with backoff, then start-up fails).
//! Shutdown: readiness goes false, the callout drains (requests in flight are answered), then
//! the other threads stop.
//!
//! Must never join the callout queue group before this replica can decide (keys for every
//! issuer, or for one after a grace period, and the first ServiceAccount list), and never log
//! a secret.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::authz::Decider;
use crate::backoff::Backoff;
use crate::callout::{Callout, CalloutConfig, CalloutError, CalloutHandle, Placement};
use crate::clock::SystemClock;
use crate::config::{AccountMode, AdmissionLogLevel, Config, JwksSource, NatsAuth};
use crate::decision::{DecisionSettings, K8sDecider};
use crate::http::{self, Health, HttpServer};
use crate::jwks::source::origin;
use crate::jwks::{self, IssuerSource, KeySource, KeyStore, RefresherHandle, StoreConfig};
use crate::kube::{ApiConfig, CacheConfig, KubeClient, SaCache, WatcherHandle};
use crate::nats::{self, Connection};
use crate::token::{TokenConfig, Validator};

/// How long a decision may wait for an unknown-kid key refresh that is already in flight
/// (well under the NATS auth timeout of 2 s).
const KID_REFRESH_WAIT: Duration = Duration::from_millis(1000);

/// How long a starting replica waits for the keys of every issuer before it serves with the
/// issuers whose keys it has.
const ISSUER_GRACE: Duration = Duration::from_secs(30);

/// The parts of a running service.
pub struct App {
    health: Arc<Health>,
    http: Option<HttpServer>,
    nats: Arc<NatsSide>,
    nats_thread: Option<JoinHandle<()>>,
    refresher: Option<RefresherHandle>,
    watcher: Option<WatcherHandle>,
    cache: SaCache,
    store: Arc<KeyStore>,
}

/// The NATS connection and the callout on it, set up by a thread that retries until NATS is
/// reachable.
struct NatsSide {
    conn: Mutex<Option<Connection>>,
    callout: Mutex<Option<CalloutHandle>>,
    stop: AtomicBool,
}

impl App {
    /// Builds and starts everything. Fails only on settings that cannot work (a bad CA file,
    /// an address in use, issuers that cannot be discovered).
    pub fn start(cfg: &Config) -> Result<App, String> {
        let health = Arc::new(Health::new());
        // Not ready while the other checks are still being registered (a readiness without
        // checks would answer 200 from the first request on).
        let starting = Arc::new(AtomicBool::new(true));
        let st = starting.clone();
        health.register_check(
            "startup",
            Box::new(move || match st.load(Ordering::SeqCst) {
                true => (false, "starting".to_string()),
                false => (true, "started".to_string()),
            }),
        );
        let http = http::serve(&cfg.http_addr.to_string(), health.clone())
            .map_err(|e| format!("HTTP_ADDR {}: {e}", cfg.http_addr))?;

        let client = kube_client(cfg)?;
        let cache_cfg = CacheConfig {
            health: Some(health.clone()),
            ..cache_config(cfg)
        };
        let (cache, watcher) = SaCache::start(client.clone(), cache_cfg);
        let issuers = issuers(cfg, &client)?;
        let store = key_store(cfg, &issuers)?;
        let refresher = jwks::start_refresher_with_health(store.clone(), Some(health.clone()))
            .map_err(|e| format!("JWKS refresher thread: {e}"))?;
        let decider: Arc<dyn Decider> =
            Arc::new(decider(cfg, issuers, store.clone(), cache.clone())?);

        // NATS and the callout, on a thread that keeps trying until NATS answers.
        let nats_side = Arc::new(NatsSide {
            conn: Mutex::new(None),
            callout: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let mut callout_cfg = callout_config(cfg);
        callout_cfg.health = Some(health.clone());
        let opts = nats_options(cfg);
        let side = nats_side.clone();
        let nats_thread = std::thread::Builder::new()
            .name("nats-connect".into())
            .spawn({
                let (store, cache, started) = (store.clone(), cache.clone(), Instant::now());
                move || {
                    connect_loop(side, opts, callout_cfg, decider, move || {
                        // Every issuer's keys, or after a grace period at least one issuer's:
                        // one unreachable issuer must not keep the others' clients out.
                        cache.is_synced()
                            && (store.ready()
                                || (started.elapsed() > ISSUER_GRACE && store.any_ready()))
                    })
                }
            })
            .map_err(|e| format!("NATS thread: {e}"))?;

        register_checks(&health, &nats_side, &cache, &store);
        starting.store(false, Ordering::SeqCst);
        Ok(App {
            health,
            http: Some(http),
            nats: nats_side,
            nats_thread: Some(nats_thread),
            refresher: Some(refresher),
            watcher: Some(watcher),
            cache,
            store,
        })
    }

    /// The bound address of the HTTP endpoints (useful with port 0).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http
            .as_ref()
            .map(|h| h.local_addr())
            .expect("HTTP server runs until shutdown")
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn cache(&self) -> &SaCache {
        &self.cache
    }

    pub fn key_store(&self) -> &Arc<KeyStore> {
        &self.store
    }

    /// True once NATS is connected and the callout subscribed, keys loaded and the cache synced.
    pub fn is_ready(&self) -> bool {
        self.health.readiness().0
    }

    /// Waits until ready, at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.is_ready() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.is_ready()
    }

    /// Orderly shutdown, bounded by `timeout`: readiness false, drain the callout (answer what is
    /// in flight), close NATS, stop the watcher, the refresher and the HTTP server. Returns false
    /// if the drain did not finish in time.
    pub fn shutdown(mut self, timeout: Duration) -> bool {
        self.health.begin_shutdown();
        log::info!("shutting down: draining the callout");
        let drained = self.nats.shutdown(timeout);
        if let Some(t) = self.nats_thread.take() {
            let _ = t.join();
        }
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
        if let Some(r) = self.refresher.take() {
            r.stop();
        }
        if let Some(h) = self.http.take() {
            h.stop();
        }
        log::info!(drained = drained; "stopped");
        drained
    }
}

impl NatsSide {
    fn shutdown(&self, timeout: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        let callout = self
            .callout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let drained = callout.is_none_or(|c| c.drain(timeout));
        if let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = conn.flush(Duration::from_secs(1));
            conn.close();
        }
        drained
    }
}

fn connect_loop(
    side: Arc<NatsSide>,
    opts: nats::Options,
    cfg: CalloutConfig,
    decider: Arc<dyn Decider>,
    can_decide: impl Fn() -> bool,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
        Duration::from_secs(60),
    );
    let conn = loop {
        if side.stop.load(Ordering::SeqCst) {
            return;
        }
        match Connection::connect(opts.clone()) {
            Ok(conn) => break conn,
            Err(e) => {
                let d = backoff.next_delay();
                log::warn!(reason = e.code(), retry_ms = d.as_millis() as u64; "cannot connect to NATS yet: {e}");
                sleep_unless(&side.stop, d);
            }
        }
    };
    log::info!(server = conn.current_server().as_str(); "connected to NATS");
    *side.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
    // Join the queue group only once this replica can decide: a replica that is still loading
    // keys or listing ServiceAccounts would refuse clients its peers would admit.
    if !can_decide() {
        log::info!("waiting for the token keys and the ServiceAccount cache before taking callout requests");
        while !can_decide() {
            if side.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Subscribing needs a live link: if NATS went away meanwhile, retry until it is back.
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    loop {
        let mut guard = side.callout.lock().unwrap_or_else(|p| p.into_inner());
        if side.stop.load(Ordering::SeqCst) {
            return;
        }
        match Callout::start(&conn, cfg.clone(), decider.clone()) {
            Ok(handle) => {
                log::info!("serving auth callout requests");
                *guard = Some(handle);
                return;
            }
            Err(CalloutError::Subscribe(code)) => {
                drop(guard);
                let d = backoff.next_delay();
                log::warn!(reason = code, retry_ms = d.as_millis() as u64; "cannot subscribe to callout requests yet");
                sleep_unless(&side.stop, d);
            }
            Err(e) => {
                log::error!(reason = "callout_start"; "cannot start the auth callout: {e}");
                return;
            }
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

fn register_checks(health: &Health, nats: &Arc<NatsSide>, cache: &SaCache, store: &Arc<KeyStore>) {
    let n = nats.clone();
    health.register_check(
        "nats",
        Box::new(move || {
            let conn = n.conn.lock().unwrap_or_else(|p| p.into_inner());
            let subscribed = n.callout.lock().unwrap_or_else(|p| p.into_inner()).is_some();
            match conn.as_ref() {
                Some(c) if c.is_connected() && subscribed => (true, format!("connected to {}, subscribed", c.current_server())),
                Some(c) if c.is_connected() => (false, format!("connected to {}, not subscribed yet (waiting for keys and ServiceAccounts)", c.current_server())),
                Some(c) => (false, format!("reconnecting: {}", c.last_error().unwrap_or_default())),
                None => (false, "not connected yet".to_string()),
            }
        }),
    );
    let s = store.clone();
    health.register_check(
        "keys",
        Box::new(move || {
            let missing: Vec<&str> = s
                .issuers()
                .filter(|i| s.key_set(i).is_none_or(|k| k.is_empty()))
                .collect();
            if missing.is_empty() {
                (true, "at least one usable key for every issuer".to_string())
            } else {
                (
                    false,
                    format!("no usable key yet for: {}", missing.join(", ")),
                )
            }
        }),
    );
    let c = cache.clone();
    health.register_check(
        "serviceaccounts",
        Box::new(move || {
            if !c.is_synced() {
                (false, "initial list not complete yet".to_string())
            } else if !c.is_healthy() {
                (
                    false,
                    format!(
                        "Kubernetes API unreachable or refusing; deciding from the last known state ({} ServiceAccounts)",
                        c.len()
                    ),
                )
            } else {
                (
                    true,
                    format!("synced and watching, {} ServiceAccounts", c.len()),
                )
            }
        }),
    );
}

/// The Kubernetes API client from the settings.
pub fn kube_client(cfg: &Config) -> Result<Arc<KubeClient>, String> {
    let api = ApiConfig::new(
        &cfg.kube.api_url,
        cfg.kube.token_file.clone(),
        cfg.kube.ca_file.clone(),
    );
    KubeClient::new(&api).map_err(|e| format!("Kubernetes API client: {e}"))
}

/// What the ServiceAccount cache watches and keeps.
pub fn cache_config(cfg: &Config) -> CacheConfig {
    CacheConfig {
        namespace: cfg.kube.namespace.clone(),
        label_selector: cfg.kube.label_selector.clone(),
        annotation_prefix: cfg.policy.annotation_prefix.clone(),
        ..CacheConfig::default()
    }
}

/// The configured issuers, or the one the API server announces.
pub fn issuers(cfg: &Config, client: &KubeClient) -> Result<Vec<String>, String> {
    match &cfg.issuers {
        Some(list) => Ok(list.clone()),
        None => Ok(vec![discover_issuer(client)?]),
    }
}

/// One key set per issuer, each from the configured source (no fetch yet).
pub fn key_store(cfg: &Config, issuers: &[String]) -> Result<Arc<KeyStore>, String> {
    KeyStore::new(
        issuers
            .iter()
            .map(|issuer| IssuerSource {
                issuer: issuer.clone(),
                source: key_source(cfg, issuer),
            })
            .collect(),
        StoreConfig {
            in_flight_wait: KID_REFRESH_WAIT,
            ..StoreConfig::default()
        },
    )
}

/// The decision path from the settings, the key store and the ServiceAccount cache.
pub fn decider(
    cfg: &Config,
    issuers: Vec<String>,
    store: Arc<KeyStore>,
    cache: SaCache,
) -> Result<K8sDecider, String> {
    let token_cfg = TokenConfig {
        leeway_secs: cfg.token_leeway.as_secs(),
        allow_legacy: cfg.allow_legacy_tokens,
        ..TokenConfig::new(issuers, cfg.audiences.clone())
    };
    let validator = Validator::new(token_cfg, store)?;
    Ok(K8sDecider::new(
        validator,
        cache,
        DecisionSettings {
            policy: cfg.policy.clone(),
            max_session: cfg.max_session,
        },
        Arc::new(SystemClock),
    ))
}

/// The issuer the API server announces (in cluster, when `JWT_ISSUER` is not set).
fn discover_issuer(client: &KubeClient) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
    }
    const ATTEMPTS: usize = 5;
    let mut backoff = Backoff::kube();
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match client.get_json::<Discovery>(
            "/.well-known/openid-configuration",
            Some(Duration::from_secs(10)),
        ) {
            Ok(d) if !d.issuer.is_empty() => return Ok(d.issuer),
            Ok(_) => last = "empty issuer".to_string(),
            Err(e) => last = e.to_string(),
        }
        // No wait after the last attempt: nothing follows it but the error.
        if attempt < ATTEMPTS {
            std::thread::sleep(backoff.next_delay());
        }
    }
    Err(format!(
        "JWT_ISSUER: not set, and the API server's /.well-known/openid-configuration did not name one ({last})"
    ))
}

fn key_source(cfg: &Config, issuer: &str) -> KeySource {
    let token = || {
        cfg.kube.token_file.as_ref().map(|p| {
            Arc::new(crate::httpclient::TokenFile::new(
                p,
                Duration::from_secs(60),
            ))
        })
    };
    match &cfg.jwks {
        JwksSource::ApiServer => KeySource::Jwks {
            url: format!("{}/openid/v1/jwks", cfg.kube.api_url.trim_end_matches('/')),
            http: jwks::default_http(cfg.kube.ca_file.clone()),
            bearer: token(),
        },
        // A JWKS_URL on the API server is fetched as the API server is reached: with
        // K8S_CA_FILE and, over https, our token. Any other: the built-in web roots, no token.
        JwksSource::Url(url) if origin(url) == origin(&cfg.kube.api_url) => KeySource::Jwks {
            url: url.clone(),
            http: jwks::default_http(cfg.kube.ca_file.clone()),
            bearer: token().filter(|_| url.starts_with("https://")),
        },
        JwksSource::Url(url) => KeySource::Jwks {
            url: url.clone(),
            http: jwks::default_http(None),
            bearer: None,
        },
        JwksSource::File(path) => KeySource::File(path.clone()),
        // The same for discovery from an issuer on the API server.
        JwksSource::Discovery if origin(issuer) == origin(&cfg.kube.api_url) => {
            KeySource::Discovery {
                http: jwks::default_http(cfg.kube.ca_file.clone()),
                bearer: token().filter(|_| issuer.starts_with("https://")),
            }
        }
        JwksSource::Discovery => KeySource::Discovery {
            http: jwks::default_http(None),
            bearer: None,
        },
    }
}

fn callout_config(cfg: &Config) -> CalloutConfig {
    let placement = match &cfg.account {
        AccountMode::Config { account } => Placement::Config {
            account: account.clone(),
        },
        AccountMode::Operator { account } => Placement::Operator {
            account: account.clone(),
        },
    };
    let mut c = CalloutConfig::new(placement, cfg.signing_key.seed.clone());
    c.response_signing_seed = cfg.response_signing_key.as_ref().map(|k| k.seed.clone());
    c.callout_account = operator_callout_account(cfg);
    c.xkey_seed = cfg.xkey.as_ref().map(|k| k.seed.clone());
    c.queue_group = cfg.queue_group.clone();
    c.workers = cfg.callout_workers;
    c.queue_capacity = cfg.callout_queue;
    c.admission_log_level = match cfg.log_admissions {
        AdmissionLogLevel::Info => log::Level::Info,
        AdmissionLogLevel::Debug => log::Level::Debug,
    };
    c
}

/// Operator mode: the callout account is the account of the service's own NATS user, read
/// from its `.creds` JWT (`issuer_account` when a signing key issued it, else `iss`). The
/// server names that account as the `sub` of every request; without this, the expected `sub`
/// would be the response signer's key, which is wrong when a signing key of the callout
/// account signs the responses. `None` (fall back to the signer's key) in config mode or when
/// the creds cannot be read; the connection reports unreadable creds itself.
fn operator_callout_account(cfg: &Config) -> Option<String> {
    let (AccountMode::Operator { .. }, NatsAuth::Creds { path }) = (&cfg.account, &cfg.nats_auth)
    else {
        return None;
    };
    let read = || -> Result<String, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let (jwt, _seed) = nats::parse_creds(&text).map_err(|e| e.to_string())?;
        let claims: crate::natsjwt::Claims<crate::natsjwt::User> =
            crate::natsjwt::decode_at(jwt.expose(), crate::clock::unix_now())
                .map_err(|e| e.code().to_string())?;
        Ok(if claims.nats.issuer_account.is_empty() {
            claims.iss
        } else {
            claims.nats.issuer_account
        })
    };
    read()
        .map_err(|e| {
            log::warn!(
                reason = "creds";
                "cannot read the callout account from NATS_CREDS_FILE ({e}); expecting requests for the response signer's account"
            )
        })
        .ok()
}

/// Our NATS client's settings.
pub fn nats_options(cfg: &Config) -> nats::Options {
    let mut o = nats::Options::new(cfg.nats_urls.clone());
    o.auth = match &cfg.nats_auth {
        NatsAuth::UserPassword { user, password } => nats::Auth::UserPassword {
            user: user.clone(),
            password: password.clone(),
        },
        NatsAuth::Token(t) => nats::Auth::Token(t.clone()),
        NatsAuth::NkeySeed { seed, .. } => nats::Auth::NkeySeed(seed.clone()),
        NatsAuth::Creds { path } => nats::Auth::CredsFile(path.clone()),
        NatsAuth::None => nats::Auth::None,
    };
    o.tls.ca_file = cfg.nats_tls.ca_file.clone();
    if let Some((cert, key)) = &cfg.nats_tls.client_cert {
        o.tls.cert_file = Some(cert.clone());
        o.tls.key_file = Some(key.clone());
    }
    o.tls.required = cfg.nats_tls.ca_file.is_some() || cfg.nats_tls.client_cert.is_some();
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{AuthRequest, Decision};
    use crate::testkit::eventually;
    use crate::testkit::nats_server::NatsServer;

    /// NATS goes away while the replica waits for its keys and cache; once it can decide and
    /// NATS is back, the callout must still start (not give up after one failed subscribe).
    #[test]
    fn the_callout_starts_after_nats_dropped_while_waiting_to_decide() {
        let mut server = NatsServer::start("");
        let side = Arc::new(NatsSide {
            conn: Mutex::new(None),
            callout: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let mut cfg = CalloutConfig::new(
            Placement::Config {
                account: "APP".into(),
            },
            crate::secret::Secret::new(nkeys::KeyPair::new_account().seed().unwrap()),
        );
        cfg.metrics = Box::leak(Box::new(crate::metrics::Registry::new()));
        let mut opts = nats::Options::new(vec![server.url()]);
        opts.reconnect_initial = Duration::from_millis(50);
        opts.reconnect_max = Duration::from_millis(200);
        let decider: Arc<dyn Decider> = Arc::new(|_: &AuthRequest| Decision::deny("test"));
        let ready = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (side, ready) = (side.clone(), ready.clone());
            move || {
                connect_loop(side, opts, cfg, decider, move || {
                    ready.load(Ordering::SeqCst)
                })
            }
        });
        let connected = || {
            side.conn
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|c| c.is_connected())
        };
        eventually("connected to NATS", Duration::from_secs(10), connected);
        server.stop();
        eventually(
            "the link noticed NATS is gone",
            Duration::from_secs(10),
            || !connected(),
        );
        ready.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        server.restart();
        eventually("the callout subscribed", Duration::from_secs(10), || {
            side.callout.lock().unwrap().is_some()
        });
        assert!(side.shutdown(Duration::from_secs(2)));
        thread.join().unwrap();
    }
}
