//! The permission policy: from a ServiceAccount's namespace, name and annotations to the
//! NATS permissions of its user JWT, with the reason for every annotation entry kept or
//! dropped (for logs, metrics and the `explain` tool).
//!
//! Owns: the namespace default, annotation parsing, guard rails, the inbox and response
//! rules, the user JWT `name` and tags. [`evaluate`] is pure (no I/O, no clock, no logs);
//! [`PolicyOutcome::report`] is the one place that logs and counts dropped entries.
//! Must never: grant anything that intersects a guard rail through an annotation, let one
//! ServiceAccount subscribe to another's private inbox, or fail open (an error means deny).
//! The user JWT expiry is not decided here (see `decision`).
//!
//! The model is documented in `docs/policy.md`; keep both in step.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use crate::metrics::Counter;
use crate::permissions::{Permissions, ResponsePermission, SubjectRules};
use crate::subject::{self, SubjectError};

/// Default annotation prefix (`SA_ANNOTATION_PREFIX`).
pub const DEFAULT_ANNOTATION_PREFIX: &str = "nats.io/";
/// Annotation name (after the prefix) listing extra publish subjects.
pub const PUB_ANNOTATION: &str = "allowed-pub-subjects";
/// Annotation name (after the prefix) listing extra subscribe subjects.
pub const SUB_ANNOTATION: &str = "allowed-sub-subjects";
/// Default guard rails (`DENY_SUBJECTS`). Checked by intersection, so they also stop `>`,
/// `*.>`, `*` and every other pattern that could reach `$SYS` or `_INBOX` subjects.
pub const DEFAULT_DENY_SUBJECTS: &[&str] = &["$SYS", "$SYS.>", "_INBOX", "_INBOX.>"];
/// Default `allow_responses` maximum (`ALLOW_RESPONSES`).
pub const DEFAULT_MAX_RESPONSES: u32 = 1;
/// First token of every inbox; annotations may never name a first token starting with it.
pub const INBOX_TOKEN: &str = "_INBOX";

/// How clients receive replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboxPolicy {
    /// Subscribe `_INBOX_<ns>_<sa>.>` only; the client must use that inbox prefix.
    #[default]
    Private,
    /// Subscribe `_INBOX.>`: for clients that cannot set an inbox prefix. Weaker: any such
    /// client can read replies meant for any other client that uses `_INBOX`.
    Shared,
}

impl InboxPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "private" => Some(InboxPolicy::Private),
            "shared" => Some(InboxPolicy::Shared),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            InboxPolicy::Private => "private",
            InboxPolicy::Shared => "shared",
        }
    }
}

/// The operator's policy settings (from `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// Annotation key prefix, e.g. `nats.io/`.
    pub annotation_prefix: String,
    /// Guard rails: subject patterns no annotation entry may intersect. Must be valid.
    pub deny_subjects: Vec<String>,
    pub inbox: InboxPolicy,
    /// `allow_responses` max per request; 0 turns response permissions off.
    pub max_responses: u32,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            annotation_prefix: DEFAULT_ANNOTATION_PREFIX.to_string(),
            deny_subjects: DEFAULT_DENY_SUBJECTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            inbox: InboxPolicy::Private,
            max_responses: DEFAULT_MAX_RESPONSES,
        }
    }
}

impl PolicySettings {
    /// The full annotation key for publish entries, e.g. `nats.io/allowed-pub-subjects`.
    pub fn pub_annotation_key(&self) -> String {
        format!("{}{}", self.annotation_prefix, PUB_ANNOTATION)
    }
    /// The full annotation key for subscribe entries.
    pub fn sub_annotation_key(&self) -> String {
        format!("{}{}", self.annotation_prefix, SUB_ANNOTATION)
    }
}

/// Why no permissions could be built. Every one of these is a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The namespace is not a DNS label.
    InvalidNamespace,
    /// The ServiceAccount name is not a DNS subdomain.
    InvalidServiceAccount,
    /// A guard rail is not a valid subject pattern (config should have caught it).
    InvalidDenySubject(String),
    /// The namespace default would intersect a built-in reserved subject. Unreachable for
    /// valid namespaces; kept as a hard check.
    NamespaceGuardRail,
}

impl PolicyError {
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::InvalidNamespace => "invalid_namespace",
            PolicyError::InvalidServiceAccount => "invalid_service_account",
            PolicyError::InvalidDenySubject(_) => "invalid_deny_subject",
            PolicyError::NamespaceGuardRail => "namespace_guard_rail",
        }
    }
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::InvalidDenySubject(s) => write!(f, "invalid deny subject {s:?}"),
            other => f.write_str(other.code()),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Which annotation an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Publish,
    Subscribe,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Publish => "publish",
            Direction::Subscribe => "subscribe",
        }
    }
}

/// Why an annotation entry was not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Not a valid subject pattern (see `subject`).
    InvalidSubject(SubjectError),
    /// Intersects this guard rail (`DENY_SUBJECTS`).
    GuardRail(String),
    /// Could match a subject whose first token starts with `_INBOX` (someone's inbox), is a
    /// server reply prefix (`_R_`, `_GR_`), or starts with a wildcard. Built in, not
    /// configurable.
    ReservedInbox,
    /// The same entry appeared earlier in the same annotation.
    Duplicate,
}

impl DropReason {
    /// The metric label / log reason code.
    pub fn code(&self) -> &'static str {
        match self {
            DropReason::InvalidSubject(_) => "invalid_subject",
            DropReason::GuardRail(_) => "guard_rail",
            DropReason::ReservedInbox => "reserved_inbox",
            DropReason::Duplicate => "duplicate",
        }
    }
    /// A human explanation for `explain`.
    pub fn detail(&self) -> String {
        match self {
            DropReason::InvalidSubject(e) => format!("invalid subject: {e}"),
            DropReason::GuardRail(r) => format!("overlaps guard rail {r}"),
            DropReason::ReservedInbox => {
                "could reach another client's inbox or replies (first token is a wildcard, starts with _INBOX, or is _R_ or _GR_)"
                    .to_string()
            }
            DropReason::Duplicate => "duplicate of an earlier entry".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Kept,
    Dropped(DropReason),
}

/// What happened to one annotation entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOutcome {
    pub direction: Direction,
    /// The entry after trimming.
    pub entry: String,
    pub verdict: Verdict,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub permissions: Permissions,
    /// Every non-empty annotation entry, publish first, in annotation order.
    pub entries: Vec<EntryOutcome>,
    /// User JWT `name`: `<namespace>/<serviceaccount>`.
    pub name: String,
    /// User JWT tags: `k8s-namespace:<ns>`, `k8s-serviceaccount:<sa>` (already lowercase).
    pub tags: Vec<String>,
    /// The inbox prefix the client must use: `_INBOX_<ns>_<sa-encoded>` or `_INBOX`.
    pub inbox_prefix: String,
}

impl PolicyOutcome {
    pub fn dropped(&self) -> impl Iterator<Item = (&EntryOutcome, &DropReason)> {
        self.entries.iter().filter_map(|e| match &e.verdict {
            Verdict::Dropped(r) => Some((e, r)),
            Verdict::Kept => None,
        })
    }

    /// Logs dropped entries (warning; duplicates at debug), at most [`MAX_LOGGED_DROPS`] per
    /// call plus one summary line, and counts every one in
    /// `nats_k8s_callout_annotation_entries_dropped_total{reason}`. Runs on every connect, so
    /// an annotation full of bad entries must not turn into thousands of lines each time.
    pub fn report(&self, namespace: &str, service_account: &str) {
        let mut total = 0usize;
        for (e, reason) in self.dropped() {
            dropped_counter(reason.code()).inc();
            total += 1;
            if total > MAX_LOGGED_DROPS {
                continue;
            }
            let entry = printable(&e.entry);
            let lvl = if matches!(reason, DropReason::Duplicate) {
                log::Level::Debug
            } else {
                log::Level::Warn
            };
            log::log!(lvl, reason = reason.code(), namespace = namespace,
                service_account = service_account, direction = e.direction.as_str(),
                entry = entry.as_str(); "annotation entry dropped: {}", reason.detail());
        }
        if total > MAX_LOGGED_DROPS {
            log::warn!(namespace = namespace, service_account = service_account,
                dropped = total, not_logged = total - MAX_LOGGED_DROPS;
                "more annotation entries dropped than are logged one by one");
        }
    }
}

/// Dropped annotation entries logged one by one per [`PolicyOutcome::report`].
pub const MAX_LOGGED_DROPS: usize = 16;

/// An entry made safe to log: at most 128 characters, control and non-ASCII escaped.
fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(128).flat_map(char::escape_default).collect();
    if s.chars().count() > 128 {
        out.push('…');
    }
    out
}

const DROP_REASONS: [&str; 4] = [
    "invalid_subject",
    "guard_rail",
    "reserved_inbox",
    "duplicate",
];

fn dropped_counter(reason: &'static str) -> Arc<Counter> {
    static HANDLES: OnceLock<Vec<Arc<Counter>>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        DROP_REASONS
            .iter()
            .map(|r| {
                crate::metrics::global().counter(
                    "nats_k8s_callout_annotation_entries_dropped_total",
                    "ServiceAccount annotation entries dropped, by reason.",
                    &[("reason", r)],
                )
            })
            .collect()
    });
    let i = DROP_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
    handles[i].clone()
}

/// Is `s` a DNS label (RFC 1123): 1–63 of `[a-z0-9-]`, alphanumeric at both ends?
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Is `s` a DNS subdomain (RFC 1123): at most 253 bytes, DNS labels joined by `.`?
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The private inbox prefix of a ServiceAccount: `_INBOX_<namespace>_<sa>` where every `.`
/// in the ServiceAccount name is written as `_`.
///
/// Unambiguous: namespaces (DNS labels) contain neither `.` nor `_`, ServiceAccount names
/// (DNS subdomains) contain no `_`. So the first `_` after `_INBOX_` ends the namespace, and
/// every later `_` is a `.` of the name ([`parse_private_inbox_prefix`] inverts it). The
/// result is one subject token. (An escape such as `.` → `-2e-` would be ambiguous because
/// `-2e-` is itself valid in a name: `a.b` and `a-2e-b` would share an inbox.)
pub fn private_inbox_prefix(namespace: &str, service_account: &str) -> Result<String, PolicyError> {
    if !is_dns_label(namespace) {
        return Err(PolicyError::InvalidNamespace);
    }
    if !is_dns_subdomain(service_account) {
        return Err(PolicyError::InvalidServiceAccount);
    }
    Ok(format!(
        "{INBOX_TOKEN}_{namespace}_{}",
        service_account.replace('.', "_")
    ))
}

/// The inverse of [`private_inbox_prefix`]: `(namespace, service_account)`.
pub fn parse_private_inbox_prefix(prefix: &str) -> Option<(String, String)> {
    let rest = prefix.strip_prefix(INBOX_TOKEN)?.strip_prefix('_')?;
    let (ns, sa) = rest.split_once('_')?;
    let sa = sa.replace('_', ".");
    (is_dns_label(ns) && is_dns_subdomain(&sa)).then(|| (ns.to_string(), sa))
}

/// First tokens of the server's own reply subjects: `_R_` for replies to requests that came
/// in through a service import, `_GR_` for replies routed between clusters. Whoever may
/// subscribe there reads replies meant for clients of other accounts (checked against
/// nats-server 2.15.1 for `_R_`); whoever may publish there can forge them.
pub const SERVER_REPLY_TOKENS: &[&str] = &["_R_", "_GR_"];

/// Could pattern `p` match a subject whose first token starts with `_INBOX` (any inbox) or is
/// one of the server's reply prefixes?
fn reaches_inboxes(p: &str) -> bool {
    let first = p.split('.').next().unwrap_or("");
    first == "*"
        || first == ">"
        || first.starts_with(INBOX_TOKEN)
        || SERVER_REPLY_TOKENS.contains(&first)
}

/// Builds the permissions of `namespace`/`service_account` from the settings and the raw
/// values of its two annotations (`None` when absent). Pure.
pub fn evaluate(
    settings: &PolicySettings,
    namespace: &str,
    service_account: &str,
    pub_annotation: Option<&str>,
    sub_annotation: Option<&str>,
) -> Result<PolicyOutcome, PolicyError> {
    let private_prefix = private_inbox_prefix(namespace, service_account)?;
    for rail in &settings.deny_subjects {
        subject::validate(rail).map_err(|_| PolicyError::InvalidDenySubject(rail.clone()))?;
    }
    let ns_default = format!("{namespace}.>");
    // Hard check independent of the configurable rails: a namespace default can never reach
    // system or inbox subjects (true by construction for DNS labels).
    if DEFAULT_DENY_SUBJECTS
        .iter()
        .any(|r| subject::intersects(r, &ns_default))
        || reaches_inboxes(&ns_default)
    {
        return Err(PolicyError::NamespaceGuardRail);
    }
    let inbox_prefix = match settings.inbox {
        InboxPolicy::Private => private_prefix,
        InboxPolicy::Shared => INBOX_TOKEN.to_string(),
    };
    let inbox_grant = format!("{inbox_prefix}.>");

    let pub_defaults = vec![ns_default.clone()];
    let sub_defaults = vec![ns_default, inbox_grant];

    let mut entries = Vec::new();
    let pub_allow = grant(
        settings,
        Direction::Publish,
        pub_annotation,
        pub_defaults.clone(),
        &mut entries,
    );
    let sub_allow = grant(
        settings,
        Direction::Subscribe,
        sub_annotation,
        sub_defaults.clone(),
        &mut entries,
    );
    // Defence in depth: guard rails also go into the JWT deny lists, except a rail that
    // overlaps the defaults of that direction (it would cut into the namespace's own
    // subjects or its inbox, which rails do not govern).
    let deny_for = |defaults: &[String]| -> Vec<String> {
        settings
            .deny_subjects
            .iter()
            .filter(|r| !defaults.iter().any(|d| subject::intersects(r, d)))
            .cloned()
            .collect()
    };
    let permissions = Permissions {
        publish: SubjectRules {
            allow: pub_allow,
            deny: deny_for(&pub_defaults),
        },
        subscribe: SubjectRules {
            allow: sub_allow,
            deny: deny_for(&sub_defaults),
        },
        responses: (settings.max_responses > 0).then_some(ResponsePermission {
            max: i64::from(settings.max_responses),
            ttl_ns: 0,
        }),
    };
    Ok(PolicyOutcome {
        permissions,
        entries,
        name: format!("{namespace}/{service_account}"),
        tags: vec![
            format!("k8s-namespace:{namespace}"),
            format!("k8s-serviceaccount:{service_account}"),
        ],
        inbox_prefix,
    })
}

/// Parses one annotation value, records an outcome per entry, returns the allow list.
fn grant(
    settings: &PolicySettings,
    direction: Direction,
    annotation: Option<&str>,
    mut allow: Vec<String>,
    entries: &mut Vec<EntryOutcome>,
) -> Vec<String> {
    // Sets, not list scans: an annotation may hold tens of thousands of entries (256 KiB),
    // and this runs on every connect.
    let mut seen: HashSet<&str> = HashSet::new();
    let defaults: HashSet<String> = allow.iter().cloned().collect();
    for raw in annotation.unwrap_or("").split(',') {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let verdict = if let Err(e) = subject::validate(entry) {
            Verdict::Dropped(DropReason::InvalidSubject(e))
        } else if let Some(rail) = settings
            .deny_subjects
            .iter()
            .find(|r| subject::intersects(r, entry))
        {
            Verdict::Dropped(DropReason::GuardRail(rail.clone()))
        } else if reaches_inboxes(entry) {
            Verdict::Dropped(DropReason::ReservedInbox)
        } else if !seen.insert(entry) {
            Verdict::Dropped(DropReason::Duplicate)
        } else {
            if !defaults.contains(entry) {
                allow.push(entry.to_string());
            }
            Verdict::Kept
        };
        entries.push(EntryOutcome {
            direction,
            entry: entry.to_string(),
            verdict,
        });
    }
    allow
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["a", "shop", "a-b", "0", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a_b",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("orders-api"));
        assert!(is_dns_subdomain("a.b-c.d"));
        for bad in ["", ".a", "a.", "a..b", "A.b", "a:b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(!is_dns_subdomain(&long));
    }

    fn eval(pub_a: Option<&str>, sub_a: Option<&str>) -> PolicyOutcome {
        evaluate(&PolicySettings::default(), "shop", "api", pub_a, sub_a).unwrap()
    }

    fn verdict_of(o: &PolicyOutcome, d: Direction, entry: &str) -> Verdict {
        o.entries
            .iter()
            .find(|e| e.direction == d && e.entry == entry)
            .unwrap_or_else(|| panic!("no outcome for {entry:?}: {:?}", o.entries))
            .verdict
            .clone()
    }

    fn dropped_code(o: &PolicyOutcome, d: Direction, entry: &str) -> &'static str {
        match verdict_of(o, d, entry) {
            Verdict::Dropped(r) => r.code(),
            Verdict::Kept => panic!("{entry:?} was kept"),
        }
    }

    #[test]
    fn default_grants_namespace_private_inbox_and_one_response() {
        let o = eval(None, None);
        assert_eq!(o.permissions.publish.allow, vec!["shop.>"]);
        assert_eq!(
            o.permissions.subscribe.allow,
            vec!["shop.>", "_INBOX_shop_api.>"]
        );
        assert_eq!(
            o.permissions.responses,
            Some(ResponsePermission { max: 1, ttl_ns: 0 })
        );
        assert_eq!(o.name, "shop/api");
        assert_eq!(o.tags, vec!["k8s-namespace:shop", "k8s-serviceaccount:api"]);
        assert_eq!(o.inbox_prefix, "_INBOX_shop_api");
        assert!(o.entries.is_empty());
        let o2 = evaluate(&PolicySettings::default(), "team-7", "web.v2", None, None).unwrap();
        for t in &o2.tags {
            assert_eq!(t, &t.to_lowercase(), "NATS tooling lowercases tags");
        }
        assert_eq!(o2.tags[1], "k8s-serviceaccount:web.v2");
        // Guard rails also land in the deny lists (none overlaps the defaults).
        assert_eq!(
            o.permissions.publish.deny,
            vec!["$SYS", "$SYS.>", "_INBOX", "_INBOX.>"]
        );
        assert_eq!(
            o.permissions.subscribe.deny,
            vec!["$SYS", "$SYS.>", "_INBOX", "_INBOX.>"]
        );
    }

    #[test]
    fn permissions_serialize_in_the_user_jwt_shape() {
        let o = eval(Some("billing.>"), None);
        let j = serde_json::to_value(&o.permissions).unwrap();
        assert_eq!(
            j["pub"]["allow"],
            serde_json::json!(["shop.>", "billing.>"])
        );
        assert_eq!(j["resp"], serde_json::json!({"max": 1, "ttl": 0}));
    }

    #[test]
    fn annotations_add_trimmed_valid_entries_and_skip_empty_ones() {
        let o = eval(
            Some(" billing.>, ,orders.created ,,\t,"),
            Some("audit.*.events,"),
        );
        assert_eq!(
            o.permissions.publish.allow,
            vec!["shop.>", "billing.>", "orders.created"]
        );
        assert_eq!(
            o.permissions.subscribe.allow,
            vec!["shop.>", "_INBOX_shop_api.>", "audit.*.events"]
        );
        assert_eq!(o.entries.len(), 3, "{:?}", o.entries);
        assert!(o.entries.iter().all(|e| e.verdict == Verdict::Kept));
        assert_eq!(o.dropped().count(), 0);
    }

    #[test]
    fn publish_and_subscribe_annotations_are_independent() {
        let o = eval(Some("a.b"), None);
        assert!(o.permissions.publish.allow.contains(&"a.b".to_string()));
        assert!(!o.permissions.subscribe.allow.contains(&"a.b".to_string()));
        let o = eval(None, Some("a.b"));
        assert!(!o.permissions.publish.allow.contains(&"a.b".to_string()));
        assert!(o.permissions.subscribe.allow.contains(&"a.b".to_string()));
    }

    #[test]
    fn invalid_entries_are_dropped_and_valid_ones_still_apply() {
        let o = eval(
            Some("a..b,ok.one,a.>.b,a*,caf\u{e9}.x,ok.two,x\ty"),
            Some("a b,ok.three"),
        );
        assert_eq!(
            o.permissions.publish.allow,
            vec!["shop.>", "ok.one", "ok.two"]
        );
        assert_eq!(
            o.permissions.subscribe.allow,
            vec!["shop.>", "_INBOX_shop_api.>", "ok.three"]
        );
        for bad in ["a..b", "a.>.b", "a*", "caf\u{e9}.x", "x\ty"] {
            assert_eq!(
                dropped_code(&o, Direction::Publish, bad),
                "invalid_subject",
                "{bad:?}"
            );
        }
        assert_eq!(
            verdict_of(&o, Direction::Publish, "a..b"),
            Verdict::Dropped(DropReason::InvalidSubject(SubjectError::EmptyToken))
        );
        assert_eq!(
            dropped_code(&o, Direction::Subscribe, "a b"),
            "invalid_subject"
        );
    }

    #[test]
    fn guard_rails_drop_every_overlapping_entry_by_intersection() {
        let cases = [
            ">",
            "*",
            "*.>",
            "*.*",
            "$SYS",
            "$SYS.>",
            "$SYS.REQ.USER.AUTH",
            "$SYS.*.USER.>",
            "_INBOX",
            "_INBOX.>",
            "_INBOX.x",
            "_INBOX.*",
            "*.REQ.USER.AUTH",
        ];
        let list = cases.join(",");
        let o = eval(Some(&list), Some(&list));
        assert_eq!(o.permissions.publish.allow, vec!["shop.>"]);
        assert_eq!(
            o.permissions.subscribe.allow,
            vec!["shop.>", "_INBOX_shop_api.>"]
        );
        for c in cases {
            for d in [Direction::Publish, Direction::Subscribe] {
                assert_eq!(dropped_code(&o, d, c), "guard_rail", "{c}");
            }
        }
        assert_eq!(
            verdict_of(&o, Direction::Publish, "*.REQ.USER.AUTH"),
            Verdict::Dropped(DropReason::GuardRail("$SYS.>".into()))
        );
    }

    #[test]
    fn near_misses_of_guard_rails_are_kept() {
        // Not prefix matching: these share characters with a rail but no subject.
        let o = eval(Some("SYS.x,$SYSTEM.x,x.$SYS.>,INBOX.x,a.*.$SYS"), None);
        assert_eq!(o.dropped().count(), 0, "{:?}", o.entries);
        assert_eq!(o.permissions.publish.allow.len(), 6);
    }

    #[test]
    fn nobody_can_reach_another_private_inbox() {
        let o = eval(
            None,
            Some("_INBOX_shop_other.>,_INBOX_bank_api.x,_INBOXES.x,_INBOX_shop_api.>"),
        );
        for e in [
            "_INBOX_shop_other.>",
            "_INBOX_bank_api.x",
            "_INBOXES.x",
            "_INBOX_shop_api.>",
        ] {
            assert_eq!(dropped_code(&o, Direction::Subscribe, e), "reserved_inbox");
        }
        assert_eq!(
            o.permissions.subscribe.allow,
            vec!["shop.>", "_INBOX_shop_api.>"]
        );
    }

    #[test]
    fn wildcard_first_tokens_are_reserved_even_without_guard_rails() {
        let s = PolicySettings {
            deny_subjects: vec![],
            ..Default::default()
        };
        let o = evaluate(&s, "shop", "api", None, Some(">,*.x,*,ok")).unwrap();
        for e in [">", "*.x", "*"] {
            assert_eq!(dropped_code(&o, Direction::Subscribe, e), "reserved_inbox");
        }
        assert_eq!(verdict_of(&o, Direction::Subscribe, "ok"), Verdict::Kept);
        assert!(o.permissions.subscribe.deny.is_empty());
    }

    #[test]
    fn operator_rails_apply_to_annotations_not_to_the_namespace_default() {
        let s = PolicySettings {
            deny_subjects: vec!["$SYS.>".into(), "shop.secret.>".into(), "bank.>".into()],
            ..Default::default()
        };
        let o = evaluate(
            &s,
            "shop",
            "api",
            Some("bank.x,shop.secret.k,shop.other"),
            None,
        )
        .unwrap();
        assert_eq!(dropped_code(&o, Direction::Publish, "bank.x"), "guard_rail");
        assert_eq!(
            dropped_code(&o, Direction::Publish, "shop.secret.k"),
            "guard_rail"
        );
        assert_eq!(
            verdict_of(&o, Direction::Publish, "shop.other"),
            Verdict::Kept
        );
        assert_eq!(o.permissions.publish.allow, vec!["shop.>", "shop.other"]);
        // `shop.secret.>` overlaps the namespace default, so it stays out of the JWT deny list.
        assert_eq!(o.permissions.publish.deny, vec!["$SYS.>", "bank.>"]);
    }

    #[test]
    fn a_full_wildcard_rail_disables_annotation_grants_but_not_the_default() {
        let s = PolicySettings {
            deny_subjects: vec![">".into()],
            ..Default::default()
        };
        let o = evaluate(&s, "shop", "api", Some("a.b,c"), Some("d")).unwrap();
        assert_eq!(o.dropped().count(), 3);
        assert_eq!(o.permissions.publish.allow, vec!["shop.>"]);
        assert!(
            o.permissions.publish.deny.is_empty(),
            "`>` must not deny all"
        );
    }

    #[test]
    fn duplicates_are_reported_once_and_granted_once() {
        let o = eval(Some("a.b, a.b ,shop.>,a.b"), None);
        assert_eq!(o.permissions.publish.allow, vec!["shop.>", "a.b"]);
        let dups = o
            .dropped()
            .filter(|(_, r)| **r == DropReason::Duplicate)
            .count();
        assert_eq!(dups, 2);
        assert_eq!(verdict_of(&o, Direction::Publish, "shop.>"), Verdict::Kept);
    }

    #[test]
    fn a_thousand_entries() {
        let list: Vec<String> = (0..1000)
            .map(|i| {
                if i % 10 == 0 {
                    format!("$SYS.x{i}")
                } else {
                    format!("team{i}.>")
                }
            })
            .collect();
        let o = eval(Some(&list.join(",")), None);
        assert_eq!(o.entries.len(), 1000);
        assert_eq!(o.dropped().count(), 100);
        assert_eq!(o.permissions.publish.allow.len(), 1 + 900);
    }

    #[test]
    fn shared_inbox_grants_inbox_wildcard_and_keeps_it_out_of_sub_deny() {
        let s = PolicySettings {
            inbox: InboxPolicy::Shared,
            ..Default::default()
        };
        let o = evaluate(&s, "shop", "api", None, Some("_INBOX.x")).unwrap();
        assert_eq!(o.inbox_prefix, "_INBOX");
        assert_eq!(o.permissions.subscribe.allow, vec!["shop.>", "_INBOX.>"]);
        assert_eq!(
            o.permissions.subscribe.deny,
            vec!["$SYS", "$SYS.>", "_INBOX"]
        );
        // Annotations still cannot name inboxes, the grant comes from the policy only.
        assert_eq!(
            dropped_code(&o, Direction::Subscribe, "_INBOX.x"),
            "guard_rail"
        );
        // Publishing into inboxes stays denied; replies use allow_responses.
        assert!(o.permissions.publish.deny.contains(&"_INBOX.>".to_string()));
    }

    #[test]
    fn responses_are_configurable_and_zero_turns_them_off() {
        let mut s = PolicySettings {
            max_responses: 5,
            ..Default::default()
        };
        let o = evaluate(&s, "shop", "api", None, None).unwrap();
        assert_eq!(
            o.permissions.responses,
            Some(ResponsePermission { max: 5, ttl_ns: 0 })
        );
        s.max_responses = 0;
        let o = evaluate(&s, "shop", "api", None, None).unwrap();
        assert_eq!(o.permissions.responses, None);
        assert!(!serde_json::to_string(&o.permissions)
            .unwrap()
            .contains("resp"));
    }

    #[test]
    fn annotation_keys_follow_the_prefix() {
        let s = PolicySettings {
            annotation_prefix: "nats.example.com/".into(),
            ..Default::default()
        };
        assert_eq!(
            s.pub_annotation_key(),
            "nats.example.com/allowed-pub-subjects"
        );
        assert_eq!(
            s.sub_annotation_key(),
            "nats.example.com/allowed-sub-subjects"
        );
        let d = PolicySettings::default();
        assert_eq!(d.pub_annotation_key(), "nats.io/allowed-pub-subjects");
    }

    #[test]
    fn invalid_identities_and_rails_are_errors() {
        let d = PolicySettings::default();
        for ns in [
            "",
            "Shop",
            "shop.x",
            "$SYS",
            "_INBOX",
            "-a",
            "a_b",
            &"a".repeat(64),
        ] {
            assert_eq!(
                evaluate(&d, ns, "api", None, None).unwrap_err(),
                PolicyError::InvalidNamespace,
                "{ns:?}"
            );
        }
        for sa in ["", "API", "a_b", "a..b", ".a", "a b", &"a".repeat(254)] {
            assert_eq!(
                evaluate(&d, "shop", sa, None, None).unwrap_err(),
                PolicyError::InvalidServiceAccount,
                "{sa:?}"
            );
        }
        let bad = PolicySettings {
            deny_subjects: vec!["a..b".into()],
            ..Default::default()
        };
        assert_eq!(
            evaluate(&bad, "shop", "api", None, None)
                .unwrap_err()
                .code(),
            "invalid_deny_subject"
        );
    }

    #[test]
    fn longest_names_give_a_valid_inbox_subject() {
        let ns = "n".repeat(63);
        let sa = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(sa.len(), 253);
        let o = evaluate(&PolicySettings::default(), &ns, &sa, None, None).unwrap();
        let grant = &o.permissions.subscribe.allow[1];
        assert_eq!(subject::validate(grant), Ok(()));
        assert_eq!(grant.split('.').count(), 2, "the prefix is a single token");
    }

    #[test]
    fn inbox_encoding_of_dots() {
        assert_eq!(
            private_inbox_prefix("shop", "my.app.v2").unwrap(),
            "_INBOX_shop_my_app_v2"
        );
        assert_eq!(
            parse_private_inbox_prefix("_INBOX_shop_my_app_v2"),
            Some(("shop".into(), "my.app.v2".into()))
        );
        assert_eq!(parse_private_inbox_prefix("_INBOX_shop"), None);
        assert_eq!(parse_private_inbox_prefix("_INBOX.shop_a"), None);
    }

    /// Proof by exhaustion over a small alphabet: every valid (namespace, ServiceAccount)
    /// pair of up to 4 characters from {a, 2, e, -, .} gets a distinct inbox prefix, which decodes
    /// back to the pair; the rejected `-2e-` escape collides on the same inputs.
    #[test]
    fn inbox_encoding_is_injective() {
        fn strings(alpha: &[char], max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut layer = vec![String::new()];
            for _ in 0..max {
                layer = layer
                    .iter()
                    .flat_map(|p| alpha.iter().map(move |c| format!("{p}{c}")))
                    .collect();
                out.extend(layer.iter().cloned());
            }
            out
        }
        let all = strings(&['a', '2', 'e', '-', '.'], 4);
        let nss: Vec<&String> = all.iter().filter(|s| is_dns_label(s)).collect();
        let sas: Vec<&String> = all.iter().filter(|s| is_dns_subdomain(s)).collect();
        assert!(sas.iter().any(|s| s.contains('.')) && sas.len() > 100);
        let mut seen = std::collections::HashMap::new();
        for ns in &nss {
            for sa in &sas {
                let p = private_inbox_prefix(ns, sa).unwrap();
                assert_eq!(subject::validate(&p), Ok(()));
                assert!(!p.contains('.'));
                if let Some(prev) = seen.insert(p.clone(), (ns.to_string(), sa.to_string())) {
                    panic!("{p} from both {prev:?} and ({ns}, {sa})");
                }
                assert_eq!(
                    parse_private_inbox_prefix(&p),
                    Some((ns.to_string(), sa.to_string()))
                );
            }
        }
        assert!(seen.len() > 1000);
        // The rejected escape: two distinct valid names, one inbox.
        let naive = |sa: &str| sa.replace('.', "-2e-");
        assert!(is_dns_subdomain("a-2e-b") && is_dns_subdomain("a.b"));
        assert_eq!(naive("a.b"), naive("a-2e-b"));
        assert_ne!(
            private_inbox_prefix("s", "a.b").unwrap(),
            private_inbox_prefix("s", "a-2e-b").unwrap()
        );
    }

    #[test]
    fn adversarial_entries() {
        let o = eval(
            Some(" $SYS.> ,\u{ff04}SYS.>,$sys.x,a.b\u{0},\nc.d\n,e.f\ng.h,$SYS\t.x,>.,.>,*.*.>"),
            None,
        );
        // Trimming happens before the checks, so padding cannot hide a rail.
        assert_eq!(dropped_code(&o, Direction::Publish, "$SYS.>"), "guard_rail");
        // A look-alike dollar sign is not ASCII.
        assert_eq!(
            dropped_code(&o, Direction::Publish, "\u{ff04}SYS.>"),
            "invalid_subject"
        );
        // Subjects are case-sensitive: `$sys` is an ordinary subject, not the system one.
        assert_eq!(verdict_of(&o, Direction::Publish, "$sys.x"), Verdict::Kept);
        assert_eq!(
            dropped_code(&o, Direction::Publish, "a.b\u{0}"),
            "invalid_subject"
        );
        // A YAML block value with newlines around comma-separated entries still works.
        assert_eq!(verdict_of(&o, Direction::Publish, "c.d"), Verdict::Kept);
        assert_eq!(
            dropped_code(&o, Direction::Publish, "e.f\ng.h"),
            "invalid_subject"
        );
        for e in ["$SYS\t.x", ">.", ".>"] {
            assert_eq!(
                dropped_code(&o, Direction::Publish, e),
                "invalid_subject",
                "{e:?}"
            );
        }
        assert_eq!(dropped_code(&o, Direction::Publish, "*.*.>"), "guard_rail");
        assert_eq!(o.permissions.publish.allow, vec!["shop.>", "$sys.x", "c.d"]);
    }

    /// Every pattern of up to 3 tokens over a hostile alphabet, as both annotations: every
    /// granted subject is valid, reaches no rail and no inbox, and only the policy's own
    /// defaults touch inbox subjects.
    #[test]
    fn nothing_granted_by_annotation_reaches_a_rail_or_an_inbox() {
        let alpha = [
            "$SYS",
            "_INBOX",
            "_INBOX_shop_api",
            "_INBOX_bank_x",
            "shop",
            "a",
            "*",
            ">",
        ];
        let mut all: Vec<String> = alpha.iter().map(|s| s.to_string()).collect();
        for _ in 0..2 {
            let next: Vec<String> = all
                .iter()
                .flat_map(|p| alpha.iter().map(move |t| format!("{p}.{t}")))
                .collect();
            all.extend(next);
        }
        all.sort();
        all.dedup();
        let list = all.join(",");
        for inbox in [InboxPolicy::Private, InboxPolicy::Shared] {
            let s = PolicySettings {
                inbox,
                ..Default::default()
            };
            let o = evaluate(&s, "shop", "api", Some(&list), Some(&list)).unwrap();
            assert_eq!(o.entries.len(), 2 * all.len());
            let defaults = ["shop.>", "_INBOX_shop_api.>", "_INBOX.>"];
            let mut kept = 0;
            for rules in [&o.permissions.publish, &o.permissions.subscribe] {
                for a in rules
                    .allow
                    .iter()
                    .filter(|a| !defaults.contains(&a.as_str()))
                {
                    kept += 1;
                    assert_eq!(subject::validate(a), Ok(()));
                    for r in DEFAULT_DENY_SUBJECTS {
                        assert!(!subject::intersects(a, r), "{a} reaches {r}");
                    }
                    for inbox in ["_INBOX_shop_api.x", "_INBOX_bank_x.y", "_INBOX.z"] {
                        assert!(!subject::matches(a, inbox), "{a} reaches {inbox}");
                    }
                    for d in &rules.deny {
                        assert!(!subject::intersects(a, d), "{a} vs deny {d}");
                    }
                }
            }
            assert!(kept > 20, "the enumeration should keep something: {kept}");
        }
    }

    #[test]
    fn report_counts_drops_by_reason() {
        let c = dropped_counter("guard_rail");
        let before = c.get();
        let o = eval(Some("$SYS.>,ok,>"), None);
        o.report("shop", "api");
        assert!(c.get() >= before + 2);
    }

    #[test]
    fn printable_escapes_and_truncates() {
        assert_eq!(printable("a\tb\u{e9}"), "a\\tb\\u{e9}");
        let long = "x".repeat(300);
        assert_eq!(printable(&long).chars().count(), 129);
    }
}
