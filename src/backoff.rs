//! Capped exponential backoff with full jitter, shared by every retry loop in the service
//! (NATS reconnect, Kubernetes list/watch, JWKS refresh).

use std::time::{Duration, Instant};

/// Exponential backoff: `initial`, doubling up to `max`, each delay drawn uniformly from
/// `[delay/2, delay]` ("equal jitter", so a delay is never near zero). After `reset_after` of
/// health (see [`Backoff::succeeded`]) the next failure starts again from `initial`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    current: Duration,
    healthy_since: Option<Instant>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        Backoff {
            initial,
            max,
            reset_after,
            current: initial,
            healthy_since: None,
        }
    }

    /// The Kubernetes client defaults: 800 ms doubling to 30 s, reset after 2 minutes healthy.
    pub fn kube() -> Self {
        Self::new(
            Duration::from_millis(800),
            Duration::from_secs(30),
            Duration::from_secs(120),
        )
    }

    /// The delay before the next attempt after a failure.
    pub fn next_delay(&mut self) -> Duration {
        if let Some(since) = self.healthy_since.take() {
            if since.elapsed() >= self.reset_after {
                self.current = self.initial;
            }
        }
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        jitter(base)
    }

    /// Marks the start of a healthy period (a connection or stream came up).
    pub fn succeeded(&mut self) {
        if self.healthy_since.is_none() {
            self.healthy_since = Some(Instant::now());
        }
    }

    /// Forget all history: the next failure waits `initial`.
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.healthy_since = None;
    }
}

/// A uniformly random duration in `[d/2, d]`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let span = (d - half).as_nanos() as u64;
    if span == 0 {
        return d;
    }
    half + Duration::from_nanos(random_u64() % (span + 1))
}

/// A random u64 from the operating system's CSPRNG (via ring).
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // SystemRandom only fails if the OS has no randomness at all; fall back to the clock.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return crate::clock::unix_now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps_within_jitter_bounds() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
            Duration::from_secs(60),
        );
        let expect = [100u64, 200, 400, 400, 400];
        for ms in expect {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(ms / 2) && d <= Duration::from_millis(ms),
                "{d:?} vs {ms}"
            );
        }
    }

    #[test]
    fn resets_after_a_healthy_period() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::ZERO,
        );
        b.next_delay();
        b.next_delay();
        b.succeeded();
        let d = b.next_delay();
        assert!(d <= Duration::from_millis(100), "{d:?}");
    }

    #[test]
    fn a_short_healthy_period_does_not_reset() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            Duration::from_secs(3600),
        );
        b.next_delay();
        b.next_delay();
        b.succeeded();
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(200), "{d:?}");
    }
}
