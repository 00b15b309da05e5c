//! The decision path: take the client's bearer token → validate it as a Kubernetes
//! ServiceAccount token → the ServiceAccount still exists with the token's UID → permissions from
//! the policy → a grant whose session ends no later than the token.
//!
//! The service (`Decider::decide`) and the operator tool `explain` run the same
//! [`K8sDecider::evaluate_token`], so what `explain` prints is what the service does.
//!
//! Must never: log or return the token; admit when any step cannot tell (cache unavailable,
//! policy error); grant a session that outlives the token.

use std::sync::Arc;
use std::time::Duration;

use crate::authz::{AuthRequest, Decider, Decision, Denial, Grant, Identity};
use crate::clock::Clock;
use crate::kube::{Lookup, SaCache, SaRecord};
use crate::policy::{self, PolicyOutcome, PolicySettings};
use crate::token::{ValidatedToken, Validator};

/// Reason codes the decision adds to those of token validation and the policy.
pub mod reason {
    /// The client presented no token (neither `auth_token` nor `pass`).
    pub const NO_TOKEN: &str = "no_token";
    /// The ServiceAccount named by the token does not exist.
    pub const SA_NOT_FOUND: &str = "sa_not_found";
    /// It exists, but with another UID: deleted and re-created since the token was issued.
    pub const SA_UID_MISMATCH: &str = "sa_uid_mismatch";
    /// It is being deleted.
    pub const SA_DELETING: &str = "sa_deleting";
    /// The cache has not synced yet and the lazy lookup failed: we cannot tell.
    pub const CACHE_NOT_READY: &str = "cache_not_ready";
    /// The token's session would already be over (`exp` within the leeway, or max session 0).
    pub const SESSION_EXPIRED: &str = "session_expired";
}

/// What the decision needs besides the validator and the cache.
#[derive(Debug, Clone)]
pub struct DecisionSettings {
    pub policy: PolicySettings,
    /// Upper bound of a NATS session; the user JWT expires at
    /// `min(token exp, now + max_session)`.
    pub max_session: Duration,
}

/// Everything that was learned while deciding, for `explain` and for tests.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub decision: Decision,
    pub token: Option<ValidatedToken>,
    pub account: Option<Arc<SaRecord>>,
    pub policy: Option<PolicyOutcome>,
}

impl Evaluation {
    fn deny(
        code: &'static str,
        token: Option<ValidatedToken>,
        account: Option<Arc<SaRecord>>,
    ) -> Self {
        let identity = token.as_ref().map(|t| Identity {
            namespace: t.namespace.clone(),
            service_account: t.service_account.clone(),
        });
        Evaluation {
            decision: Decision::Deny(Denial { code, identity }),
            token,
            account,
            policy: None,
        }
    }
}

/// The Kubernetes decider: token validation, ServiceAccount cache, policy.
pub struct K8sDecider {
    validator: Validator,
    accounts: SaCache,
    settings: DecisionSettings,
    /// The full publish / subscribe annotation keys, built once (not per decision).
    pub_key: String,
    sub_key: String,
    clock: Arc<dyn Clock>,
}

impl K8sDecider {
    pub fn new(
        validator: Validator,
        accounts: SaCache,
        settings: DecisionSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        K8sDecider {
            validator,
            accounts,
            pub_key: settings.policy.pub_annotation_key(),
            sub_key: settings.policy.sub_annotation_key(),
            settings,
            clock,
        }
    }

    /// The whole decision for one bearer token.
    pub fn evaluate_token(&self, token: &str) -> Evaluation {
        let now = self.clock.now();
        let validated = match self.validator.validate(token, now) {
            Ok(v) => v,
            Err(e) => return Evaluation::deny(e.code(), None, None),
        };
        let account = match self
            .accounts
            .lookup(&validated.namespace, &validated.service_account)
        {
            Lookup::Found(rec) => rec,
            Lookup::NotFound => {
                return Evaluation::deny(reason::SA_NOT_FOUND, Some(validated), None)
            }
            Lookup::Unavailable => {
                return Evaluation::deny(reason::CACHE_NOT_READY, Some(validated), None)
            }
        };
        if account.uid != validated.sa_uid {
            return Evaluation::deny(reason::SA_UID_MISMATCH, Some(validated), Some(account));
        }
        if account.deleting {
            return Evaluation::deny(reason::SA_DELETING, Some(validated), Some(account));
        }
        let session_end = session_end(validated.exp, now, self.settings.max_session);
        if session_end <= now {
            return Evaluation::deny(reason::SESSION_EXPIRED, Some(validated), Some(account));
        }
        let mut eval = self.grant(
            &validated.namespace,
            &validated.service_account,
            &account,
            Some(session_end),
        );
        eval.token = Some(validated);
        eval
    }

    /// The permissions a ServiceAccount would get, without a token (for `explain` by name).
    /// The session end is the maximum session from now.
    pub fn evaluate_account(&self, namespace: &str, service_account: &str) -> Evaluation {
        let now = self.clock.now();
        let identity = || Identity {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        let denied = |code| Evaluation {
            decision: Decision::Deny(Denial {
                code,
                identity: Some(identity()),
            }),
            token: None,
            account: None,
            policy: None,
        };
        match self.accounts.lookup(namespace, service_account) {
            Lookup::Found(rec) if rec.deleting => Evaluation {
                account: Some(rec),
                ..denied(reason::SA_DELETING)
            },
            Lookup::Found(rec) => {
                let end = session_end(None, now, self.settings.max_session);
                self.grant(namespace, service_account, &rec, Some(end))
            }
            Lookup::NotFound => denied(reason::SA_NOT_FOUND),
            Lookup::Unavailable => denied(reason::CACHE_NOT_READY),
        }
    }

    fn grant(
        &self,
        namespace: &str,
        service_account: &str,
        account: &Arc<SaRecord>,
        expires_at: Option<u64>,
    ) -> Evaluation {
        let outcome = policy::evaluate(
            &self.settings.policy,
            namespace,
            service_account,
            account.annotation(&self.pub_key),
            account.annotation(&self.sub_key),
        );
        let identity = Identity {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        match outcome {
            Ok(outcome) => Evaluation {
                decision: Decision::Allow(Grant {
                    name: outcome.name.clone(),
                    permissions: outcome.permissions.clone(),
                    expires_at,
                    tags: outcome.tags.clone(),
                    identity,
                }),
                token: None,
                account: Some(account.clone()),
                policy: Some(outcome),
            },
            Err(e) => Evaluation {
                decision: Decision::Deny(Denial {
                    code: e.code(),
                    identity: Some(identity),
                }),
                token: None,
                account: Some(account.clone()),
                policy: None,
            },
        }
    }
}

/// When a session opened now must end: the token's expiry, capped by the maximum session.
pub fn session_end(token_exp: Option<u64>, now: u64, max_session: Duration) -> u64 {
    let cap = now.saturating_add(max_session.as_secs());
    token_exp.map_or(cap, |exp| exp.min(cap))
}

impl Decider for K8sDecider {
    fn decide(&self, req: &AuthRequest) -> Decision {
        let Some(token) = req.bearer_token() else {
            return Decision::deny(reason::NO_TOKEN);
        };
        let eval = self.evaluate_token(token);
        if let (Decision::Allow(_), Some(outcome)) = (&eval.decision, &eval.policy) {
            if let Some(t) = &eval.token {
                outcome.report(&t.namespace, &t.service_account);
            }
        }
        eval.decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::jwks::{IssuerSource, KeySource, KeyStore, StoreConfig};
    use crate::kube::{ResourceVersion, Uid};
    use crate::token::TokenConfig;

    /// A decider over `records`, reading annotations under `prefix` (no token needed for
    /// [`K8sDecider::evaluate_account`]).
    fn decider(prefix: &str, records: Vec<(&str, &str, SaRecord)>) -> K8sDecider {
        const ISS: &str = "https://kubernetes.default.svc";
        let store = KeyStore::new(
            vec![IssuerSource {
                issuer: ISS.into(),
                source: KeySource::File(
                    crate::testkit::vectors::dir().join("k8s-testkeys/jwks.json"),
                ),
            }],
            StoreConfig::default(),
        )
        .unwrap();
        let validator = Validator::new(
            TokenConfig::new(vec![ISS.into()], vec!["nats".into()]),
            store,
        )
        .unwrap();
        let cache = SaCache::from_records(
            records
                .into_iter()
                .map(|(ns, n, r)| (ns.to_string(), n.to_string(), r)),
        );
        let policy = PolicySettings {
            annotation_prefix: prefix.to_string(),
            ..PolicySettings::default()
        };
        K8sDecider::new(
            validator,
            cache,
            DecisionSettings {
                policy,
                max_session: Duration::from_secs(3600),
            },
            Arc::new(FixedClock::new(1_800_000_000)),
        )
    }

    fn annotated(pairs: &[(&str, &str)]) -> SaRecord {
        SaRecord {
            uid: Uid::new("u-1"),
            annotations: pairs
                .iter()
                .map(|(k, v)| (Arc::from(*k), Box::from(*v)))
                .collect(),
            deleting: false,
            resource_version: ResourceVersion::new("1"),
        }
    }

    #[test]
    fn annotations_are_read_under_the_configured_prefix_only() {
        let rec = annotated(&[
            ("nats.example.com/allowed-pub-subjects", "orders.>"),
            ("nats.io/allowed-sub-subjects", "payments.>"),
        ]);
        let d = decider("nats.example.com/", vec![("shop", "api", rec)]);
        let Decision::Allow(g) = d.evaluate_account("shop", "api").decision else {
            panic!("not admitted")
        };
        assert!(g.permissions.publish.allow.iter().any(|s| s == "orders.>"));
        assert!(!g
            .permissions
            .subscribe
            .allow
            .iter()
            .any(|s| s == "payments.>"));
    }

    #[test]
    fn session_ends_at_the_earlier_of_token_expiry_and_max_session() {
        let h = Duration::from_secs(3600);
        assert_eq!(session_end(Some(1_000 + 600), 1_000, h), 1_600);
        assert_eq!(session_end(Some(1_000 + 7_200), 1_000, h), 4_600);
        assert_eq!(session_end(None, 1_000, h), 4_600);
        assert_eq!(session_end(Some(900), 1_000, h), 900);
        assert_eq!(session_end(Some(u64::MAX), u64::MAX - 1, h), u64::MAX);
    }
}
