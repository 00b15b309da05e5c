//! The key sets of all configured issuers, swapped atomically on refresh. Owns single-flight
//! fetching per issuer, the unknown-kid rate limit and the JWKS metrics. Must never empty a
//! key set because a fetch failed (last good keys stay), and never log key material or tokens.

use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::source::{Fetched, Fetcher, JwksError, KeySource};
use crate::metrics::{self, Counter, Gauge};
use crate::token::KeySet;

/// One issuer and where its keys come from.
#[derive(Debug, Clone)]
pub struct IssuerSource {
    pub issuer: String,
    pub source: KeySource,
}

/// Refresh timing.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// At most one unknown-kid refresh per issuer per interval (default 30 s).
    pub unknown_kid_min_interval: Duration,
    /// How long an unknown-kid lookup (and any caller) waits for a fetch in flight, counted
    /// from the start of that fetch (default 1 s: the NATS auth callout times out after 2 s). The fetch itself goes on in
    /// the background and serves the client's retry.
    pub in_flight_wait: Duration,
    /// Periodic refresh without a `Cache-Control: max-age` (default 15 min).
    pub default_refresh: Duration,
    /// Clamp of the periodic refresh interval (default 60 s ..= 1 h).
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// How often a file source is checked for changes (default 10 s).
    pub file_poll: Duration,
    /// Retry after failures: `backoff_initial` doubling to `backoff_max` (1 s → 60 s).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            unknown_kid_min_interval: Duration::from_secs(30),
            in_flight_wait: Duration::from_secs(1),
            default_refresh: Duration::from_secs(15 * 60),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            file_poll: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
struct Flight {
    in_flight: bool,
    /// When the fetch in flight started: waits for it end `in_flight_wait` after this.
    started: Option<Instant>,
    generation: u64,
    last_result: Option<Result<Option<Duration>, JwksError>>,
    last_unknown_kid: Option<Instant>,
}

#[derive(Debug)]
struct SlotMetrics {
    ok: Arc<Counter>,
    unchanged: Arc<Counter>,
    error: Arc<Counter>,
    keys: Arc<Gauge>,
    skipped: Arc<Counter>,
    unknown_kid: Arc<Counter>,
    rate_limited: Arc<Counter>,
}

impl SlotMetrics {
    fn new(issuer: &str) -> Self {
        let m = metrics::global();
        let refreshes = |result| {
            m.counter(
                "nats_k8s_callout_jwks_refreshes_total",
                "JWKS fetches per issuer by result (ok, unchanged, error).",
                &[("issuer", issuer), ("result", result)],
            )
        };
        SlotMetrics {
            ok: refreshes("ok"),
            unchanged: refreshes("unchanged"),
            error: refreshes("error"),
            keys: m.gauge(
                "nats_k8s_callout_jwks_keys",
                "Usable signing keys loaded per issuer.",
                &[("issuer", issuer)],
            ),
            skipped: m.counter(
                "nats_k8s_callout_jwks_keys_skipped_total",
                "JWKS entries skipped as unusable (type, curve, size, use, material).",
                &[("issuer", issuer)],
            ),
            unknown_kid: m.counter(
                "nats_k8s_callout_jwks_unknown_kid_refreshes_total",
                "JWKS refreshes triggered by a token naming an unknown kid.",
                &[("issuer", issuer)],
            ),
            rate_limited: m.counter(
                "nats_k8s_callout_jwks_unknown_kid_rate_limited_total",
                "Unknown-kid lookups refused a refresh by the per-issuer rate limit.",
                &[("issuer", issuer)],
            ),
        }
    }
}

#[derive(Debug)]
struct Slot {
    issuer: String,
    fetcher: Fetcher,
    keys: RwLock<Arc<KeySet>>,
    flight: Mutex<Flight>,
    done: Condvar,
    metrics: SlotMetrics,
}

/// Key sets per issuer.
#[derive(Debug)]
pub struct KeyStore {
    slots: Vec<Slot>,
    cfg: StoreConfig,
}

impl KeyStore {
    /// Builds the store with empty key sets (not ready until the first fetch). Fails on a
    /// duplicate issuer or a source that cannot be set up (bad URL, unreadable CA file).
    pub fn new(issuers: Vec<IssuerSource>, cfg: StoreConfig) -> Result<Arc<KeyStore>, String> {
        let mut slots: Vec<Slot> = Vec::with_capacity(issuers.len());
        for IssuerSource { issuer, source } in issuers {
            if slots.iter().any(|s| s.issuer == issuer) {
                return Err(format!("issuer {issuer:?} configured twice"));
            }
            let fetcher = Fetcher::new(&issuer, source)?;
            slots.push(Slot {
                metrics: SlotMetrics::new(&issuer),
                issuer,
                fetcher,
                keys: RwLock::new(Arc::new(KeySet::default())),
                flight: Mutex::new(Flight::default()),
                done: Condvar::new(),
            });
        }
        if slots.is_empty() {
            return Err("no issuer configured".into());
        }
        Ok(Arc::new(KeyStore { slots, cfg }))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.issuer.as_str())
    }

    pub fn has_issuer(&self, issuer: &str) -> bool {
        self.slot(issuer).is_some()
    }

    /// The issuer's current keys (possibly empty before the first fetch).
    pub fn key_set(&self, issuer: &str) -> Option<Arc<KeySet>> {
        self.slot(issuer).map(|s| s.current())
    }

    /// At least one issuer has a usable key.
    pub fn any_ready(&self) -> bool {
        self.slots.iter().any(|s| !s.current().is_empty())
    }

    /// Readiness: every issuer has at least one usable key.
    pub fn ready(&self) -> bool {
        self.slots.iter().all(|s| !s.current().is_empty())
    }

    /// Fetches one issuer's keys now (waiting for a fetch already in flight instead of
    /// starting a second one). Returns the unclamped `max-age`, if any.
    pub fn refresh(&self, issuer: &str) -> Result<Option<Duration>, JwksError> {
        let slot = self
            .slot(issuer)
            .ok_or_else(|| JwksError::Io(format!("unknown issuer {issuer:?}")))?;
        self.refresh_slot(slot)
    }

    pub(crate) fn refresh_index(&self, i: usize) -> Result<Option<Duration>, JwksError> {
        self.refresh_slot(&self.slots[i])
    }

    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_file_source(&self, i: usize) -> bool {
        self.slots[i].fetcher.is_file()
    }

    /// A token named `kid`, unknown to the issuer's keys: refresh once, single-flight and at
    /// most once per `unknown_kid_min_interval` per issuer, waiting at most `in_flight_wait`
    /// (the fetch runs on its own short-lived thread and finishes even if we stop waiting).
    /// Returns whether the kid is known afterwards. Rate-limited lookups return `false` at once.
    pub fn refresh_for_unknown_kid(self: &Arc<Self>, issuer: &str, kid: &str) -> bool {
        let Some(idx) = self.slots.iter().position(|s| s.issuer == issuer) else {
            return false;
        };
        let slot = &self.slots[idx];
        let mut f = slot.flight.lock().unwrap_or_else(|p| p.into_inner());
        if !f.in_flight {
            if f.last_unknown_kid
                .is_some_and(|t| t.elapsed() < self.cfg.unknown_kid_min_interval)
            {
                slot.metrics.rate_limited.inc();
                return false;
            }
            f.last_unknown_kid = Some(Instant::now());
            f.in_flight = true;
            f.started = Some(Instant::now());
            slot.metrics.unknown_kid.inc();
            // The kid is attacker-controlled header data: it is not logged.
            log::info!(issuer = slot.issuer.as_str(); "token names an unknown kid: refreshing JWKS");
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("jwks-unknown-kid".into())
                .spawn(move || {
                    let _ = me.land(&me.slots[idx]);
                });
            if spawned.is_err() {
                f.in_flight = false;
                return false;
            }
        }
        drop(self.wait_for_flight(slot, f));
        slot.current().contains_kid(kid)
    }

    fn slot(&self, issuer: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.issuer == issuer)
    }

    fn refresh_slot(&self, slot: &Slot) -> Result<Option<Duration>, JwksError> {
        let f = slot.flight.lock().unwrap_or_else(|p| p.into_inner());
        if f.in_flight {
            let f = self.wait_for_flight(slot, f);
            return f.last_result.clone().unwrap_or(Err(JwksError::Busy));
        }
        self.fly(slot, f)
    }

    /// Waits (bounded) until the fetch in flight when called has finished. The bound counts
    /// from the start of that fetch, not from this call: while a fetch is slow, lookups after
    /// its first `in_flight_wait` return at once instead of each holding a decision worker
    /// for another full wait (junk tokens naming unknown kids cost no signature to send).
    fn wait_for_flight<'a>(
        &self,
        slot: &'a Slot,
        f: std::sync::MutexGuard<'a, Flight>,
    ) -> std::sync::MutexGuard<'a, Flight> {
        let gen = f.generation;
        let wait = f.started.map_or(self.cfg.in_flight_wait, |s| {
            (s + self.cfg.in_flight_wait).saturating_duration_since(Instant::now())
        });
        if !f.in_flight || wait.is_zero() {
            return f;
        }
        let (f, timeout) = slot
            .done
            .wait_timeout_while(f, wait, |f| f.in_flight && f.generation == gen)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() {
            log::warn!(issuer = slot.issuer.as_str(); "gave up waiting for an in-flight JWKS fetch");
        }
        f
    }

    /// Claims the flight and runs one fetch.
    fn fly(
        &self,
        slot: &Slot,
        mut f: std::sync::MutexGuard<'_, Flight>,
    ) -> Result<Option<Duration>, JwksError> {
        f.in_flight = true;
        f.started = Some(Instant::now());
        drop(f);
        self.land(slot)
    }

    /// Runs one fetch for a claimed flight; releases it and wakes the waiters.
    fn land(&self, slot: &Slot) -> Result<Option<Duration>, JwksError> {
        let result = self.load(slot);
        let mut f = slot.flight.lock().unwrap_or_else(|p| p.into_inner());
        f.in_flight = false;
        f.generation += 1;
        f.last_result = Some(result.clone());
        drop(f);
        slot.done.notify_all();
        result
    }

    /// Fetch, parse and swap. On any failure the previous keys stay.
    fn load(&self, slot: &Slot) -> Result<Option<Duration>, JwksError> {
        let issuer = slot.issuer.as_str();
        let result = match slot.fetcher.fetch() {
            Ok(Fetched::Unchanged) => {
                slot.metrics.unchanged.inc();
                return Ok(None);
            }
            Ok(Fetched::Body { body, max_age }) => self.install(slot, &body).map(|()| max_age),
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => slot.metrics.ok.inc(),
            Err(e) => {
                slot.metrics.error.inc();
                if slot.fetcher.is_file() {
                    // Read the file again next time even if it does not change.
                    slot.fetcher.forget_file_stamp();
                }
                log::warn!(issuer = issuer, reason = e.code(), error:% = e, keys_kept = slot.current().len(); "JWKS refresh failed; keeping the last good keys");
            }
        }
        result
    }

    fn install(&self, slot: &Slot, body: &[u8]) -> Result<(), JwksError> {
        let issuer = slot.issuer.as_str();
        let (set, skipped) = KeySet::from_jwks_json(body).map_err(JwksError::Parse)?;
        for why in &skipped {
            log::warn!(issuer = issuer, why = why.as_str(); "skipping unusable JWKS key");
        }
        slot.metrics.skipped.add(skipped.len() as u64);
        if set.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        let n = set.len();
        let changed = {
            let old = slot.current();
            old.len() != n || !old.kids().eq(set.kids())
        };
        *slot.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        slot.metrics.keys.set(n as i64);
        if changed {
            log::info!(issuer = issuer, keys = n, skipped = skipped.len(); "JWKS loaded: key ids changed");
        } else {
            log::debug!(issuer = issuer, keys = n; "JWKS refreshed: same key ids");
        }
        Ok(())
    }
}

impl Slot {
    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl crate::token::KeyLookup for KeyStore {
    fn key_set(&self, issuer: &str) -> Option<Arc<KeySet>> {
        KeyStore::key_set(self, issuer)
    }
}
