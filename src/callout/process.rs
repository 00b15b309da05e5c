//! One request end to end: open/verify → decide → build, sign (and seal) the response; plus
//! the callout's metrics. No I/O: the caller delivers the payload and publishes the result.
//!
//! Must never log a token, password, seed or JWT; must never produce a user JWT for a request
//! that failed verification.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::request::{self, RequestError};
use super::response::Signers;
use super::xkey::XKeyBox;
use super::{CalloutConfig, CalloutError};
use crate::authz::{Decider, Decision};
use crate::clock::Clock;
use crate::metrics::{Counter, Gauge, Histogram, Registry, LATENCY_BUCKETS};

pub const M_REQUESTS: &str = "nats_k8s_callout_requests_total";
pub const M_EXPIRED: &str = "nats_k8s_callout_requests_expired_total";
pub const M_BAD: &str = "nats_k8s_callout_bad_requests_total";
pub const M_DECISIONS: &str = "nats_k8s_callout_decisions_total";
pub const M_DURATION: &str = "nats_k8s_callout_decision_duration_seconds";
pub const M_QUEUE_DEPTH: &str = "nats_k8s_callout_queue_depth";
pub const M_RESPONSE_ERRORS: &str = "nats_k8s_callout_response_errors_total";

type LabelledCounters = HashMap<(&'static str, &'static str, &'static str), Arc<Counter>>;

/// Metric handles of the callout (kept, so updates are one atomic operation).
pub struct Metrics {
    registry: &'static Registry,
    pub requests: Arc<Counter>,
    pub expired: Arc<Counter>,
    pub duration: Arc<Histogram>,
    pub queue_depth: Arc<Gauge>,
    labelled: Mutex<LabelledCounters>,
}

impl Metrics {
    pub fn new(registry: &'static Registry) -> Self {
        Metrics {
            registry,
            requests: registry.counter(M_REQUESTS, "Authorization requests received.", &[]),
            expired: registry.counter(
                M_EXPIRED,
                "Requests dropped because their JWT had expired when a worker took them.",
                &[],
            ),
            duration: registry.histogram(
                M_DURATION,
                "Time from a worker taking a request to its response being ready (verify, decide, sign, seal).",
                &[],
                LATENCY_BUCKETS,
            ),
            queue_depth: registry.gauge(M_QUEUE_DEPTH, "Requests waiting for a worker.", &[]),
            labelled: Mutex::new(HashMap::new()),
        }
    }

    fn labelled(&self, name: &'static str, a: &'static str, b: &'static str) -> Arc<Counter> {
        let mut m = self.labelled.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((name, a, b))
            .or_insert_with(|| match name {
                M_DECISIONS => self.registry.counter(
                    M_DECISIONS,
                    "Decisions by result (allow, deny) and reason code.",
                    &[("result", a), ("reason", b)],
                ),
                M_BAD => self.registry.counter(
                    M_BAD,
                    "Requests refused before a decision, by reason code.",
                    &[("reason", a)],
                ),
                _ => self.registry.counter(
                    M_RESPONSE_ERRORS,
                    "Responses that could not be built or published, by reason code.",
                    &[("reason", a)],
                ),
            })
            .clone()
    }

    pub fn decision(&self, result: &'static str, reason: &'static str) {
        self.labelled(M_DECISIONS, result, reason).inc();
    }
    pub fn bad_request(&self, reason: &'static str) {
        self.labelled(M_BAD, reason, "").inc();
    }
    pub fn response_error(&self, reason: &'static str) {
        self.labelled(M_RESPONSE_ERRORS, reason, "").inc();
    }
}

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    /// Publish this payload to the reply subject.
    Reply(Vec<u8>),
    /// Nothing to send (refused before a decision, expired, or the response failed).
    Drop,
}

/// Everything a worker needs to answer requests; shared by all workers.
pub struct Processor {
    xkey: Option<XKeyBox>,
    signers: Signers,
    callout_account: String,
    decider: Arc<dyn Decider>,
    clock: Arc<dyn Clock>,
    admission_log_level: log::Level,
    pub metrics: Metrics,
}

impl Processor {
    pub fn new(
        cfg: &CalloutConfig,
        decider: Arc<dyn Decider>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CalloutError> {
        let signers = Signers::new(
            cfg.placement.clone(),
            cfg.user_signing_seed.expose(),
            cfg.response_signing_seed.as_ref().map(|s| s.expose()),
        )
        .map_err(CalloutError::Signer)?;
        let xkey = match &cfg.xkey_seed {
            Some(s) => Some(XKeyBox::from_seed(s.expose()).map_err(CalloutError::Xkey)?),
            None => None,
        };
        let callout_account = cfg
            .callout_account
            .clone()
            .unwrap_or_else(|| signers.response_signer());
        Ok(Processor {
            xkey,
            signers,
            callout_account,
            decider,
            clock,
            admission_log_level: cfg.admission_log_level,
            metrics: Metrics::new(cfg.metrics),
        })
    }

    /// Handle one request payload (`header_xkey` = the `Nats-Server-Xkey` header).
    pub fn process(&self, header_xkey: Option<&str>, payload: &[u8]) -> Outcome {
        let started = Instant::now();
        self.metrics.requests.inc();
        let now = self.clock.now();
        let req = match request::open_and_verify(
            payload,
            header_xkey,
            self.xkey.as_ref(),
            Some(&self.callout_account),
            now,
        ) {
            Ok(r) => r,
            Err(e) => {
                self.refused(&e);
                return Outcome::Drop;
            }
        };
        let auth = request::to_auth_request(&req.claims);
        // A panicking decider must not leave the client waiting for the server's timeout.
        let decision = catch_unwind(AssertUnwindSafe(|| self.decider.decide(&auth)))
            .unwrap_or_else(|_| {
                log::error!(reason = "decider_panic"; "the decider panicked; refusing the client");
                Decision::deny("decider_panic")
            });
        let now = self.clock.now();
        let signed = match decision {
            Decision::Allow(grant) => {
                self.metrics.decision("allow", "granted");
                log::log!(
                    self.admission_log_level,
                    result = "allow",
                    namespace = grant.identity.namespace.as_str(),
                    service_account = grant.identity.service_account.as_str(),
                    client_ip = auth.client_host.as_str(),
                    client_id = auth.client_id,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                    "client admitted"
                );
                self.signers.allow(&req.claims, grant, now)
            }
            Decision::Deny(d) => {
                self.metrics.decision("deny", d.code);
                let (ns, sa) = d
                    .identity
                    .as_ref()
                    .map(|i| (i.namespace.as_str(), i.service_account.as_str()))
                    .unwrap_or(("", ""));
                log::warn!(
                    result = "deny",
                    reason = d.code,
                    namespace = ns,
                    service_account = sa,
                    client_ip = auth.client_host.as_str(),
                    client_id = auth.client_id,
                    duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                    "client refused"
                );
                self.signers.deny(&req.claims, d.code, now)
            }
        };
        let token = match signed {
            Ok(t) => t,
            Err(e) => {
                self.metrics.response_error(e.code());
                log::error!(reason = e.code(); "could not sign the callout response");
                return Outcome::Drop;
            }
        };
        let out = match (&req.server_xkey, &self.xkey) {
            (Some(server), Some(k)) => match k.seal(token.as_bytes(), server) {
                Ok(sealed) => sealed,
                Err(e) => {
                    self.metrics.response_error(e.code());
                    log::error!(reason = e.code(); "could not seal the callout response");
                    return Outcome::Drop;
                }
            },
            _ => token.into_bytes(),
        };
        self.metrics.duration.observe(started.elapsed());
        Outcome::Reply(out)
    }

    fn refused(&self, e: &RequestError) {
        if e.is_expired() {
            self.metrics.expired.inc();
            log::warn!(reason = e.code(); "authorization request expired before a worker took it; dropped");
        } else if matches!(
            e,
            RequestError::EncryptedWithoutXkey | RequestError::PlainWithXkey
        ) {
            self.metrics.bad_request(e.code());
            log::error!(
                reason = e.code();
                "xkey mismatch between nats-server and this service (one side has an xkey, the other not); request refused, no response sent"
            );
        } else {
            self.metrics.bad_request(e.code());
            log::warn!(reason = e.code(); "authorization request refused; no response sent");
        }
    }

    /// Record a failed publish of a response.
    pub fn publish_failed(&self, code: &'static str) {
        self.metrics.response_error(code);
        log::warn!(reason = code; "could not publish the callout response");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::authz::{AuthRequest, Grant};
    use crate::callout::request::tests::{request_claims, NOW};
    use crate::callout::Placement;
    use crate::clock::FixedClock;
    use crate::natsjwt::{self, AuthorizationResponse, Claims, User};
    use crate::secret::Secret;
    use nkeys::{KeyPair, XKey};

    fn decider() -> Arc<dyn Decider> {
        Arc::new(|r: &AuthRequest| {
            if r.bearer_token() == Some("good") {
                let mut g = Grant {
                    name: "t".into(),
                    ..Default::default()
                };
                g.permissions.publish.allow.push("app.>".into());
                Decision::Allow(g)
            } else {
                Decision::deny("test_denied")
            }
        })
    }

    fn registry() -> &'static Registry {
        Box::leak(Box::new(Registry::new()))
    }

    /// Config mode into account `APP`, `issuer` signing; metrics into a registry of its own.
    pub(crate) fn config_mode(issuer: &KeyPair) -> CalloutConfig {
        let mut cfg = CalloutConfig::new(
            Placement::Config {
                account: "APP".into(),
            },
            Secret::new(issuer.seed().unwrap()),
        );
        cfg.metrics = registry();
        cfg
    }

    #[test]
    fn allow_deny_expired_and_bad_are_counted() {
        let issuer = KeyPair::new_account();
        let server = KeyPair::new_server();
        let reg = registry();
        let mut cfg = config_mode(&issuer);
        cfg.metrics = reg;
        let clock = Arc::new(FixedClock::new(NOW));
        let p = Processor::new(&cfg, decider(), clock.clone()).unwrap();

        let mut c = request_claims(&server, &issuer.public_key());
        let t = natsjwt::encode(&mut c, &server).unwrap();
        let Outcome::Reply(out) = p.process(None, t.as_bytes()) else {
            panic!("no reply")
        };
        let r: Claims<AuthorizationResponse> =
            natsjwt::decode_at(std::str::from_utf8(&out).unwrap(), NOW).unwrap();
        let u: Claims<User> = natsjwt::decode_at(&r.nats.jwt, NOW).unwrap();
        assert_eq!(u.sub, c.nats.user_nkey);

        let mut c = request_claims(&server, &issuer.public_key());
        c.nats.connect_opts.auth_token = Some(Secret::new("bad"));
        let t = natsjwt::encode(&mut c, &server).unwrap();
        let Outcome::Reply(out) = p.process(None, t.as_bytes()) else {
            panic!("no reply")
        };
        let r: Claims<AuthorizationResponse> =
            natsjwt::decode_at(std::str::from_utf8(&out).unwrap(), NOW).unwrap();
        assert_eq!(r.nats.error, "test_denied");

        // Expired by the time a worker takes it.
        clock.set(NOW + 3);
        assert!(matches!(p.process(None, t.as_bytes()), Outcome::Drop));
        // Garbage.
        assert!(matches!(p.process(None, b"garbage"), Outcome::Drop));

        let get = |n: &str, l: &[(&str, &str)]| reg.counter(n, "", l).get();
        assert_eq!(get(M_REQUESTS, &[]), 4);
        assert_eq!(get(M_EXPIRED, &[]), 1);
        assert_eq!(
            get(M_DECISIONS, &[("result", "allow"), ("reason", "granted")]),
            1
        );
        assert_eq!(
            get(
                M_DECISIONS,
                &[("result", "deny"), ("reason", "test_denied")]
            ),
            1
        );
        assert_eq!(get(M_BAD, &[("reason", "jwt_malformed")]), 1);
        assert_eq!(
            reg.histogram(M_DURATION, "", &[], LATENCY_BUCKETS).count(),
            2
        );
    }

    #[test]
    fn a_panicking_decider_becomes_a_denial() {
        let issuer = KeyPair::new_account();
        let server = KeyPair::new_server();
        let cfg = config_mode(&issuer);
        let boom: Arc<dyn Decider> = Arc::new(|_: &AuthRequest| -> Decision { panic!("boom") });
        let p = Processor::new(&cfg, boom, Arc::new(FixedClock::new(NOW))).unwrap();
        let mut c = request_claims(&server, &issuer.public_key());
        let t = natsjwt::encode(&mut c, &server).unwrap();
        let Outcome::Reply(out) = p.process(None, t.as_bytes()) else {
            panic!("no reply")
        };
        let r: Claims<AuthorizationResponse> =
            natsjwt::decode_at(std::str::from_utf8(&out).unwrap(), NOW).unwrap();
        assert_eq!(r.nats.error, "decider_panic");
        assert!(r.nats.jwt.is_empty());
    }

    #[test]
    fn sealed_request_gets_sealed_response() {
        let issuer = KeyPair::new_account();
        let server = KeyPair::new_server();
        let server_x = XKey::new();
        let service_x = XKey::new();
        let mut cfg = config_mode(&issuer);
        cfg.xkey_seed = Some(Secret::new(service_x.seed().unwrap()));
        let p = Processor::new(&cfg, decider(), Arc::new(FixedClock::new(NOW))).unwrap();
        let mut c = request_claims(&server, &issuer.public_key());
        c.nats.server_id.xkey = server_x.public_key();
        let t = natsjwt::encode(&mut c, &server).unwrap();
        let sealed = server_x.seal(t.as_bytes(), &service_x).unwrap();
        let Outcome::Reply(out) = p.process(Some(&server_x.public_key()), &sealed) else {
            panic!("no reply")
        };
        assert!(out.starts_with(b"xkv1"));
        let svc_pub = XKey::from_public_key(&service_x.public_key()).unwrap();
        let opened = server_x.open(&out, &svc_pub).unwrap();
        let r: Claims<AuthorizationResponse> =
            natsjwt::decode_at(std::str::from_utf8(&opened).unwrap(), NOW).unwrap();
        assert_eq!(r.aud, server.public_key());
        // The plain request is refused when an xkey is configured.
        assert!(matches!(p.process(None, t.as_bytes()), Outcome::Drop));
    }
}
