//! Client-side helpers shared by the end-to-end test files: an independent NATS client
//! (async-nats) whose events arrive on a channel, and the checks built on it.
// Each test file uses a part of this module.
#![allow(dead_code)]

use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, Event};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// An async-nats client with its events on a channel.
pub struct Client {
    pub nc: async_nats::Client,
    pub events: mpsc::UnboundedReceiver<Event>,
    /// The token's namespace (for [`barrier`]).
    pub ns: String,
}

/// The namespace claim of a ServiceAccount token (test helper; no validation).
pub fn token_namespace(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(payload.as_bytes())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    v["kubernetes.io"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Connects with `token` as the NATS token, after `tweak` adjusted the options.
pub async fn connect_with(
    url: &str,
    token: &str,
    tweak: impl FnOnce(ConnectOptions) -> ConnectOptions,
) -> Result<Client, async_nats::ConnectError> {
    let (tx, events) = mpsc::unbounded_channel();
    let opts = ConnectOptions::new()
        .token(token.to_string())
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connection_timeout(WAIT)
        .max_reconnects(Some(1));
    let nc = tweak(opts).connect(url).await?;
    Ok(Client {
        nc,
        events,
        ns: token_namespace(token),
    })
}

pub async fn connect(url: &str, token: &str) -> Result<Client, async_nats::ConnectError> {
    connect_with(url, token, |o| o).await
}

/// Connects with a custom inbox prefix (the private inbox of a ServiceAccount).
pub async fn connect_inbox(
    url: &str,
    token: &str,
    inbox: Option<&str>,
) -> Result<Client, async_nats::ConnectError> {
    connect_with(url, token, |o| match inbox {
        Some(p) => o.custom_inbox_prefix(p),
        None => o,
    })
    .await
}

/// Asserts that a login with `token` is refused with an authorization error.
pub async fn assert_refused(url: &str, token: &str, what: &str) {
    match connect(url, token).await {
        Ok(_) => panic!("{what}: admitted, expected refusal"),
        Err(e) => assert_eq!(
            e.kind(),
            ConnectErrorKind::AuthorizationViolation,
            "{what}: {e}"
        ),
    }
}

impl Client {
    /// Waits for the server's `Permissions Violation` naming `op` ("Publish"/"Subscription")
    /// and `subject`; other events are skipped.
    pub async fn expect_violation(&mut self, op: &str, subject: &str) {
        let want = format!("permissions violation for {op} to \"{subject}\"").to_lowercase();
        self.expect_server_error(&want).await;
    }

    /// Waits for a server error whose text contains `want` (lower case).
    pub async fn expect_server_error(&mut self, want: &str) {
        self.expect_event(&format!("server error {want:?}"), WAIT, |e| {
            matches!(e, Event::ServerError(async_nats::ServerError::Other(m))
                if m.to_lowercase().contains(want))
        })
        .await;
    }

    /// Waits for an event matching `pred`.
    pub async fn expect_event(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Event) -> bool,
    ) {
        let found = tokio::time::timeout(within, async {
            while let Some(e) = self.events.recv().await {
                if pred(&e) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "expected event: {what}");
    }

    /// No violation event so far (call after a round trip).
    pub fn assert_no_violation(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            if let Event::ServerError(async_nats::ServerError::Other(m)) = &e {
                assert!(
                    !m.to_lowercase().contains("permissions violation"),
                    "unexpected: {m}"
                );
            }
        }
    }

    /// Publishes and receives on `subject` itself (proves pub + sub and a round trip).
    pub async fn round_trip(&self, subject: &str) {
        let mut sub = self.nc.subscribe(subject.to_string()).await.unwrap();
        self.nc
            .publish(subject.to_string(), "rt".into())
            .await
            .unwrap();
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no round trip on {subject}"))
            .unwrap();
        assert_eq!(&m.payload[..], b"rt");
    }
}

/// A round trip on `c`'s own namespace: after it, the server has processed everything `c`
/// sent before, and everything the server sent to `c` before has arrived (one connection, in
/// order).
pub async fn barrier(c: &Client) {
    let subject = format!(
        "{}.barrier.{:x}",
        c.ns,
        nats_k8s_callout::backoff::random_u64()
    );
    let mut sub = c.nc.subscribe(subject.clone()).await.unwrap();
    c.nc.publish(subject, "b".into()).await.unwrap();
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("barrier round trip")
        .unwrap();
}

/// `publisher` publishes on `subject`, `subscriber` must receive it.
pub async fn assert_delivered(publisher: &Client, subscriber: &Client, subject: &str) {
    let mut sub = subscriber.nc.subscribe(subject.to_string()).await.unwrap();
    // `flush` only writes; a round trip proves the server has the subscription.
    barrier(subscriber).await;
    publisher
        .nc
        .publish(subject.to_string(), "payload".into())
        .await
        .unwrap();
    publisher.nc.flush().await.unwrap();
    let msg = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("nothing delivered on {subject}"))
        .unwrap();
    assert_eq!(&msg.payload[..], b"payload");
}
