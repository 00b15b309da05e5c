//! The command line: run the service (default), `explain`, `check`, `--help`, `--version`.
//!
//! `explain` and `check` build their parts with the same functions as the service (`app`), so
//! what they report is what the service would do. Must never print a token or a seed.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{self, App};
use crate::authz::Decision;
use crate::config::{Config, LogFormat};
use crate::decision::Evaluation;
use crate::kube::SaCache;
use crate::nats::Connection;
use crate::policy::Verdict;
use crate::signals;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const USAGE: &str = "\
nats-k8s-callout: a NATS auth callout that admits Kubernetes workloads by their ServiceAccount
token and grants them NATS permissions from their namespace and annotations.

USAGE:
    nats-k8s-callout                  run the service (configured by environment variables)
    nats-k8s-callout explain --token-file FILE
    nats-k8s-callout explain --token -            (token on standard input)
    nats-k8s-callout explain NAMESPACE SERVICEACCOUNT
                                      print the decision, the exact permissions and why
    nats-k8s-callout check            validate the configuration and reach NATS, the JWKS
                                      and the Kubernetes API, reporting each
    nats-k8s-callout --help | --version
";

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => run(),
        Some("--version" | "-V" | "version") => {
            println!("nats-k8s-callout {VERSION}");
            ExitCode::SUCCESS
        }
        Some("--help" | "-h" | "help") => {
            print!("{USAGE}\n{}", crate::config::help_text());
            ExitCode::SUCCESS
        }
        Some("explain") => explain(&args[1..]),
        Some("check") => check(),
        Some(other) => {
            eprintln!("unknown argument {other:?}; see --help");
            ExitCode::from(2)
        }
    }
}

fn load_config() -> Result<Config, ExitCode> {
    Config::from_process_env().map_err(|e| {
        eprintln!("configuration is not valid:\n{e}");
        ExitCode::from(2)
    })
}

fn init_logging(cfg: &Config, default_level: Option<&str>) {
    let format = match cfg.log_format(std::io::stdout().is_terminal()) {
        LogFormat::Json => "json",
        LogFormat::Text => "text",
    };
    let level = default_level.unwrap_or(&cfg.log_level);
    if let Err(e) = crate::logging::init(level, format) {
        eprintln!("LOG_LEVEL: {e}");
    }
}

/// Runs the service until SIGTERM or SIGINT.
fn run() -> ExitCode {
    // Before any thread exists, so that every thread inherits the blocked signals.
    let signals = signals::install();
    let cfg = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&cfg, None);
    log::info!(version = VERSION; "starting nats-k8s-callout");
    let app = match App::start(&cfg) {
        Ok(a) => a,
        Err(e) => {
            log::error!(reason = "startup"; "cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    log::info!(http_addr = app.http_addr().to_string().as_str(); "started; waiting for NATS, keys and the ServiceAccount cache");
    let sig = signals.recv();
    let name = sig.map_or("none (signal thread ended)", |s| s.name());
    log::info!(signal = name; "stopping");
    if !app.shutdown(Duration::from_secs(10)) {
        log::warn!("the callout did not drain within 10 s");
    }
    ExitCode::SUCCESS
}

/// What `explain` was asked about.
enum Subject {
    Token(String),
    Account(String, String),
}

fn parse_explain_args(args: &[String]) -> Result<Subject, String> {
    match args {
        [flag, file] if flag == "--token-file" => std::fs::read_to_string(file)
            .map(|t| Subject::Token(t.trim().to_string()))
            .map_err(|e| format!("cannot read {file}: {e}")),
        [flag, dash] if flag == "--token" && dash == "-" => {
            let mut t = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut t)
                .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
            Ok(Subject::Token(t.trim().to_string()))
        }
        [ns, sa] if !ns.starts_with('-') && !sa.starts_with('-') => Ok(Subject::Account(ns.clone(), sa.clone())),
        _ => Err("usage: explain --token-file FILE | explain --token - | explain NAMESPACE SERVICEACCOUNT".into()),
    }
}

fn explain(args: &[String]) -> ExitCode {
    let subject = match parse_explain_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match load_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging(&cfg, Some("warn"));
    let built = (|| -> Result<_, String> {
        let client = app::kube_client(&cfg)?;
        let issuers = app::issuers(&cfg, &client)?;
        let store = app::key_store(&cfg, &issuers)?;
        for i in &issuers {
            store
                .refresh(i)
                .map_err(|e| format!("keys of issuer {i}: {e}"))?;
        }
        let (cache, watcher) = SaCache::start(client, app::cache_config(&cfg));
        if !cache.wait_synced(Duration::from_secs(30)) {
            watcher.stop();
            return Err("the ServiceAccount list did not complete within 30 s".into());
        }
        Ok((app::decider(&cfg, issuers, store, cache)?, watcher))
    })();
    let (decider, watcher) = match built {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cannot explain: {e}");
            return ExitCode::from(1);
        }
    };
    let eval = match &subject {
        Subject::Token(t) => decider.evaluate_token(t),
        Subject::Account(ns, sa) => decider.evaluate_account(ns, sa),
    };
    watcher.stop();
    print!(
        "{}",
        render_evaluation(&eval, matches!(subject, Subject::Account(..)))
    );
    match eval.decision {
        Decision::Allow(_) => ExitCode::SUCCESS,
        Decision::Deny(_) => ExitCode::from(1),
    }
}

/// The human-readable report of one evaluation.
pub fn render_evaluation(eval: &Evaluation, by_name: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(t) = &eval.token {
        let _ = writeln!(
            out,
            "token:      valid; issuer {}; {}/{} (uid {}); expires {}",
            t.issuer,
            t.namespace,
            t.service_account,
            t.sa_uid,
            t.exp
                .map_or("never".to_string(), |s| crate::logging::rfc3339_millis(
                    s * 1000
                ))
        );
        if let Some(p) = &t.pod {
            let _ = writeln!(out, "bound to:   pod {} (uid {})", p.name, p.uid);
        }
    } else if by_name {
        let _ = writeln!(
            out,
            "token:      (none; explaining by name, the session length assumes MAX_SESSION)"
        );
    }
    if let Some(a) = &eval.account {
        let _ = writeln!(
            out,
            "account:    found, uid {}{}",
            a.uid,
            if a.deleting { ", being deleted" } else { "" }
        );
    }
    match &eval.decision {
        Decision::Deny(d) => {
            let _ = writeln!(out, "decision:   DENY ({})", d.code);
            let _ = writeln!(
                out,
                "            see docs/troubleshooting.md for what `{}` means",
                d.code
            );
        }
        Decision::Allow(g) => {
            let _ = writeln!(out, "decision:   ALLOW as {:?}", g.name);
            let p = &g.permissions;
            let _ = writeln!(out, "publish:    allow {:?}", p.publish.allow);
            if !p.publish.deny.is_empty() {
                let _ = writeln!(out, "            deny  {:?}", p.publish.deny);
            }
            let _ = writeln!(out, "subscribe:  allow {:?}", p.subscribe.allow);
            if !p.subscribe.deny.is_empty() {
                let _ = writeln!(out, "            deny  {:?}", p.subscribe.deny);
            }
            match p.responses {
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "responses:  may answer {} reply per request received",
                        r.max
                    );
                }
                None => {
                    let _ = writeln!(out, "responses:  off");
                }
            }
            if let Some(outcome) = &eval.policy {
                let _ = writeln!(out, "inbox:      {}", outcome.inbox_prefix);
            }
            let _ = writeln!(out, "tags:       {:?}", g.tags);
            let _ = writeln!(
                out,
                "session:    ends {}",
                g.expires_at
                    .map_or("never".to_string(), |s| crate::logging::rfc3339_millis(
                        s * 1000
                    ))
            );
        }
    }
    if let Some(outcome) = &eval.policy {
        if outcome.entries.is_empty() {
            let _ = writeln!(out, "annotations: none (namespace default only)");
        } else {
            let _ = writeln!(out, "annotations:");
            for e in &outcome.entries {
                let verdict = match &e.verdict {
                    Verdict::Kept => "kept".to_string(),
                    Verdict::Dropped(r) => format!("dropped ({}): {}", r.code(), r.detail()),
                };
                let _ = writeln!(
                    out,
                    "  {:<4} {:<32} {}",
                    e.direction.as_str(),
                    format!("{:?}", e.entry),
                    verdict
                );
            }
        }
    }
    out
}

/// One line of `check`.
fn report(name: &str, result: Result<String, String>) -> bool {
    match result {
        Ok(detail) => {
            println!("[ ok ] {name}: {detail}");
            true
        }
        Err(detail) => {
            println!("[FAIL] {name}: {detail}");
            false
        }
    }
}

fn check() -> ExitCode {
    let cfg = match load_config() {
        Ok(c) => {
            println!("[ ok ] configuration: valid");
            c
        }
        Err(code) => return code,
    };
    init_logging(&cfg, Some("error"));
    let mut ok = true;

    let nats = (|| {
        let mut opts = app::nats_options(&cfg);
        opts.connect_timeout = Duration::from_secs(5);
        let conn = Connection::connect(opts).map_err(|e| e.to_string())?;
        let server = conn.current_server();
        let version = conn.server_info().map(|i| i.version).unwrap_or_default();
        conn.close();
        Ok(format!("connected to {server} (nats-server {version})"))
    })();
    ok &= report("nats", nats);

    let client = app::kube_client(&cfg);
    let api = client.as_ref().map_err(Clone::clone).and_then(|c| {
        let path = match &cfg.kube.namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/serviceaccounts?limit=1"),
            None => "/api/v1/serviceaccounts?limit=1".to_string(),
        };
        c.get_json::<serde_json::Value>(&path, Some(Duration::from_secs(10)))
            .map(|_| format!("{} answers; ServiceAccounts can be listed", c.base_url()))
            .map_err(|e| e.to_string())
    });
    ok &= report("kubernetes api", api);

    let keys = client.and_then(|c| {
        let issuers = app::issuers(&cfg, &c)?;
        let store: Arc<_> = app::key_store(&cfg, &issuers)?;
        let mut lines = Vec::new();
        let mut all = true;
        for i in &issuers {
            match store.refresh(i) {
                Ok(_) => {
                    let n = store.key_set(i).map_or(0, |k| k.len());
                    all &= n > 0;
                    lines.push(format!("{i}: {n} usable key(s)"));
                }
                Err(e) => {
                    all = false;
                    lines.push(format!("{i}: {e}"));
                }
            }
        }
        if all {
            Ok(lines.join("; "))
        } else {
            Err(lines.join("; "))
        }
    });
    ok &= report("token keys", keys);

    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
