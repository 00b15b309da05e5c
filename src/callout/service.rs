//! The running callout: a bounded queue of requests (the subscription's), a small pool of
//! worker threads, replies published on the request's reply subject, and drain.
//!
//! Owns threads and their lifecycle; the per-request work is [`Processor::process`]. Must never
//! let one slow decision stall the others, never queue without bound, and never log secrets.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::process::{Outcome, Processor};
use super::request::XKEY_HEADER;
use super::{CalloutConfig, CalloutError, AUTH_SUBJECT};
use crate::authz::Decider;
use crate::clock::SystemClock;
use crate::http::{Health, Heartbeat};
use crate::nats::{Connection, Message};

/// One delivered request message.
pub trait Inbound: Send + 'static {
    fn reply_subject(&self) -> Option<&str>;
    /// The `Nats-Server-Xkey` header, if any.
    fn xkey_header(&self) -> Option<&str>;
    fn payload(&self) -> &[u8];
}

/// Publishes a response payload to a reply subject (and gets it onto the wire promptly).
pub trait Replier: Send + Sync + 'static {
    fn reply(&self, subject: &str, payload: &[u8]) -> Result<(), &'static str>;
}

/// A running worker pool; see [`CalloutHandle`] for the NATS-connected form.
pub struct WorkerPool {
    draining: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    processor: Arc<Processor>,
}

/// Longest a worker may go without finishing a loop (a decision is bounded well below: a lazy
/// ServiceAccount GET 500 ms, a key refresh wait 1 s); silence beyond it is a stuck worker.
const WORKER_SILENCE: Duration = Duration::from_secs(30);

impl WorkerPool {
    /// Start `n` workers reading `rx`; each registers a heartbeat with `health`, if given.
    pub fn start<M: Inbound, R: Replier>(
        rx: Receiver<M>,
        replier: Arc<R>,
        processor: Arc<Processor>,
        n: usize,
        health: Option<Arc<Health>>,
    ) -> Self {
        let draining = Arc::new(AtomicBool::new(false));
        let workers = (0..n.max(1))
            .map(|i| {
                let rx = rx.clone();
                let replier = replier.clone();
                let processor = processor.clone();
                let draining = draining.clone();
                // Registered before the thread starts (so liveness watches it from the start)
                // and owned by the thread (so a panic drops it there and marks it dead).
                let beat = health
                    .as_ref()
                    .map(|h| h.heartbeat(&format!("callout-worker-{i}"), WORKER_SILENCE));
                std::thread::Builder::new()
                    .name(format!("callout-worker-{i}"))
                    .spawn(move || worker(rx, &*replier, &processor, &draining, beat.as_ref()))
                    .expect("spawn callout worker")
            })
            .collect();
        WorkerPool {
            draining,
            workers,
            processor,
        }
    }

    /// The shared processor (metrics live there).
    pub fn processor(&self) -> &Arc<Processor> {
        &self.processor
    }

    /// Finish what is queued, then stop. Returns false if workers were still busy at `timeout`
    /// (they are left to finish on their own).
    pub fn drain(self, timeout: Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && self.workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let done = self.workers.iter().all(|w| w.is_finished());
        if done {
            for w in self.workers {
                let _ = w.join();
            }
        }
        done
    }
}

fn worker<M: Inbound, R: Replier + ?Sized>(
    rx: Receiver<M>,
    replier: &R,
    processor: &Processor,
    draining: &AtomicBool,
    beat: Option<&Heartbeat>,
) {
    loop {
        if let Some(b) = beat {
            b.beat();
        }
        let msg = if draining.load(Ordering::SeqCst) {
            match rx.try_recv() {
                Ok(m) => m,
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        processor.metrics.queue_depth.set(rx.len() as i64);
        let Some(reply) = msg.reply_subject() else {
            processor.metrics.bad_request("no_reply_subject");
            continue;
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            processor.process(msg.xkey_header(), msg.payload())
        }));
        match outcome {
            Ok(Outcome::Reply(out)) => {
                if let Err(code) = replier.reply(reply, &out) {
                    processor.publish_failed(code);
                }
            }
            Ok(Outcome::Drop) => {}
            Err(_) => {
                processor.metrics.response_error("panic");
                log::error!(reason = "panic"; "callout worker panicked while handling a request");
            }
        }
    }
}

impl Inbound for Message {
    fn reply_subject(&self) -> Option<&str> {
        self.reply.as_deref()
    }
    fn xkey_header(&self) -> Option<&str> {
        self.headers.as_ref().and_then(|h| h.get(XKEY_HEADER))
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl Replier for Connection {
    fn reply(&self, subject: &str, payload: &[u8]) -> Result<(), &'static str> {
        // Our client writes each publish to the socket before returning: no flush needed.
        self.publish(subject, None, payload).map_err(|e| e.code())
    }
}

/// Entry point of the NATS-connected callout.
pub struct Callout;

impl Callout {
    /// Subscribe to [`AUTH_SUBJECT`] in `cfg.queue_group` on `conn` (logged in as an
    /// `auth_users` user of the callout account) and answer requests with `cfg.workers`
    /// threads. The subscription's bounded channel (`cfg.queue_capacity`) is the request queue;
    /// when it is full the client drops and counts messages.
    pub fn start(
        conn: &Connection,
        cfg: CalloutConfig,
        decider: Arc<dyn Decider>,
    ) -> Result<CalloutHandle, CalloutError> {
        let processor = processor(&cfg, decider)?;
        let sub = conn
            .subscribe(
                AUTH_SUBJECT,
                Some(cfg.queue_group.as_str()).filter(|q| !q.is_empty()),
                cfg.queue_capacity,
            )
            .map_err(|e| CalloutError::Subscribe(e.code()))?;
        // A PING/PONG round trip: once it returns the server has the subscription, so a client
        // connecting after `start` returns is never sent to an empty queue group.
        conn.flush(Duration::from_secs(5))
            .map_err(|e| CalloutError::Subscribe(e.code()))?;
        let sub = Arc::new(sub);
        let rx = sub.receiver().clone();
        let pool = WorkerPool::start(
            rx,
            Arc::new(conn.clone()),
            processor,
            cfg.workers,
            cfg.health.clone(),
        );
        log::info!(
            queue_group = cfg.queue_group.as_str(),
            workers = cfg.workers,
            queue_capacity = cfg.queue_capacity,
            xkey = cfg.xkey_seed.is_some();
            "auth callout started"
        );
        let counted = sub.clone();
        Ok(CalloutHandle::new(
            pool,
            Box::new(move |timeout| {
                // UNSUB, then wait for the PONG: requests the server sent before it still reach
                // the queue and are answered; none can arrive after.
                let _ = sub.drain(timeout);
            }),
            Box::new(move || counted.dropped()),
        ))
    }
}

/// A running callout; [`CalloutHandle::drain`] stops it gracefully.
pub struct CalloutHandle {
    pool: WorkerPool,
    unsubscribe: Option<Box<dyn FnOnce(Duration) + Send>>,
    queue_full: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl CalloutHandle {
    /// Build a handle from a pool, a function that stops new deliveries (UNSUB) and one that
    /// tells how many requests were dropped because the queue was full.
    pub fn new(
        pool: WorkerPool,
        unsubscribe: Box<dyn FnOnce(Duration) + Send>,
        queue_full: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Self {
        CalloutHandle {
            pool,
            unsubscribe: Some(unsubscribe),
            queue_full,
        }
    }

    pub fn processor(&self) -> &Arc<Processor> {
        self.pool.processor()
    }

    /// Requests dropped because the queue was full (the NATS client counts them, also in the
    /// metric `nats_k8s_callout_nats_messages_dropped_total`).
    pub fn queue_full(&self) -> u64 {
        (self.queue_full)()
    }

    /// Stop taking new requests (UNSUB), finish the queued and in-flight ones, then return.
    /// Returns false if work was still running at `timeout`.
    pub fn drain(mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        if let Some(unsub) = self.unsubscribe.take() {
            unsub(timeout);
        }
        self.pool.drain(timeout.saturating_sub(start.elapsed()))
    }
}

/// Build the processor for `cfg` (shared by [`Callout::start`] and tests).
pub fn processor(
    cfg: &CalloutConfig,
    decider: Arc<dyn Decider>,
) -> Result<Arc<Processor>, CalloutError> {
    if cfg.workers == 0 || cfg.queue_capacity == 0 {
        return Err(CalloutError::Sizing);
    }
    Ok(Arc::new(Processor::new(
        cfg,
        decider,
        Arc::new(SystemClock),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{AuthRequest, Decision, Grant};
    use crate::callout::process::tests::config_mode;
    use crate::clock::unix_now;
    use crate::natsjwt::{self, AuthorizationRequest, Claims, REQUEST_AUDIENCE};
    use crate::secret::Secret;
    use nkeys::KeyPair;
    use std::sync::Mutex;

    struct Msg(Option<String>, Vec<u8>);
    impl Inbound for Msg {
        fn reply_subject(&self) -> Option<&str> {
            self.0.as_deref()
        }
        fn xkey_header(&self) -> Option<&str> {
            None
        }
        fn payload(&self) -> &[u8] {
            &self.1
        }
    }

    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, Instant)>>);
    impl Replier for Sink {
        fn reply(&self, subject: &str, _payload: &[u8]) -> Result<(), &'static str> {
            self.0
                .lock()
                .unwrap()
                .push((subject.to_string(), Instant::now()));
            Ok(())
        }
    }

    fn req(server: &KeyPair, account: &str, token: &str) -> Vec<u8> {
        let mut n = AuthorizationRequest::default();
        n.server_id.id = server.public_key();
        n.user_nkey = KeyPair::new_user().public_key();
        n.connect_opts.auth_token = Some(Secret::new(token));
        let mut c = Claims::new(account, unix_now(), n);
        c.aud = REQUEST_AUDIENCE.into();
        c.exp = unix_now() + 5;
        natsjwt::encode(&mut c, server).unwrap().into_bytes()
    }

    #[test]
    fn zero_workers_or_zero_queue_is_refused() {
        let issuer = KeyPair::new_account();
        let decider: Arc<dyn Decider> = Arc::new(|_: &AuthRequest| Decision::deny("x"));
        for (workers, queue) in [(0, 16), (2, 0)] {
            let mut cfg = config_mode(&issuer);
            cfg.workers = workers;
            cfg.queue_capacity = queue;
            let err = processor(&cfg, decider.clone()).err().expect("refused");
            assert_eq!(err.code(), "callout_sizing");
        }
    }

    #[test]
    fn slow_decision_does_not_stall_others_and_drain_finishes_queue() {
        let issuer = KeyPair::new_account();
        let server = KeyPair::new_server();
        let mut cfg = config_mode(&issuer);
        cfg.workers = 2;
        let decider: Arc<dyn Decider> = Arc::new(|r: &AuthRequest| {
            if r.bearer_token() == Some("slow") {
                std::thread::sleep(Duration::from_millis(1500));
            }
            Decision::Allow(Grant::default())
        });
        let p = processor(&cfg, decider).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(16);
        let sink = Arc::new(Sink::default());
        let pool = WorkerPool::start(rx, sink.clone(), p.clone(), cfg.workers, None);
        let t0 = Instant::now();
        tx.send(Msg(
            Some("slow".into()),
            req(&server, &issuer.public_key(), "slow"),
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        tx.send(Msg(
            Some("fast".into()),
            req(&server, &issuer.public_key(), "fast"),
        ))
        .unwrap();
        tx.send(Msg(None, req(&server, &issuer.public_key(), "fast")))
            .unwrap();
        // Wait for the fast one.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().iter().all(|(s, _)| s != "fast") {
            assert!(Instant::now() < deadline, "fast reply never came");
            std::thread::sleep(Duration::from_millis(5));
        }
        let replies = sink.0.lock().unwrap().clone();
        assert_eq!(replies[0].0, "fast", "fast reply waited for the slow one");
        // Queue more, then drain: everything queued is answered.
        for i in 0..5 {
            tx.send(Msg(
                Some(format!("q{i}")),
                req(&server, &issuer.public_key(), "fast"),
            ))
            .unwrap();
        }
        assert!(pool.drain(Duration::from_secs(5)));
        let replies = sink.0.lock().unwrap().clone();
        assert_eq!(replies.len(), 7, "{replies:?}");
        assert!(replies
            .iter()
            .any(|(s, t)| s == "slow" && *t - t0 >= Duration::from_millis(1500)));
        assert_eq!(
            cfg.metrics
                .counter(
                    crate::callout::process::M_BAD,
                    "",
                    &[("reason", "no_reply_subject")]
                )
                .get(),
            1
        );
    }
}
