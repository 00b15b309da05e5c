//! The refresh thread: fetches every issuer's keys at start (retrying with backoff until it
//! succeeds), then periodically: `Cache-Control: max-age` clamped to the configured range
//! (default 15 min) with ±10 % jitter; file sources are polled for changes. Failures back off
//! (1 s → 60 s) and keep the last good keys. Stopping is prompt (a channel, not a sleep).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use super::store::KeyStore;
use crate::backoff::{random_u64, Backoff};

/// Stops the refresh thread when [`RefresherHandle::stop`] is called or the handle is dropped.
#[derive(Debug)]
pub struct RefresherHandle {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RefresherHandle {
    /// Stops the thread and waits for it (at most one fetch timeout).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RefresherHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Spawns the refresh thread (named `jwks-refresh`). The first fetch of every issuer starts
/// at once; poll [`KeyStore::ready`] for readiness.
pub fn start_refresher(store: Arc<KeyStore>) -> std::io::Result<RefresherHandle> {
    start_refresher_with_health(store, None)
}

/// How often the refresh thread wakes up at least (to beat its heartbeat).
const WAKE: Duration = Duration::from_secs(10);

/// As [`start_refresher`], registering the thread's heartbeat with `health` (liveness).
pub fn start_refresher_with_health(
    store: Arc<KeyStore>,
    health: Option<Arc<crate::http::Health>>,
) -> std::io::Result<RefresherHandle> {
    let (tx, rx) = bounded::<()>(1);
    // A wake-up every WAKE, plus one fetch per issuer in a round (each bounded by its HTTP
    // deadline, 10 s by default).
    let silence = Duration::from_secs(60 + 15 * store.slot_count() as u64);
    let heartbeat = health.map(|h| h.heartbeat("jwks-refresh", silence));
    let thread = std::thread::Builder::new()
        .name("jwks-refresh".into())
        .spawn(move || {
            let cfg = store.config().clone();
            let n = store.slot_count();
            let mut due = vec![Instant::now(); n];
            let mut backoff: Vec<Backoff> = (0..n)
                .map(|_| Backoff::new(cfg.backoff_initial, cfg.backoff_max, Duration::ZERO))
                .collect();
            loop {
                if let Some(h) = &heartbeat {
                    h.beat();
                }
                let next = due.iter().min().copied().unwrap_or_else(Instant::now);
                let wait = next.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait.min(WAKE)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if wait > WAKE {
                    continue;
                }
                let now = Instant::now();
                for i in 0..n {
                    if due[i] > now {
                        continue;
                    }
                    let wait = match store.refresh_index(i) {
                        Ok(max_age) => {
                            backoff[i].reset();
                            if store.is_file_source(i) {
                                cfg.file_poll
                            } else {
                                let d = max_age
                                    .unwrap_or(cfg.default_refresh)
                                    .clamp(cfg.min_refresh, cfg.max_refresh);
                                jitter_10(d)
                            }
                        }
                        Err(_) => backoff[i].next_delay(),
                    };
                    due[i] = Instant::now() + wait;
                }
            }
        })?;
    Ok(RefresherHandle {
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// `d` ± 10 %.
fn jitter_10(d: Duration) -> Duration {
    let tenth = d / 10;
    let span = (tenth * 2).as_millis() as u64;
    if span == 0 {
        return d;
    }
    d - tenth + Duration::from_millis(random_u64() % (span + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jitter_10(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
        assert_eq!(jitter_10(Duration::ZERO), Duration::ZERO);
    }
}
