//! `promtool check metrics` (Debian package `prometheus`, installed by `scripts/install-deps`)
//! on a Prometheus text exposition, for the tests of `/metrics`.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `body`. `Ok(true)`: it passed with nothing to say;
/// `Ok(false)`: promtool is missing and `SKIP_PROMTOOL=1` allows skipping. Panics when promtool
/// is missing otherwise, so a test cannot pass without having checked. `Err`: what promtool said.
pub fn check_metrics(body: &str) -> Result<bool, String> {
    let promtool = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    let Some(promtool) = promtool else {
        if std::env::var("SKIP_PROMTOOL").as_deref() == Ok("1") {
            eprintln!("promtool not found; skipped because SKIP_PROMTOOL=1");
            return Ok(false);
        }
        panic!(
            "promtool not found on PATH: run scripts/install-deps (Debian package `prometheus`) \
             or set SKIP_PROMTOOL=1"
        );
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(body.as_bytes())
        .map_err(|e| format!("cannot feed promtool: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(true)
    } else {
        Err(text)
    }
}
