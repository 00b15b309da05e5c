//! A Rust NATS client (async-nats) for a workload admitted by nats-k8s-callout.
//!
//! Two things matter for such a client (docs/clients.md):
//! - the projected ServiceAccount token rotates (the kubelet rewrites the file at ~80 % of its
//!   lifetime) and the NATS session ends when the token expires, so the client **reads the
//!   token file on every (re)connect** (`ConnectOptions::with_auth_callback`), never once;
//! - with the default private inboxes, the client must use the inbox prefix
//!   `_INBOX_<namespace>_<serviceaccount>` (dots of the ServiceAccount name written as `_`),
//!   or its requests cannot receive replies.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 NATS_TOKEN_FILE=/var/run/secrets/nats/token \
//! POD_NAMESPACE=shop SERVICE_ACCOUNT=orders-api RUN_SECONDS=0 \
//!     cargo run --example rust_client
//! ```
//! It publishes `<namespace>.hello` on its own subscription once a second for `RUN_SECONDS`
//! seconds (at least once), printing connection events, and exits 0 if the last round trip
//! worked. The local demo uses it to show a session that ends at the token's expiry and
//! resumes with the rotated token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// `_INBOX_<namespace>_<serviceaccount>` with the dots of the name written as `_`.
fn private_inbox_prefix(namespace: &str, service_account: &str) -> String {
    format!("_INBOX_{namespace}_{}", service_account.replace('.', "_"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = env_or("NATS_URL", "nats://127.0.0.1:4222");
    let token_file = PathBuf::from(env_or("NATS_TOKEN_FILE", "/var/run/secrets/nats/token"));
    let namespace = env_or("POD_NAMESPACE", "default");
    let service_account = env_or("SERVICE_ACCOUNT", "default");
    let run_seconds: u64 = env_or("RUN_SECONDS", "0").parse().unwrap_or(0);

    let reads = Arc::new(AtomicUsize::new(0));
    let counter = reads.clone();
    let file = token_file.clone();
    let connect = async_nats::ConnectOptions::with_auth_callback(move |_nonce| {
        let file = file.clone();
        let counter = counter.clone();
        async move {
            // Read on every connect and reconnect: the kubelet rotates the file.
            let token = tokio::fs::read_to_string(&file).await.map_err(|e| {
                async_nats::AuthError::new(format!("reading the token file: {}", e.kind()))
            })?;
            counter.fetch_add(1, Ordering::SeqCst);
            let mut auth = async_nats::Auth::new();
            auth.token = Some(token.trim().to_string());
            Ok(auth)
        }
    })
    .custom_inbox_prefix(private_inbox_prefix(&namespace, &service_account))
    .event_callback(|event| async move {
        // Never print the token; events carry none.
        println!("rust_client: event: {event}");
    })
    .reconnect_delay_callback(|attempt| Duration::from_millis(100 * (attempt as u64).min(20)))
    .connection_timeout(Duration::from_secs(5))
    .connect(url.as_str())
    .await;
    let client = match connect {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rust_client: cannot connect to {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "rust_client: connected to {url} as {namespace}/{service_account} (inbox prefix {})",
        private_inbox_prefix(&namespace, &service_account)
    );

    let subject = format!("{namespace}.hello");
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rust_client: cannot subscribe to {subject}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let end = tokio::time::Instant::now() + Duration::from_secs(run_seconds);
    let mut n = 0u64;
    let ok = loop {
        n += 1;
        let round_trip = async {
            client
                .publish(subject.clone(), format!("hello {n}").into())
                .await
                .ok()?;
            tokio::time::timeout(Duration::from_secs(2), sub.next())
                .await
                .ok()
                .flatten()
        };
        let ok = round_trip.await.is_some();
        println!(
            "rust_client: round trip {n} on {subject}: {}",
            if ok { "ok" } else { "failed" }
        );
        if tokio::time::Instant::now() >= end {
            break ok;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "rust_client: token file read {} time(s)",
        reads.load(Ordering::SeqCst)
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
