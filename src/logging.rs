//! Structured logs: a `log::Log` implementation writing one line per record, either one JSON
//! object a line (`LOG_FORMAT=json`: `ts`, `level`, `target`, `msg`, then every kv field) or a
//! human-readable line for a terminal (`LOG_FORMAT=text`). `LOG_LEVEL` is a filter such as
//! `info` or `info,nats_k8s_callout::kube=debug` (the most specific target prefix wins).
//!
//! Defence in depth: every final line goes through [`redact`], which masks anything that looks
//! like a JWT, an nkey seed, a `Bearer` credential, URL user info, or the value of a
//! password/token-ish field. Fields whose key is sensitive are masked before formatting too.
//!
//! This module must never be the only protection: secrets are carried in `Secret` and are
//! never passed to a log macro in the first place. It never panics on a log call and never
//! blocks on anything but its own output sink.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::{Arc, Mutex};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// Errors from parsing the logging configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// `LOG_LEVEL` does not parse (the offending directive).
    BadLevel(String),
    /// `LOG_FORMAT` is neither `json` nor `text`.
    BadFormat(String),
    /// A global logger was already installed.
    AlreadyInstalled,
}

impl LogError {
    pub fn code(&self) -> &'static str {
        match self {
            LogError::BadLevel(_) => "bad_log_level",
            LogError::BadFormat(_) => "bad_log_format",
            LogError::AlreadyInstalled => "logger_already_installed",
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::BadLevel(d) => write!(f, "LOG_LEVEL: cannot parse directive {d:?}"),
            LogError::BadFormat(v) => write!(f, "LOG_FORMAT must be json or text, not {v:?}"),
            LogError::AlreadyInstalled => f.write_str("a logger is already installed"),
        }
    }
}

impl std::error::Error for LogError {}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, LogError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "text" | "" => Ok(Format::Text),
            _ => Err(LogError::BadFormat(s.to_string())),
        }
    }
}

/// A level filter by target prefix: `info`, `warn,nats_k8s_callout::kube=debug`, `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    default: LevelFilter,
    /// (target prefix, level), longest prefix first.
    directives: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// `level` or `target=level` directives, comma-separated (no empty ones); a target is a
    /// module path (`[A-Za-z0-9_:]`), a level one of `off`..`trace` in any case.
    pub fn parse(spec: &str) -> Result<Filter, LogError> {
        let mut default = LevelFilter::Info;
        let mut directives = Vec::new();
        for part in spec.split(',').map(str::trim) {
            match part.split_once('=') {
                Some((target, level)) => {
                    let target = target.trim();
                    let level = level
                        .trim()
                        .parse::<LevelFilter>()
                        .map_err(|_| LogError::BadLevel(part.to_string()))?;
                    let module_path = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
                    if target.is_empty() || !target.chars().all(module_path) {
                        return Err(LogError::BadLevel(part.to_string()));
                    }
                    directives.push((target.to_string(), level));
                }
                None => {
                    default = part
                        .parse::<LevelFilter>()
                        .map_err(|_| LogError::BadLevel(part.to_string()))?;
                }
            }
        }
        directives.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        Ok(Filter {
            default,
            directives,
        })
    }

    /// The level that applies to `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.directives
            .iter()
            .find(|(prefix, _)| {
                target == prefix
                    || (target.starts_with(prefix.as_str())
                        && target[prefix.len()..].starts_with("::"))
            })
            .map(|(_, l)| *l)
            .unwrap_or(self.default)
    }

    pub fn enabled(&self, target: &str, level: Level) -> bool {
        level <= self.level_for(target)
    }

    /// The most verbose level any target may use (for `log::set_max_level`).
    pub fn max_level(&self) -> LevelFilter {
        self.directives
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, std::cmp::max)
    }
}

/// A sink that keeps everything written to it, for tests. Clones share the buffer.
#[derive(Debug, Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<u8>>>);

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }
    /// Everything written so far.
    pub fn contents(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Write for MemorySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The logger. Most code never sees it: [`init`] installs one for the process.
pub struct Logger {
    filter: Filter,
    format: Format,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Logger {
    pub fn new(filter: Filter, format: Format, sink: Box<dyn Write + Send>) -> Logger {
        Logger {
            filter,
            format,
            sink: Mutex::new(sink),
        }
    }

    /// The final, redacted line for `record` at `unix_millis` (no trailing newline).
    pub fn format_record(&self, record: &Record<'_>, unix_millis: u64) -> String {
        let mut fields = Fields(Vec::new());
        let _ = record.key_values().visit(&mut fields);
        let msg = record.args().to_string();
        let ts = rfc3339_millis(unix_millis);
        let line = match self.format {
            Format::Json => {
                // Built by hand to keep the key order: ts, level, target, msg, then fields.
                let mut s = String::with_capacity(160);
                s.push_str("{\"ts\":");
                push_json_str(&mut s, &ts);
                s.push_str(",\"level\":");
                push_json_str(&mut s, record.level().as_str());
                s.push_str(",\"target\":");
                push_json_str(&mut s, record.target());
                s.push_str(",\"msg\":");
                push_json_str(&mut s, &msg);
                let mut seen: Vec<String> = Vec::new();
                for (k, v) in fields.0 {
                    // A field never overwrites the fixed keys, nor an earlier field.
                    let k = if matches!(k.as_str(), "ts" | "level" | "target" | "msg") {
                        format!("field_{k}")
                    } else {
                        k
                    };
                    if seen.contains(&k) {
                        continue;
                    }
                    s.push(',');
                    push_json_str(&mut s, &k);
                    s.push(':');
                    match v {
                        FieldValue::Str(v) => push_json_str(&mut s, &v),
                        FieldValue::Json(j) => s.push_str(&j.to_string()),
                    }
                    seen.push(k);
                }
                s.push('}');
                s
            }
            Format::Text => {
                let mut s = String::with_capacity(128);
                let _ = write!(
                    s,
                    "{ts} {:<5} {}: {}",
                    record.level(),
                    record.target(),
                    escape_text(&msg)
                );
                for (k, v) in fields.0 {
                    let v = match v {
                        FieldValue::Str(s) => s,
                        FieldValue::Json(j) => j.to_string(),
                    };
                    if v.is_empty()
                        || v.contains(|c: char| c.is_whitespace() || c == '"' || c.is_control())
                    {
                        // JSON quoting escapes C0 controls; DEL, C1 and line separators next.
                        let q = serde_json::Value::String(v).to_string();
                        let _ = write!(s, " {k}={}", escape_text(&q));
                    } else {
                        let _ = write!(s, " {k}={v}");
                    }
                }
                s
            }
        };
        redact(&line)
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata.target(), metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = self.format_record(record, crate::clock::unix_now_ms());
        line.push('\n');
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let _ = sink.write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = self.sink.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

/// Installs the process logger writing to stderr. `level` is a `LOG_LEVEL` spec, `format`
/// `json` or `text`.
pub fn init(level: &str, format: &str) -> Result<(), LogError> {
    init_with_sink(level, format, Box::new(std::io::stderr()))
}

/// Like [`init`] but writing to `sink` (tests pass a [`MemorySink`]).
pub fn init_with_sink(
    level: &str,
    format: &str,
    sink: Box<dyn Write + Send>,
) -> Result<(), LogError> {
    let filter = Filter::parse(level)?;
    let format = Format::parse(format)?;
    let max = filter.max_level();
    log::set_boxed_logger(Box::new(Logger::new(filter, format, sink)))
        .map_err(|_| LogError::AlreadyInstalled)?;
    log::set_max_level(max);
    Ok(())
}

/// `unix_millis` as RFC 3339 UTC with milliseconds: `2026-12-03T17:57:28.123Z`.
pub fn rfc3339_millis(unix_millis: u64) -> String {
    let secs = unix_millis / 1000;
    let millis = unix_millis % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

enum FieldValue {
    Str(String),
    Json(serde_json::Value),
}

struct Fields(Vec<(String, FieldValue)>);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let k = key.as_str().to_string();
        let v = if sensitive_key(&k) {
            FieldValue::Str(REDACTED.to_string())
        } else if let Some(b) = value.to_bool() {
            FieldValue::Json(b.into())
        } else if let Some(u) = value.to_u64() {
            FieldValue::Json(u.into())
        } else if let Some(i) = value.to_i64() {
            FieldValue::Json(i.into())
        } else if let Some(f) = value.to_f64().filter(|f| f.is_finite()) {
            FieldValue::Json(f.into())
        } else {
            FieldValue::Str(value.to_string())
        };
        self.0.push((k, v));
        Ok(())
    }
}

fn push_json_str(out: &mut String, v: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(v).unwrap_or_default());
}

/// Text lines are for terminals: no control character (line breaks, escape sequences, NUL,
/// DEL, C1) and no Unicode line separator reaches the output raw.
fn escape_text(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

const REDACTED: &str = "[REDACTED]";

/// Key words that make a field (or a `key=value` / `key: value` in text) secret.
const SENSITIVE_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pass",
    "pwd",
    "secret",
    "token",
    "seed",
    "authorization",
    "credential",
    "credentials",
    "creds",
    "jwt",
    "apikey",
    "api_key",
    "private_key",
];

/// Whether a field key names a secret: it ends with one of the sensitive words
/// (`password`, `auth_token`, `NATS_TOKEN`, `bearer_token`), ignoring case.
pub fn sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SENSITIVE_WORDS.iter().any(|w| {
        k.ends_with(w) && {
            // Short words need a boundary before them (`bypass` is not a password).
            let before = &k[..k.len() - w.len()];
            w.len() > 4
                || before.is_empty()
                || !before.ends_with(|c: char| c.is_ascii_alphanumeric())
        }
    })
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_b32(b: u8) -> bool {
    b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Masks secrets in a finished log line: JWT-like strings (`eyJ…`, with or without dots),
/// nkey seeds (`S` + 57 base32 characters), `Bearer <x>`, `scheme://user:password@`, and the
/// value after a password/token-ish key followed by `=` or `:`. Works on plain text and on
/// JSON (the masks contain no quote, so JSON stays valid).
pub fn redact(line: &str) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    // Start of the current plain run not yet copied.
    let mut copied = 0;
    while i < b.len() {
        // At a word start, or right after an escape such as `\n` in a JSON string.
        let word_start =
            i == 0 || !b[i - 1].is_ascii_alphanumeric() || (i >= 2 && b[i - 2] == b'\\');
        // JWT: eyJ followed by base64url (and dots).
        if word_start && b[i..].starts_with(b"eyJ") {
            let mut j = i + 3;
            while j < b.len() && (is_b64url(b[j]) || b[j] == b'.') {
                j += 1;
            }
            if j - i >= 12 {
                out.push_str(&line[copied..i]);
                out.push_str("[REDACTED_JWT]");
                i = j;
                copied = j;
                continue;
            }
        }
        // nkey seed: S, a type letter, then base32 up to 58 characters in all.
        if word_start && b[i] == b'S' {
            let mut j = i;
            while j < b.len() && is_b32(b[j]) {
                j += 1;
            }
            if j - i >= 58 {
                out.push_str(&line[copied..i]);
                out.push_str("[REDACTED_SEED]");
                i = j;
                copied = j;
                continue;
            }
        }
        // Bearer <credential>
        if word_start && b.len() - i > 7 && b[i..i + 7].eq_ignore_ascii_case(b"bearer ") {
            let mut s = i + 7;
            while s < b.len() && b[s] == b' ' {
                s += 1;
            }
            let e = value_end(b, s);
            if e > s {
                out.push_str(&line[copied..s]);
                out.push_str(REDACTED);
                i = e;
                copied = e;
                continue;
            }
        }
        // scheme://user:password@
        if b[i..].starts_with(b"://") {
            let s = i + 3;
            let mut j = s;
            while j < b.len() && !matches!(b[j], b'/' | b'@' | b' ' | b'"' | b'\\' | b'?' | b'#') {
                j += 1;
            }
            if j < b.len() && b[j] == b'@' {
                if let Some(colon) = line[s..j].find(':') {
                    let p = s + colon + 1;
                    out.push_str(&line[copied..p]);
                    out.push_str(REDACTED);
                    i = j;
                    copied = j;
                    continue;
                }
            }
        }
        // key=value, key: value, "key":"value" with a sensitive key.
        if is_ident(b[i]) && (i == 0 || !is_ident(b[i - 1])) {
            let mut k = i;
            while k < b.len() && is_ident(b[k]) {
                k += 1;
            }
            let key = &line[i..k];
            if sensitive_key(key) {
                let mut j = k;
                j = skip_quote(b, j);
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                if j < b.len() && (b[j] == b'=' || b[j] == b':') {
                    // `key: value` with a space is often prose ("bad token: expired").
                    let prose = b[j] == b':' && b.get(j + 1) == Some(&b' ');
                    j += 1;
                    while j < b.len() && b[j] == b' ' {
                        j += 1;
                    }
                    // `Some(…)` of a Debug-printed Option: the credential is inside.
                    if line[j..].starts_with("Some(") {
                        j += 5;
                    }
                    let before_quote = j;
                    j = skip_quote(b, j);
                    let quoted = j != before_quote;
                    let mut e = value_end(b, j);
                    // `Authorization: Bearer x`, `Basic x`: the credential is the next word.
                    let scheme = &line[j..e];
                    if (scheme.eq_ignore_ascii_case("bearer")
                        || scheme.eq_ignore_ascii_case("basic"))
                        && e < b.len()
                        && b[e] == b' '
                    {
                        let mut s2 = e;
                        while s2 < b.len() && b[s2] == b' ' {
                            s2 += 1;
                        }
                        e = value_end(b, s2);
                    }
                    // In prose, a plain lowercase word is text, not a credential.
                    let plain_word = prose
                        && !quoted
                        && line[j..e]
                            .bytes()
                            .all(|c| c.is_ascii_lowercase() || c == b'_' || c == b'-');
                    if e > j && !plain_word && !line[j..e].starts_with("[REDACTED") {
                        out.push_str(&line[copied..j]);
                        out.push_str(REDACTED);
                        i = e;
                        copied = e;
                        continue;
                    }
                }
            }
        }
        i += 1;
    }
    out.push_str(&line[copied..]);
    out
}

/// Skips a quote (`"` or, inside a JSON string, `\"`) at `j`; never half an escape.
fn skip_quote(b: &[u8], j: usize) -> usize {
    if b.get(j) == Some(&b'"') {
        j + 1
    } else if b.get(j) == Some(&b'\\') && b.get(j + 1) == Some(&b'"') {
        j + 2
    } else {
        j
    }
}

/// End of a credential value starting at `s`.
fn value_end(b: &[u8], s: usize) -> usize {
    let mut e = s;
    while e < b.len()
        && !b[e].is_ascii_whitespace()
        && !matches!(
            b[e],
            b'"' | b'\\' | b',' | b'}' | b']' | b'&' | b';' | b'\'' | b')' | b'<' | b'>'
        )
    {
        e += 1;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4";
    const JWT: &str =
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVQUJDIn0.c2lnbmF0dXJlX2J5dGVz";

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_796_320_648_999),
            "2026-12-03T17:57:28.999Z"
        );
        assert_eq!(
            rfc3339_millis(4_102_444_799_000),
            "2099-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn filter_most_specific_prefix_wins() {
        let f = Filter::parse("warn,nats_k8s_callout::kube=debug,nats_k8s_callout=info").unwrap();
        assert!(f.enabled("nats_k8s_callout::kube::watch", Level::Debug));
        assert!(!f.enabled("nats_k8s_callout::kubex", Level::Debug));
        assert!(f.enabled("nats_k8s_callout::nats", Level::Info));
        assert!(!f.enabled("nats_k8s_callout::nats", Level::Debug));
        assert!(!f.enabled("ureq", Level::Info));
        assert!(f.enabled("ureq", Level::Warn));
        assert_eq!(f.max_level(), LevelFilter::Debug);
        assert!(Filter::parse("verbose").is_err());
        assert!(Filter::parse("x=loud").is_err());
        assert!(Filter::parse("=info").is_err());
        assert_eq!(Filter::parse("off").unwrap().max_level(), LevelFilter::Off);
    }

    #[test]
    fn filter_grammar_is_the_one_config_checks() {
        for ok in ["info", "WARN", "off", "warn,nats_k8s_callout::kube=trace"] {
            assert!(Filter::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["loud", "info,", "=debug", "a b=info"] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(Format::parse("JSON").unwrap(), Format::Json);
        assert_eq!(Format::parse("text").unwrap(), Format::Text);
        assert!(Format::parse("xml").is_err());
    }

    #[test]
    fn redacts_jwts_seeds_bearer_and_fields() {
        let cases = [
            format!("got {JWT} here"),
            "header only eyJhbGciOiJSUzI1NiJ9 x".to_string(),
            format!("seed {SEED}"),
            "Authorization: Bearer abc.def-123".to_string(),
            "url nats://alice:s3cr3tpw@host:4222".to_string(),
            "password=s3cr3tpw next".to_string(),
            "\"NATS_PASSWORD\":\"s3cr3tpw\"".to_string(),
            "GET /x?access_token=s3cr3tpw&y=1".to_string(),
            "auth_token: s3cr3tpw".to_string(),
            "password: s3cr3tpw".to_string(),
            "token:s3cr3tpw".to_string(),
            "Settings { password: \"s3cr3tpw\" }".to_string(),
            "{\"msg\":\"pass=\\\"s3cr3tpw\\\"\"}".to_string(),
        ];
        for c in &cases {
            let r = redact(c);
            for secret in ["s3cr3tpw", "abc.def-123", SEED, "c2lnbmF0dXJl", "eyJ"] {
                assert!(
                    !r.contains(secret),
                    "{secret} survived in {r:?} (from {c:?})"
                );
            }
            assert!(r.contains("[REDACTED"), "{r}");
        }
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        for s in [
            "reason=legacy_token namespace=shop",
            "{\"reason\":\"no_token\",\"token_file\":\"/var/run/secrets/token\"}",
            "public key UAB3C4D5E6F7G2H3I4J5K6L7M2N3O4P5Q6R7S2T3U4V5W6X7Y2Z3A4B5",
            "connected to nats://host:4222",
            "bearer_format=jwt",
            "malformed token: expected three parts",
            "{\"msg\":\"cannot read token: permission denied\"}",
        ] {
            assert_eq!(redact(s), s);
        }
    }

    #[test]
    fn json_line_has_fixed_keys_then_fields_and_masks_sensitive_keys() {
        log::set_max_level(LevelFilter::Trace);
        let sink = MemorySink::new();
        let logger = Logger::new(
            Filter::parse("debug").unwrap(),
            Format::Json,
            Box::new(sink.clone()),
        );
        let pw = "hunter2hunter2";
        log::info!(logger: logger, target: "t", namespace = "shop", duration_ms = 12u64, ok = true, password = pw; "hello {}", "world");
        log::trace!(logger: logger, "not shown");
        let out = sink.contents();
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "t");
        assert_eq!(v["msg"], "hello world");
        assert_eq!(v["namespace"], "shop");
        assert_eq!(v["duration_ms"], 12);
        assert_eq!(v["ok"], true);
        assert_eq!(v["password"], REDACTED);
        assert!(
            out.starts_with("{\"ts\":\"") && out.contains("\",\"level\":\"INFO\",\"target\":\"t\",\"msg\":\"hello world\",\"namespace\":\"shop\","),
            "{out}"
        );
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert!(!out.contains(pw));
    }

    #[test]
    fn text_line_quotes_values_with_spaces() {
        log::set_max_level(LevelFilter::Trace);
        let sink = MemorySink::new();
        let logger = Logger::new(
            Filter::parse("info").unwrap(),
            Format::Text,
            Box::new(sink.clone()),
        );
        log::warn!(logger: logger, target: "t", reason = "expired", detail = "a b"; "token rejected");
        let out = sink.contents();
        assert!(
            out.contains(" WARN  t: token rejected reason=expired detail=\"a b\"\n"),
            "{out}"
        );
    }
}
