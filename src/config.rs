//! Configuration: environment variables to typed, validated settings.
//!
//! Owns the table of variables ([`VARIABLES`]: name, default, description), which is the
//! public contract and the single source of `--help` and `docs/configuration.md`.
//! [`Config::from_env`] takes the environment as a function so tests never touch the process
//! environment; it reads the files named by `*_FILE` variables and reports **every** problem
//! at once, each naming its variable. Must never put a secret (password, token, seed, key,
//! JWT) or a URL's content into an error message or `Debug` output: secrets are kept as
//! [`Secret`], and values are only echoed for non-secret, non-URL variables.
//! An empty (or all-whitespace) variable counts as unset.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nkeys::{KeyPair, KeyPairType, XKey};

use crate::policy::{self, InboxPolicy, PolicySettings};
use crate::secret::Secret;
use crate::subject;

/// One environment variable of the public contract.
#[derive(Debug, Clone, Copy)]
pub struct VarSpec {
    pub name: &'static str,
    /// The default, as shown to the operator (`""` = none / required / derived; see help).
    pub default: &'static str,
    pub help: &'static str,
}

const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Every variable we read, in `--help` order.
pub const VARIABLES: &[VarSpec] = &[
    VarSpec { name: "NATS_URL", default: "nats://127.0.0.1:4222", help: "NATS server URLs, comma-separated (nats:// or tls://; no credentials in the URL)" },
    VarSpec { name: "NATS_USER", default: "", help: "service login: user name (with NATS_PASSWORD); use exactly one login method" },
    VarSpec { name: "NATS_PASSWORD", default: "", help: "service login: password (with NATS_USER); secret" },
    VarSpec { name: "NATS_TOKEN", default: "", help: "service login: token; secret" },
    VarSpec { name: "NATS_NKEY_SEED_FILE", default: "", help: "service login: file with a user nkey seed (SU...)" },
    VarSpec { name: "NATS_CREDS_FILE", default: "", help: "service login: NATS .creds file (user JWT + SU... seed)" },
    VarSpec { name: "NATS_TLS_CA_FILE", default: "", help: "PEM CA bundle to verify the NATS server (default: built-in web roots)" },
    VarSpec { name: "NATS_TLS_CERT_FILE", default: "", help: "PEM client certificate for NATS (with NATS_TLS_KEY_FILE)" },
    VarSpec { name: "NATS_TLS_KEY_FILE", default: "", help: "PEM client private key for NATS (with NATS_TLS_CERT_FILE)" },
    VarSpec { name: "NATS_SIGNING_KEY_FILE", default: "", help: "required: file with the account seed (SA...) that signs responses and user JWTs" },
    VarSpec { name: "NATS_ACCOUNT", default: "", help: "required: target account of admitted users; an account name selects config mode, an account public key (A..., 56 characters) selects operator mode" },
    VarSpec { name: "NATS_RESPONSE_SIGNING_KEY_FILE", default: "", help: "operator mode only: account seed (SA...) of the callout account when it differs from the target account" },
    VarSpec { name: "NATS_XKEY_SEED_FILE", default: "", help: "file with the service's curve seed (SX...); enables encrypted callout requests (plain requests are then refused)" },
    VarSpec { name: "NATS_QUEUE_GROUP", default: "nats-k8s-callout", help: "queue group of the callout subscription" },
    VarSpec { name: "JWT_ISSUER", default: "", help: "accepted token issuers, comma-separated; in cluster default: discovered from the API server's /.well-known/openid-configuration; required out of cluster" },
    VarSpec { name: "JWT_AUDIENCE", default: "nats", help: "accepted token audiences, comma-separated" },
    VarSpec { name: "JWKS_URL", default: "", help: "URL of the token signing keys (at most one of JWKS_URL, JWKS_FILE); on the origin of K8S_API_URL fetched with K8S_CA_FILE and K8S_TOKEN_FILE, elsewhere with the built-in web roots and no token; in cluster default: the API server's /openid/v1/jwks; out of cluster default: OIDC discovery from the issuer (the same trust rule)" },
    VarSpec { name: "JWKS_FILE", default: "", help: "file with the token signing keys (JWKS JSON), re-read periodically" },
    VarSpec { name: "K8S_API_URL", default: "", help: "Kubernetes API server URL; in cluster default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; required out of cluster" },
    VarSpec { name: "K8S_TOKEN_FILE", default: "", help: "bearer token file for the API server; in cluster default: /var/run/secrets/kubernetes.io/serviceaccount/token" },
    VarSpec { name: "K8S_CA_FILE", default: "", help: "PEM CA bundle for the API server; in cluster default: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt" },
    VarSpec { name: "K8S_NAMESPACE", default: "", help: "admit and watch only ServiceAccounts of this namespace (default: all namespaces)" },
    VarSpec { name: "K8S_LABEL_SELECTOR", default: "", help: "admit and watch only ServiceAccounts matching this label selector" },
    VarSpec { name: "KUBERNETES_SERVICE_HOST", default: "", help: "set by Kubernetes in a pod; its presence means in cluster" },
    VarSpec { name: "KUBERNETES_SERVICE_PORT", default: "443", help: "set by Kubernetes in a pod" },
    VarSpec { name: "SA_ANNOTATION_PREFIX", default: "nats.io/", help: "prefix of the ServiceAccount annotations allowed-pub-subjects and allowed-sub-subjects" },
    VarSpec { name: "INBOX_POLICY", default: "private", help: "private: subscribe _INBOX_<namespace>_<serviceaccount>.> (clients must use that inbox prefix); shared: subscribe _INBOX.> (weaker)" },
    VarSpec { name: "MAX_SESSION", default: "1h", help: "longest NATS session before the client must reconnect, e.g. 1h, 30m, 90s (also capped by the token's expiry)" },
    VarSpec { name: "ALLOW_RESPONSES", default: "1", help: "replies a client may publish per received request (allow_responses); 0 = off" },
    VarSpec { name: "DENY_SUBJECTS", default: "$SYS,$SYS.>,_INBOX,_INBOX.>", help: "guard rails: subject patterns no annotation entry may overlap, comma-separated" },
    VarSpec { name: "ALLOW_LEGACY_TOKENS", default: "false", help: "accept legacy (secret-based, non-expiring) ServiceAccount tokens; JWT_ISSUER must then list kubernetes/serviceaccount" },
    VarSpec { name: "TOKEN_LEEWAY", default: "60s", help: "clock skew tolerated on token exp/nbf/iat, at most 300s" },
    VarSpec { name: "CALLOUT_WORKERS", default: "4", help: "worker threads deciding callout requests (1-256)" },
    VarSpec { name: "CALLOUT_QUEUE", default: "256", help: "bounded queue of pending callout requests (1-65536)" },
    VarSpec { name: "HTTP_ADDR", default: "0.0.0.0:8080", help: "listen address of /healthz, /readyz and /metrics" },
    VarSpec { name: "LOG_LEVEL", default: "info", help: "log filter: off, error, warn, info, debug, trace, or module=level pairs, comma-separated" },
    VarSpec { name: "LOG_FORMAT", default: "", help: "json or text; default: json when stdout is not a terminal, else text" },
    VarSpec { name: "LOG_ADMISSIONS", default: "info", help: "log level of each admitted client: info or debug" },
];

/// The `--help` text of the variable table.
pub fn help_text() -> String {
    let mut s = String::from("ENVIRONMENT (default in brackets):\n");
    for v in VARIABLES {
        s.push_str(&format!("  {}\n      {}", v.name, v.help));
        if !v.default.is_empty() {
            s.push_str(&format!(" [default: {}]", v.default));
        }
        s.push('\n');
    }
    s
}

/// The variable table as Markdown (the body of `docs/configuration.md`).
pub fn markdown_table() -> String {
    let mut s = String::from("| variable | default | description |\n|---|---|---|\n");
    for v in VARIABLES {
        let d = if v.default.is_empty() {
            "—".to_string()
        } else {
            format!("`{}`", v.default)
        };
        s.push_str(&format!(
            "| `{}` | {} | {} |\n",
            v.name,
            d,
            v.help.replace('|', "\\|")
        ));
    }
    s
}

fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.default)
        .unwrap_or("")
}

/// How the service itself logs in to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    NkeySeed {
        seed: Secret,
        public_key: String,
    },
    Creds {
        path: PathBuf,
    },
    /// No credentials (e.g. a test server without auth).
    None,
}

/// TLS towards NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    pub ca_file: Option<PathBuf>,
    /// (certificate, key)
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// An nkey seed read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    pub path: PathBuf,
    pub seed: Secret,
    pub public_key: String,
}

/// Where admitted users go; derived from the form of `NATS_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountMode {
    /// Config mode: the user JWT `aud` is this account name.
    Config { account: String },
    /// Operator mode: the target account's public key (`A…`).
    Operator { account: String },
}

/// Where the token signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// In cluster: `<K8S_API_URL>/openid/v1/jwks` with the pod's token.
    ApiServer,
    Url(String),
    File(PathBuf),
    /// OIDC discovery from each issuer's `/.well-known/openid-configuration`.
    Discovery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    pub api_url: String,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub namespace: Option<String>,
    pub label_selector: Option<String>,
    pub in_cluster: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionLogLevel {
    Info,
    Debug,
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub nats_urls: Vec<String>,
    pub nats_auth: NatsAuth,
    pub nats_tls: NatsTls,
    pub signing_key: SeedFile,
    pub account: AccountMode,
    pub response_signing_key: Option<SeedFile>,
    pub xkey: Option<SeedFile>,
    pub queue_group: String,
    /// `None` = discover from the API server (in cluster only).
    pub issuers: Option<Vec<String>>,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub kube: KubeSettings,
    pub policy: PolicySettings,
    pub max_session: Duration,
    pub allow_legacy_tokens: bool,
    pub token_leeway: Duration,
    pub callout_workers: usize,
    pub callout_queue: usize,
    pub http_addr: SocketAddr,
    pub log_level: String,
    /// `None` = decide by whether stdout is a terminal ([`Config::log_format`]).
    pub log_format: Option<LogFormat>,
    pub log_admissions: AdmissionLogLevel,
}

impl Config {
    /// The log format, given whether stdout is a terminal
    /// (`std::io::IsTerminal::is_terminal(&std::io::stdout())`).
    pub fn log_format(&self, stdout_is_terminal: bool) -> LogFormat {
        self.log_format.unwrap_or(if stdout_is_terminal {
            LogFormat::Text
        } else {
            LogFormat::Json
        })
    }

    /// Reads the process environment.
    pub fn from_process_env() -> Result<Config, ConfigError> {
        Config::from_env(&|k| std::env::var(k).ok())
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: &'static str,
    pub message: String,
}

/// Every problem found, one per line as `VARIABLE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn code(&self) -> &'static str {
        "invalid_configuration"
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", p.variable, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Parses a duration such as `1h`, `30m`, `90s`, `1h30m`, `500ms`. A bare number is refused
/// (its unit would be a guess).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (mult_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(n.checked_mul(mult_ms)?)?;
    }
    Some(Duration::from_millis(total))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Splits a `.creds` file into (user JWT, user seed). Errors never contain file content.
pub fn parse_creds(text: &str) -> Result<(Secret, Secret), String> {
    let jwt = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("eyJ"))
        .ok_or("no user JWT in the creds file")?;
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .ok_or("no user seed (SU...) in the creds file")?;
    match KeyPair::from_seed(seed) {
        Ok(kp) if kp.key_pair_type() == KeyPairType::User => {}
        _ => return Err("the seed in the creds file is not a valid user seed (SU...)".into()),
    }
    Ok((Secret::new(jwt), Secret::new(seed)))
}

/// Collects values and problems.
struct Reader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    fn get(&self, name: &'static str) -> Option<String> {
        debug_assert!(
            VARIABLES.iter().any(|v| v.name == name),
            "{name} missing from VARIABLES"
        );
        (self.env)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn problem(&mut self, variable: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            variable,
            message: message.into(),
        });
    }

    /// The value or the table default.
    fn get_or_default(&self, name: &'static str) -> String {
        self.get(name)
            .unwrap_or_else(|| default_of(name).to_string())
    }

    fn list(&self, name: &'static str) -> Option<Vec<String>> {
        self.get(name).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
    }

    fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
        &mut self,
        name: &'static str,
        min: T,
        max: T,
    ) -> Option<T> {
        let raw = self.get_or_default(name);
        match raw.parse::<T>() {
            Ok(n) if n >= min && n <= max => Some(n),
            _ => {
                self.problem(
                    name,
                    format!("{raw:?} is not a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, name: &'static str, min: Duration, max: Duration) -> Option<Duration> {
        let raw = self.get_or_default(name);
        match parse_duration(&raw) {
            Some(d) if d >= min && d <= max => Some(d),
            Some(_) => {
                self.problem(
                    name,
                    format!("{raw:?} is out of range ({min:?} to {max:?})"),
                );
                None
            }
            None => {
                self.problem(
                    name,
                    format!("{raw:?} is not a duration like 1h, 30m, 90s or 1h30m"),
                );
                None
            }
        }
    }

    /// A file that must be readable; returns its content.
    fn read_file(&mut self, name: &'static str, path: &Path) -> Option<String> {
        match std::fs::read_to_string(path) {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(name, format!("cannot read {}: {}", path.display(), e));
                None
            }
        }
    }

    /// A path variable whose file must be readable.
    fn file(&mut self, name: &'static str) -> Option<(PathBuf, String)> {
        let path = PathBuf::from(self.get(name)?);
        let content = self.read_file(name, &path)?;
        Some((path, content))
    }

    fn pem_file(&mut self, name: &'static str, marker: &str, what: &str) -> Option<PathBuf> {
        let (path, content) = self.file(name)?;
        if !content.contains("-----BEGIN ") || !content.contains(marker) {
            self.problem(
                name,
                format!("{} does not hold a PEM {what}", path.display()),
            );
            return None;
        }
        Some(path)
    }

    fn seed_file(
        &mut self,
        name: &'static str,
        kind: KeyPairType,
        prefix: &str,
        what: &str,
    ) -> Option<SeedFile> {
        let (path, content) = self.file(name)?;
        let seed = content.trim();
        let public_key = if kind == KeyPairType::Curve {
            XKey::from_seed(seed).ok().map(|k| k.public_key())
        } else {
            KeyPair::from_seed(seed)
                .ok()
                .filter(|k| k.key_pair_type() == kind)
                .map(|k| k.public_key())
        };
        match public_key {
            Some(public_key) if seed.starts_with(prefix) => Some(SeedFile {
                path,
                seed: Secret::new(seed),
                public_key,
            }),
            _ => {
                self.problem(
                    name,
                    format!(
                        "{} does not hold a valid {what} seed ({prefix}...)",
                        path.display()
                    ),
                );
                None
            }
        }
    }
}

fn looks_like_account_key(s: &str) -> bool {
    s.len() == 56
        && s.starts_with('A')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

fn valid_url(s: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|sc| {
        s.strip_prefix(sc)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|rest| {
                let host = rest.split('/').next().unwrap_or("");
                !host.is_empty()
                    && !host.contains('@')
                    && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
            })
    })
}

impl Config {
    /// Reads and validates everything; on failure returns every problem found.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };

        // NATS servers.
        let nats_urls: Vec<String> = r
            .list("NATS_URL")
            .unwrap_or_else(|| vec![default_of("NATS_URL").to_string()]);
        if nats_urls.is_empty() {
            r.problem("NATS_URL", "no URL given");
        }
        for (i, u) in nats_urls.iter().enumerate() {
            if u.contains('@') {
                r.problem(
                    "NATS_URL",
                    format!("URL {} carries credentials; use NATS_USER/NATS_PASSWORD or NATS_TOKEN instead", i + 1),
                );
            } else if !valid_url(u, &["nats", "tls"]) {
                r.problem(
                    "NATS_URL",
                    format!(
                        "URL {} is not a nats://host:port or tls://host:port URL",
                        i + 1
                    ),
                );
            }
        }

        // The service's own login: exactly one method.
        let user = r.get("NATS_USER");
        let password = r.get("NATS_PASSWORD");
        let token = r.get("NATS_TOKEN");
        let nkey_set = r.get("NATS_NKEY_SEED_FILE").is_some();
        let creds_set = r.get("NATS_CREDS_FILE").is_some();
        let methods = [
            user.is_some() || password.is_some(),
            token.is_some(),
            nkey_set,
            creds_set,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if methods > 1 {
            for v in [
                "NATS_USER",
                "NATS_TOKEN",
                "NATS_NKEY_SEED_FILE",
                "NATS_CREDS_FILE",
            ] {
                let set = if v == "NATS_USER" {
                    user.is_some() || password.is_some()
                } else {
                    r.get(v).is_some()
                };
                if set {
                    r.problem(v, "more than one NATS login method is set; use exactly one of NATS_USER+NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED_FILE, NATS_CREDS_FILE");
                }
            }
        }
        let nats_auth = match (user, password, token) {
            (Some(u), Some(p), _) => NatsAuth::UserPassword {
                user: u,
                password: Secret::new(p),
            },
            (Some(_), None, _) => {
                r.problem("NATS_PASSWORD", "required with NATS_USER");
                NatsAuth::None
            }
            (None, Some(_), _) => {
                r.problem("NATS_USER", "required with NATS_PASSWORD");
                NatsAuth::None
            }
            (None, None, Some(t)) => NatsAuth::Token(Secret::new(t)),
            (None, None, None) if nkey_set => r
                .seed_file("NATS_NKEY_SEED_FILE", KeyPairType::User, "SU", "user")
                .map(|s| NatsAuth::NkeySeed {
                    seed: s.seed,
                    public_key: s.public_key,
                })
                .unwrap_or(NatsAuth::None),
            (None, None, None) if creds_set => match r.file("NATS_CREDS_FILE") {
                Some((path, content)) => match parse_creds(&content) {
                    Ok(_) => NatsAuth::Creds { path },
                    Err(e) => {
                        r.problem("NATS_CREDS_FILE", format!("{}: {e}", path.display()));
                        NatsAuth::None
                    }
                },
                None => NatsAuth::None,
            },
            _ => NatsAuth::None,
        };

        // TLS.
        let ca_file = r.pem_file("NATS_TLS_CA_FILE", "CERTIFICATE-----", "certificate");
        let cert = r.pem_file("NATS_TLS_CERT_FILE", "CERTIFICATE-----", "certificate");
        let key = r.pem_file("NATS_TLS_KEY_FILE", "PRIVATE KEY-----", "private key");
        let cert_set = r.get("NATS_TLS_CERT_FILE").is_some();
        let key_set = r.get("NATS_TLS_KEY_FILE").is_some();
        if cert_set && !key_set {
            r.problem("NATS_TLS_KEY_FILE", "required with NATS_TLS_CERT_FILE");
        }
        if key_set && !cert_set {
            r.problem("NATS_TLS_CERT_FILE", "required with NATS_TLS_KEY_FILE");
        }
        let nats_tls = NatsTls {
            ca_file,
            client_cert: cert.zip(key),
        };

        // Signing keys and the target account.
        let signing_key = if r.get("NATS_SIGNING_KEY_FILE").is_none() {
            r.problem(
                "NATS_SIGNING_KEY_FILE",
                "required (the account seed that signs user JWTs)",
            );
            None
        } else {
            r.seed_file(
                "NATS_SIGNING_KEY_FILE",
                KeyPairType::Account,
                "SA",
                "account",
            )
        };
        let account = match r.get("NATS_ACCOUNT") {
            None => {
                r.problem("NATS_ACCOUNT", "required (an account name in config mode, an account public key A... in operator mode)");
                None
            }
            Some(a) if looks_like_account_key(&a) => match KeyPair::from_public_key(&a) {
                Ok(k) if k.key_pair_type() == KeyPairType::Account => {
                    Some(AccountMode::Operator { account: a })
                }
                _ => {
                    r.problem(
                        "NATS_ACCOUNT",
                        "looks like an account public key but its checksum is wrong",
                    );
                    None
                }
            },
            Some(a) if a.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                r.problem(
                    "NATS_ACCOUNT",
                    "an account name must not contain whitespace",
                );
                None
            }
            Some(a) => Some(AccountMode::Config { account: a }),
        };
        let response_signing_key = if r.get("NATS_RESPONSE_SIGNING_KEY_FILE").is_some() {
            if matches!(account, Some(AccountMode::Config { .. })) {
                r.problem("NATS_RESPONSE_SIGNING_KEY_FILE", "only for operator mode (NATS_ACCOUNT is an account name, so config mode is in use)");
            }
            r.seed_file(
                "NATS_RESPONSE_SIGNING_KEY_FILE",
                KeyPairType::Account,
                "SA",
                "account",
            )
        } else {
            None
        };
        let xkey = r.seed_file(
            "NATS_XKEY_SEED_FILE",
            KeyPairType::Curve,
            "SX",
            "curve (xkey)",
        );
        let queue_group = r.get_or_default("NATS_QUEUE_GROUP");
        if subject::validate(&queue_group).is_err() || queue_group.contains(['*', '>']) {
            r.problem(
                "NATS_QUEUE_GROUP",
                format!("{queue_group:?} is not a valid queue group name"),
            );
        }

        // Kubernetes.
        let in_cluster = r.get("KUBERNETES_SERVICE_HOST").is_some();
        let api_url = match (r.get("K8S_API_URL"), r.get("KUBERNETES_SERVICE_HOST")) {
            (Some(u), _) => {
                if !valid_url(&u, &["https", "http"]) {
                    r.problem(
                        "K8S_API_URL",
                        "not an https:// (or http://) URL without credentials",
                    );
                }
                u
            }
            (None, Some(host)) => {
                let port = r.get_or_default("KUBERNETES_SERVICE_PORT");
                if port.parse::<u16>().is_err() {
                    r.problem("KUBERNETES_SERVICE_PORT", format!("{port:?} is not a port"));
                }
                crate::kube::api::in_cluster_url(&host, &port)
            }
            (None, None) => {
                r.problem(
                    "K8S_API_URL",
                    "required out of cluster (KUBERNETES_SERVICE_HOST is not set)",
                );
                String::new()
            }
        };
        let token_file = match r.get("K8S_TOKEN_FILE") {
            Some(_) => r.file("K8S_TOKEN_FILE").map(|(p, _)| p),
            None if in_cluster => {
                let p = PathBuf::from(IN_CLUSTER_TOKEN);
                r.read_file("K8S_TOKEN_FILE", &p).map(|_| p)
            }
            None => None,
        };
        let ca = match r.get("K8S_CA_FILE") {
            Some(_) => r.pem_file("K8S_CA_FILE", "CERTIFICATE-----", "certificate"),
            None if in_cluster => {
                let p = PathBuf::from(IN_CLUSTER_CA);
                r.read_file("K8S_CA_FILE", &p).map(|_| p)
            }
            None => None,
        };
        let namespace = r.get("K8S_NAMESPACE");
        if let Some(ns) = &namespace {
            if !policy::is_dns_label(ns) {
                r.problem("K8S_NAMESPACE", format!("{ns:?} is not a namespace name"));
            }
        }
        let label_selector = r.get("K8S_LABEL_SELECTOR");
        if label_selector
            .as_deref()
            .is_some_and(|s| s.chars().any(|c| c.is_control()))
        {
            r.problem("K8S_LABEL_SELECTOR", "contains control characters");
        }

        // Tokens.
        let issuers = r.list("JWT_ISSUER");
        match &issuers {
            Some(list) if list.is_empty() => r.problem("JWT_ISSUER", "no issuer given"),
            Some(list) if list.iter().any(|i| i.chars().any(char::is_whitespace)) => {
                r.problem("JWT_ISSUER", "an issuer must not contain whitespace")
            }
            Some(_) => {}
            None if !in_cluster => r.problem(
                "JWT_ISSUER",
                "required out of cluster (in cluster it is discovered from the API server)",
            ),
            None => {}
        }
        let audiences = r
            .list("JWT_AUDIENCE")
            .unwrap_or_else(|| vec![default_of("JWT_AUDIENCE").to_string()]);
        if audiences.is_empty() {
            r.problem("JWT_AUDIENCE", "no audience given");
        }
        let jwks = match (r.get("JWKS_URL"), r.get("JWKS_FILE")) {
            (Some(_), Some(_)) => {
                r.problem("JWKS_URL", "set at most one of JWKS_URL and JWKS_FILE");
                r.problem("JWKS_FILE", "set at most one of JWKS_URL and JWKS_FILE");
                JwksSource::Discovery
            }
            (Some(u), None) => {
                if !valid_url(&u, &["https", "http"]) {
                    r.problem(
                        "JWKS_URL",
                        "not an https:// (or http://) URL without credentials",
                    );
                }
                JwksSource::Url(u)
            }
            (None, Some(_)) => match r.file("JWKS_FILE") {
                Some((path, content)) => {
                    let ok = serde_json::from_str::<serde_json::Value>(&content)
                        .ok()
                        .is_some_and(|v| v.get("keys").is_some_and(|k| k.is_array()));
                    if !ok {
                        r.problem(
                            "JWKS_FILE",
                            format!(
                                "{} is not a JWKS JSON document with a \"keys\" array",
                                path.display()
                            ),
                        );
                    }
                    JwksSource::File(path)
                }
                None => JwksSource::Discovery,
            },
            (None, None) if in_cluster => JwksSource::ApiServer,
            (None, None) => JwksSource::Discovery,
        };
        let allow_legacy_tokens = {
            let raw = r.get_or_default("ALLOW_LEGACY_TOKENS");
            parse_bool(&raw).unwrap_or_else(|| {
                r.problem(
                    "ALLOW_LEGACY_TOKENS",
                    format!("{raw:?} is not true or false"),
                );
                false
            })
        };
        let token_leeway = r.duration("TOKEN_LEEWAY", Duration::ZERO, Duration::from_secs(300));

        // Policy.
        let annotation_prefix = r.get_or_default("SA_ANNOTATION_PREFIX");
        match annotation_prefix.strip_suffix('/') {
            Some(domain) if policy::is_dns_subdomain(domain) => {}
            _ => r.problem(
                "SA_ANNOTATION_PREFIX",
                format!(
                    "{annotation_prefix:?} must be a DNS subdomain followed by '/', like nats.io/"
                ),
            ),
        }
        let inbox = {
            let raw = r.get_or_default("INBOX_POLICY");
            InboxPolicy::parse(&raw).unwrap_or_else(|| {
                r.problem("INBOX_POLICY", format!("{raw:?} is not private or shared"));
                InboxPolicy::Private
            })
        };
        let max_session = r.duration(
            "MAX_SESSION",
            Duration::from_secs(1),
            Duration::from_secs(7 * 24 * 3600),
        );
        let max_responses = r.number::<u32>("ALLOW_RESPONSES", 0, 1_000_000);
        let deny_subjects = r.list("DENY_SUBJECTS").unwrap_or_else(|| {
            policy::DEFAULT_DENY_SUBJECTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        if deny_subjects.is_empty() {
            r.problem("DENY_SUBJECTS", "no subject given");
        }
        for d in &deny_subjects {
            if let Err(e) = subject::validate(d) {
                r.problem("DENY_SUBJECTS", format!("{d:?}: {e}"));
            }
        }

        // Service.
        let callout_workers = r.number::<usize>("CALLOUT_WORKERS", 1, 256);
        let callout_queue = r.number::<usize>("CALLOUT_QUEUE", 1, 65536);
        let http_addr = {
            let raw = r.get_or_default("HTTP_ADDR");
            raw.parse::<SocketAddr>().ok().or_else(|| {
                r.problem(
                    "HTTP_ADDR",
                    format!("{raw:?} is not an address like 0.0.0.0:8080"),
                );
                None
            })
        };
        let log_level = r.get_or_default("LOG_LEVEL");
        if crate::logging::Filter::parse(&log_level).is_err() {
            r.problem(
                "LOG_LEVEL",
                format!("{log_level:?} is not a level (off, error, warn, info, debug, trace) or module=level list"),
            );
        }
        let log_format = match r.get("LOG_FORMAT").as_deref() {
            None => None,
            Some("json") => Some(LogFormat::Json),
            Some("text") => Some(LogFormat::Text),
            Some(other) => {
                r.problem("LOG_FORMAT", format!("{other:?} is not json or text"));
                None
            }
        };
        let log_admissions = match r.get_or_default("LOG_ADMISSIONS").as_str() {
            "info" => AdmissionLogLevel::Info,
            "debug" => AdmissionLogLevel::Debug,
            other => {
                r.problem("LOG_ADMISSIONS", format!("{other:?} is not info or debug"));
                AdmissionLogLevel::Info
            }
        };

        let problems = std::mem::take(&mut r.problems);
        match (
            signing_key,
            account,
            token_leeway,
            max_session,
            max_responses,
            callout_workers,
            callout_queue,
            http_addr,
        ) {
            (
                Some(signing_key),
                Some(account),
                Some(token_leeway),
                Some(max_session),
                Some(max_responses),
                Some(callout_workers),
                Some(callout_queue),
                Some(http_addr),
            ) if problems.is_empty() => Ok(Config {
                nats_urls,
                nats_auth,
                nats_tls,
                signing_key,
                account,
                response_signing_key,
                xkey,
                queue_group,
                issuers,
                audiences,
                jwks,
                kube: KubeSettings {
                    api_url,
                    token_file,
                    ca_file: ca,
                    namespace,
                    label_selector,
                    in_cluster,
                },
                policy: PolicySettings {
                    annotation_prefix,
                    deny_subjects,
                    inbox,
                    max_responses,
                },
                max_session,
                allow_legacy_tokens,
                token_leeway,
                callout_workers,
                callout_queue,
                http_addr,
                log_level,
                log_format,
                log_admissions,
            }),
            _ => {
                debug_assert!(!problems.is_empty());
                Err(ConfigError { problems })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory with test-only key files (generated, never real secrets).
    struct Files {
        dir: PathBuf,
        account_seed: String,
        user_seed: String,
        xkey_seed: String,
    }

    impl Files {
        fn new() -> Files {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "cfgtest-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let account_seed = KeyPair::new_account().seed().unwrap();
            let user_seed = KeyPair::new_user().seed().unwrap();
            let xkey_seed = XKey::new().seed().unwrap();
            let f = Files {
                dir,
                account_seed,
                user_seed,
                xkey_seed,
            };
            f.write("account.seed", &format!("{}\n", f.account_seed));
            f.write("account2.seed", &KeyPair::new_account().seed().unwrap());
            f.write("user.seed", &f.user_seed);
            f.write("x.seed", &f.xkey_seed);
            f.write(
                "svc.creds",
                &format!(
                    "-----BEGIN NATS USER JWT-----\neyJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                    f.user_seed
                ),
            );
            let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
            f.write("ca.pem", cert);
            f.write("cert.pem", cert);
            f.write(
                "key.pem",
                "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
            );
            f.write("jwks.json", r#"{"keys":[]}"#);
            f.write("token", "k8s-token-value");
            f.write("garbage", "not a seed");
            f
        }
        fn write(&self, name: &str, content: &str) {
            std::fs::write(self.dir.join(name), content).unwrap();
        }
        fn p(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }
        /// The smallest valid out-of-cluster environment.
        fn minimal(&self) -> HashMap<&'static str, String> {
            HashMap::from([
                ("NATS_SIGNING_KEY_FILE", self.p("account.seed")),
                ("NATS_ACCOUNT", "APP".to_string()),
                ("JWT_ISSUER", "https://issuer.example".to_string()),
                ("K8S_API_URL", "https://127.0.0.1:6443".to_string()),
            ])
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    fn load(env: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_env(&|k| env.get(k).cloned())
    }

    fn problems_for(e: &ConfigError, var: &str) -> Vec<String> {
        e.problems
            .iter()
            .filter(|p| p.variable == var)
            .map(|p| p.message.clone())
            .collect()
    }

    #[test]
    fn minimal_environment_gets_every_default() {
        let f = Files::new();
        let c = load(&f.minimal()).unwrap();
        assert_eq!(c.nats_urls, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(c.nats_auth, NatsAuth::None);
        assert_eq!(c.nats_tls, NatsTls::default());
        assert_eq!(c.signing_key.seed.expose(), f.account_seed);
        assert!(c.signing_key.public_key.starts_with('A'));
        assert_eq!(
            c.account,
            AccountMode::Config {
                account: "APP".into()
            }
        );
        assert_eq!(c.response_signing_key, None);
        assert_eq!(c.xkey, None);
        assert_eq!(c.queue_group, "nats-k8s-callout");
        assert_eq!(c.issuers, Some(vec!["https://issuer.example".to_string()]));
        assert_eq!(c.audiences, vec!["nats"]);
        assert_eq!(c.jwks, JwksSource::Discovery);
        assert_eq!(c.kube.api_url, "https://127.0.0.1:6443");
        assert!(!c.kube.in_cluster);
        assert_eq!(c.kube.token_file, None);
        assert_eq!(c.policy, PolicySettings::default());
        assert_eq!(c.max_session, Duration::from_secs(3600));
        assert!(!c.allow_legacy_tokens);
        assert_eq!(c.token_leeway, Duration::from_secs(60));
        assert_eq!((c.callout_workers, c.callout_queue), (4, 256));
        assert_eq!(c.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.log_level, "info");
        assert_eq!(c.log_format, None);
        assert_eq!(c.log_format(true), LogFormat::Text);
        assert_eq!(c.log_format(false), LogFormat::Json);
        assert_eq!(c.log_admissions, AdmissionLogLevel::Info);
    }

    #[test]
    fn every_variable_set_to_a_non_default_value() {
        let f = Files::new();
        let op = KeyPair::new_account().public_key();
        let env: HashMap<&'static str, String> = HashMap::from([
            ("NATS_URL", "tls://a:4222, nats://b:4223 ,".to_string()),
            ("NATS_CREDS_FILE", f.p("svc.creds")),
            ("NATS_TLS_CA_FILE", f.p("ca.pem")),
            ("NATS_TLS_CERT_FILE", f.p("cert.pem")),
            ("NATS_TLS_KEY_FILE", f.p("key.pem")),
            ("NATS_SIGNING_KEY_FILE", f.p("account.seed")),
            ("NATS_ACCOUNT", op.clone()),
            ("NATS_RESPONSE_SIGNING_KEY_FILE", f.p("account2.seed")),
            ("NATS_XKEY_SEED_FILE", f.p("x.seed")),
            ("NATS_QUEUE_GROUP", "q1".to_string()),
            ("JWT_ISSUER", "https://a,https://b".to_string()),
            ("JWT_AUDIENCE", "nats,other".to_string()),
            ("JWKS_FILE", f.p("jwks.json")),
            ("K8S_API_URL", "https://api:6443".to_string()),
            ("K8S_TOKEN_FILE", f.p("token")),
            ("K8S_CA_FILE", f.p("ca.pem")),
            ("K8S_NAMESPACE", "shop".to_string()),
            ("K8S_LABEL_SELECTOR", "nats=yes".to_string()),
            ("SA_ANNOTATION_PREFIX", "nats.example.com/".to_string()),
            ("INBOX_POLICY", "shared".to_string()),
            ("MAX_SESSION", "1h30m".to_string()),
            ("ALLOW_RESPONSES", "3".to_string()),
            ("DENY_SUBJECTS", "$SYS.>, bank.>".to_string()),
            ("ALLOW_LEGACY_TOKENS", "true".to_string()),
            ("TOKEN_LEEWAY", "300s".to_string()),
            ("CALLOUT_WORKERS", "8".to_string()),
            ("CALLOUT_QUEUE", "1024".to_string()),
            ("HTTP_ADDR", "127.0.0.1:9090".to_string()),
            ("LOG_LEVEL", "warn,nats_k8s_callout=debug".to_string()),
            ("LOG_FORMAT", "text".to_string()),
            ("LOG_ADMISSIONS", "debug".to_string()),
        ]);
        let c = load(&env).unwrap();
        assert_eq!(c.nats_urls, vec!["tls://a:4222", "nats://b:4223"]);
        assert_eq!(
            c.nats_auth,
            NatsAuth::Creds {
                path: f.dir.join("svc.creds")
            }
        );
        assert_eq!(c.nats_tls.ca_file, Some(f.dir.join("ca.pem")));
        assert_eq!(
            c.nats_tls.client_cert,
            Some((f.dir.join("cert.pem"), f.dir.join("key.pem")))
        );
        assert_eq!(c.account, AccountMode::Operator { account: op });
        assert!(c.response_signing_key.is_some());
        assert!(c.xkey.as_ref().unwrap().public_key.starts_with('X'));
        assert_eq!(c.xkey.as_ref().unwrap().seed.expose(), f.xkey_seed);
        assert_eq!(c.queue_group, "q1");
        assert_eq!(c.issuers.as_ref().unwrap().len(), 2);
        assert_eq!(c.audiences, vec!["nats", "other"]);
        assert_eq!(c.jwks, JwksSource::File(f.dir.join("jwks.json")));
        assert_eq!(c.kube.token_file, Some(f.dir.join("token")));
        assert_eq!(c.kube.ca_file, Some(f.dir.join("ca.pem")));
        assert_eq!(c.kube.namespace.as_deref(), Some("shop"));
        assert_eq!(c.kube.label_selector.as_deref(), Some("nats=yes"));
        assert_eq!(c.policy.annotation_prefix, "nats.example.com/");
        assert_eq!(c.policy.inbox, InboxPolicy::Shared);
        assert_eq!(c.policy.max_responses, 3);
        assert_eq!(c.policy.deny_subjects, vec!["$SYS.>", "bank.>"]);
        assert_eq!(c.max_session, Duration::from_secs(5400));
        assert!(c.allow_legacy_tokens);
        assert_eq!(c.token_leeway, Duration::from_secs(300));
        assert_eq!((c.callout_workers, c.callout_queue), (8, 1024));
        assert_eq!(c.http_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.log_level, "warn,nats_k8s_callout=debug");
        assert_eq!(c.log_format(false), LogFormat::Text);
        assert_eq!(c.log_admissions, AdmissionLogLevel::Debug);
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_variable() {
        let f = Files::new();
        let env: HashMap<&'static str, String> = HashMap::from([
            ("NATS_URL", "http://x".to_string()),
            ("NATS_USER", "svc".to_string()),
            ("NATS_TLS_CERT_FILE", f.p("cert.pem")),
            ("NATS_XKEY_SEED_FILE", f.p("account.seed")),
            ("NATS_QUEUE_GROUP", "a b".to_string()),
            ("JWKS_URL", "https://k".to_string()),
            ("JWKS_FILE", f.p("jwks.json")),
            ("K8S_NAMESPACE", "Not_A_Label".to_string()),
            ("SA_ANNOTATION_PREFIX", "nats.io".to_string()),
            ("INBOX_POLICY", "open".to_string()),
            ("MAX_SESSION", "60".to_string()),
            ("ALLOW_RESPONSES", "-1".to_string()),
            ("DENY_SUBJECTS", "$SYS.>,a..b".to_string()),
            ("ALLOW_LEGACY_TOKENS", "maybe".to_string()),
            ("TOKEN_LEEWAY", "301s".to_string()),
            ("CALLOUT_WORKERS", "0".to_string()),
            ("CALLOUT_QUEUE", "many".to_string()),
            ("HTTP_ADDR", "8080".to_string()),
            ("LOG_LEVEL", "loud".to_string()),
            ("LOG_FORMAT", "xml".to_string()),
            ("LOG_ADMISSIONS", "warn".to_string()),
        ]);
        let e = load(&env).unwrap_err();
        let expected = [
            "NATS_URL",
            "NATS_PASSWORD",
            "NATS_TLS_KEY_FILE",
            "NATS_SIGNING_KEY_FILE",
            "NATS_ACCOUNT",
            "NATS_XKEY_SEED_FILE",
            "NATS_QUEUE_GROUP",
            "JWT_ISSUER",
            "JWKS_URL",
            "JWKS_FILE",
            "K8S_API_URL",
            "K8S_NAMESPACE",
            "SA_ANNOTATION_PREFIX",
            "INBOX_POLICY",
            "MAX_SESSION",
            "ALLOW_RESPONSES",
            "DENY_SUBJECTS",
            "ALLOW_LEGACY_TOKENS",
            "TOKEN_LEEWAY",
            "CALLOUT_WORKERS",
            "CALLOUT_QUEUE",
            "HTTP_ADDR",
            "LOG_LEVEL",
            "LOG_FORMAT",
            "LOG_ADMISSIONS",
        ];
        for v in expected {
            assert!(!problems_for(&e, v).is_empty(), "no problem for {v}:\n{e}");
        }
        assert_eq!(e.problems.len(), expected.len(), "{e}");
        let text = e.to_string();
        assert_eq!(text.lines().count(), expected.len());
        assert!(text
            .contains("NATS_SIGNING_KEY_FILE: required (the account seed that signs user JWTs)"));
        assert!(
            text.contains("MAX_SESSION: \"60\" is not a duration"),
            "{text}"
        );
        assert!(
            text.contains("DENY_SUBJECTS: \"a..b\": empty token"),
            "{text}"
        );
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug_output() {
        let f = Files::new();
        let mut env = f.minimal();
        env.insert("NATS_USER", "svc".into());
        env.insert("NATS_PASSWORD", "hunter2-password".into());
        let c = load(&env).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-password"), "{dbg}");
        assert!(!dbg.contains(&f.account_seed), "{dbg}");
        assert!(dbg.contains("[REDACTED]"));
        match &c.nats_auth {
            NatsAuth::UserPassword { user, password } => {
                assert_eq!(user, "svc");
                assert_eq!(password.expose(), "hunter2-password");
            }
            other => panic!("{other:?}"),
        }

        // Conflicting logins, credentials in a URL, a seed of the wrong kind.
        env.insert("NATS_TOKEN", "tok-s3cret".into());
        env.insert("NATS_URL", "nats://u:url-s3cret@h:4222".into());
        env.insert("NATS_XKEY_SEED_FILE", f.p("user.seed"));
        env.insert("JWKS_URL", "https://k/jwks?access=q-s3cret x".into());
        let e = load(&env).unwrap_err();
        let text = format!("{e}\n{e:?}");
        for s in [
            "hunter2-password",
            "tok-s3cret",
            "url-s3cret",
            "q-s3cret",
            f.user_seed.as_str(),
            f.account_seed.as_str(),
        ] {
            assert!(!text.contains(s), "{s} leaked:\n{text}");
        }
        assert!(!problems_for(&e, "NATS_TOKEN").is_empty());
        assert!(!problems_for(&e, "NATS_USER").is_empty());
        assert!(!problems_for(&e, "NATS_URL").is_empty());
        assert!(!problems_for(&e, "NATS_XKEY_SEED_FILE").is_empty());
        assert!(!problems_for(&e, "JWKS_URL").is_empty());
    }

    #[test]
    fn each_login_method_alone_works() {
        let f = Files::new();
        let cases: [(&[(&'static str, String)], &str); 4] = [
            (
                &[("NATS_USER", "u".into()), ("NATS_PASSWORD", "p".into())],
                "user",
            ),
            (&[("NATS_TOKEN", "t".into())], "token"),
            (&[("NATS_NKEY_SEED_FILE", f.p("user.seed"))], "nkey"),
            (&[("NATS_CREDS_FILE", f.p("svc.creds"))], "creds"),
        ];
        for (vars, what) in cases {
            let mut env = f.minimal();
            env.extend(vars.iter().cloned());
            let c = load(&env).unwrap_or_else(|e| panic!("{what}: {e}"));
            let ok = match (&c.nats_auth, what) {
                (NatsAuth::UserPassword { .. }, "user") => true,
                (NatsAuth::Token(t), "token") => t.expose() == "t",
                (NatsAuth::NkeySeed { public_key, seed }, "nkey") => {
                    public_key.starts_with('U') && seed.expose() == f.user_seed
                }
                (NatsAuth::Creds { .. }, "creds") => true,
                _ => false,
            };
            assert!(ok, "{what}: {:?}", c.nats_auth);
        }
        let mut env = f.minimal();
        env.insert("NATS_PASSWORD", "p".into());
        let e = load(&env).unwrap_err();
        assert_eq!(
            problems_for(&e, "NATS_USER"),
            vec!["required with NATS_PASSWORD"]
        );
        let mut env = f.minimal();
        env.insert("NATS_NKEY_SEED_FILE", f.p("user.seed"));
        env.insert("NATS_CREDS_FILE", f.p("svc.creds"));
        let e = load(&env).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
    }

    #[test]
    fn seed_files_must_exist_parse_and_have_the_right_prefix() {
        let f = Files::new();
        for (var, file) in [
            ("NATS_SIGNING_KEY_FILE", "user.seed"),
            ("NATS_SIGNING_KEY_FILE", "x.seed"),
            ("NATS_SIGNING_KEY_FILE", "garbage"),
            ("NATS_SIGNING_KEY_FILE", "missing"),
            ("NATS_XKEY_SEED_FILE", "account.seed"),
            ("NATS_XKEY_SEED_FILE", "garbage"),
            ("NATS_NKEY_SEED_FILE", "account.seed"),
            ("NATS_NKEY_SEED_FILE", "x.seed"),
            ("NATS_CREDS_FILE", "account.seed"),
            ("NATS_CREDS_FILE", "missing"),
        ] {
            let mut env = f.minimal();
            env.insert(var, f.p(file));
            let e = load(&env).unwrap_err();
            let msgs = problems_for(&e, var);
            assert_eq!(msgs.len(), 1, "{var}={file}: {e}");
            if file == "missing" {
                assert!(msgs[0].contains("cannot read"), "{}", msgs[0]);
            }
        }
        // A corrupted checksum is refused too.
        let mut bad = f.account_seed.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        f.write("bad.seed", &bad);
        let mut env = f.minimal();
        env.insert("NATS_SIGNING_KEY_FILE", f.p("bad.seed"));
        let e = load(&env).unwrap_err();
        assert!(!e.to_string().contains(&bad));
        assert_eq!(problems_for(&e, "NATS_SIGNING_KEY_FILE").len(), 1);
    }

    #[test]
    fn account_mode_follows_the_form_of_nats_account() {
        let f = Files::new();
        let mut env = f.minimal();
        let key = KeyPair::new_account().public_key();
        env.insert("NATS_ACCOUNT", key.clone());
        assert_eq!(
            load(&env).unwrap().account,
            AccountMode::Operator {
                account: key.clone()
            }
        );
        let mut broken = key.clone();
        broken.replace_range(10..11, if &key[10..11] == "B" { "C" } else { "B" });
        env.insert("NATS_ACCOUNT", broken);
        let e = load(&env).unwrap_err();
        assert!(problems_for(&e, "NATS_ACCOUNT")[0].contains("checksum"));
        let user_key = KeyPair::new_user().public_key();
        env.insert("NATS_ACCOUNT", user_key.clone());
        // A user key is just an odd account name in config mode.
        assert_eq!(
            load(&env).unwrap().account,
            AccountMode::Config { account: user_key }
        );
        env.insert("NATS_ACCOUNT", "MY APP".into());
        assert!(load(&env).is_err());
        env.insert("NATS_ACCOUNT", "APP".into());
        env.insert("NATS_RESPONSE_SIGNING_KEY_FILE", f.p("account2.seed"));
        let e = load(&env).unwrap_err();
        assert!(problems_for(&e, "NATS_RESPONSE_SIGNING_KEY_FILE")[0].contains("operator mode"));
    }

    #[test]
    fn in_cluster_defaults() {
        let f = Files::new();
        let env: HashMap<&'static str, String> = HashMap::from([
            ("NATS_SIGNING_KEY_FILE", f.p("account.seed")),
            ("NATS_ACCOUNT", "APP".to_string()),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1".to_string()),
            ("K8S_TOKEN_FILE", f.p("token")),
            ("K8S_CA_FILE", f.p("ca.pem")),
        ]);
        let c = load(&env).unwrap();
        assert!(c.kube.in_cluster);
        assert_eq!(c.kube.api_url, "https://10.96.0.1:443");
        assert_eq!(c.issuers, None, "discovered from the API server");
        assert_eq!(c.jwks, JwksSource::ApiServer);
        let mut env6 = env.clone();
        env6.insert("KUBERNETES_SERVICE_HOST", "fd00::1".into());
        env6.insert("KUBERNETES_SERVICE_PORT", "6443".into());
        assert_eq!(load(&env6).unwrap().kube.api_url, "https://[fd00::1]:6443");
        let mut url = env.clone();
        url.insert("JWKS_URL", "https://keys.example/jwks".into());
        assert_eq!(
            load(&url).unwrap().jwks,
            JwksSource::Url("https://keys.example/jwks".into())
        );
        // Out of cluster, the issuer and API URL are required.
        let e = load(&HashMap::from([
            ("NATS_SIGNING_KEY_FILE", f.p("account.seed")),
            ("NATS_ACCOUNT", "APP".to_string()),
        ]))
        .unwrap_err();
        assert!(!problems_for(&e, "JWT_ISSUER").is_empty());
        assert!(!problems_for(&e, "K8S_API_URL").is_empty());
        assert_eq!(e.problems.len(), 2, "{e}");
    }

    #[test]
    fn tls_and_jwks_files_are_checked() {
        let f = Files::new();
        let mut env = f.minimal();
        env.insert("NATS_TLS_KEY_FILE", f.p("key.pem"));
        env.insert("NATS_TLS_CA_FILE", f.p("key.pem"));
        env.insert("JWKS_FILE", f.p("garbage"));
        env.insert("K8S_CA_FILE", f.p("missing"));
        let e = load(&env).unwrap_err();
        assert!(!problems_for(&e, "NATS_TLS_CERT_FILE").is_empty());
        assert!(problems_for(&e, "NATS_TLS_CA_FILE")[0].contains("PEM certificate"));
        assert!(problems_for(&e, "JWKS_FILE")[0].contains("JWKS"));
        assert!(problems_for(&e, "K8S_CA_FILE")[0].contains("cannot read"));
        assert_eq!(e.problems.len(), 4, "{e}");
        let text = e.to_string();
        assert!(!text.contains("MIIE"), "file content leaked: {text}");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let f = Files::new();
        let mut env = f.minimal();
        env.insert("NATS_URL", "  ".into());
        env.insert("INBOX_POLICY", "".into());
        let c = load(&env).unwrap();
        assert_eq!(c.nats_urls, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(c.policy.inbox, InboxPolicy::Private);
    }

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        for (text, want) in [
            ("1h", Some(s(3600))),
            ("30m", Some(s(1800))),
            ("90s", Some(s(90))),
            ("1h30m", Some(s(5400))),
            ("500ms", Some(Duration::from_millis(500))),
            ("0s", Some(s(0))),
            ("60", None),
            ("", None),
            ("1d", None),
            ("h", None),
            ("1h 30m", None),
            ("-1s", None),
            ("1.5h", None),
            ("99999999999999h", None),
        ] {
            assert_eq!(parse_duration(text), want, "{text:?}");
        }
    }

    /// Every variable the loader reads is in the table, and every table entry is read.
    #[test]
    fn the_table_lists_exactly_the_variables_read() {
        let f = Files::new();
        let out_of_cluster = f.minimal();
        let mut in_cluster = f.minimal();
        in_cluster.insert("KUBERNETES_SERVICE_HOST", "10.0.0.1".into());
        in_cluster.remove("K8S_API_URL");
        let read = std::sync::Mutex::new(std::collections::BTreeSet::new());
        for env in [&out_of_cluster, &in_cluster] {
            let _ = Config::from_env(&|k| {
                read.lock().unwrap().insert(k.to_string());
                env.get(k).cloned()
            });
        }
        let read = read.into_inner().unwrap();
        let table: std::collections::BTreeSet<String> =
            VARIABLES.iter().map(|v| v.name.to_string()).collect();
        assert_eq!(read, table);
        assert_eq!(table.len(), VARIABLES.len(), "duplicate names in the table");
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let h = help_text();
        for v in VARIABLES {
            assert!(h.contains(v.name), "{}", v.name);
            if !v.default.is_empty() {
                assert!(
                    h.contains(&format!("[default: {}]", v.default)),
                    "{}",
                    v.name
                );
            }
        }
        // The defaults in the table are the ones the loader applies.
        assert_eq!(
            default_of("DENY_SUBJECTS"),
            policy::DEFAULT_DENY_SUBJECTS.join(",")
        );
        assert_eq!(
            default_of("SA_ANNOTATION_PREFIX"),
            policy::DEFAULT_ANNOTATION_PREFIX
        );
        assert_eq!(
            default_of("ALLOW_RESPONSES"),
            policy::DEFAULT_MAX_RESPONSES.to_string()
        );
    }

    #[test]
    fn configuration_doc_holds_the_generated_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
        assert!(
            doc.contains(&markdown_table()),
            "docs/configuration.md is out of date; paste this table:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn creds_parsing() {
        let seed = KeyPair::new_user().seed().unwrap();
        let text = format!("-----BEGIN NATS USER JWT-----\neyJx.y.z\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n");
        let (jwt, s) = parse_creds(&text).unwrap();
        assert_eq!(jwt.expose(), "eyJx.y.z");
        assert_eq!(s.expose(), seed);
        assert!(parse_creds("eyJx.y.z\n").is_err());
        let acct = KeyPair::new_account().seed().unwrap();
        let e = parse_creds(&format!("eyJx.y.z\nSU{}\n", &acct[2..])).unwrap_err();
        assert!(!e.contains(&acct[2..]));
    }
}
