//! Per-key limits: a requests/s and a tokens/min token bucket, with the clock passed in.

use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: f64, per_second: f64, now: Instant) -> Self {
        Self {
            capacity,
            per_second,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes `cost` tokens, or says how long until they are there.
    pub fn take(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        // A cost above the capacity is let through once the bucket is full, so a single large
        // request is limited, not impossible.
        let cost = cost.min(self.capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(self.wait_for(cost))
        }
    }

    /// Gives back (negative) or takes more (positive) once the real cost is known; may go below 0.
    pub fn adjust(&mut self, delta: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - delta).min(self.capacity);
    }

    fn wait_for(&self, cost: f64) -> Duration {
        if self.per_second <= 0.0 {
            return Duration::from_secs(3600);
        }
        Duration::from_secs_f64(((cost - self.tokens) / self.per_second).clamp(0.0, 3600.0))
    }

    /// Tokens left (rounded down).
    pub fn remaining(&self) -> u64 {
        self.tokens.max(0.0).floor() as u64
    }

    /// The bucket's capacity.
    pub fn limit(&self) -> u64 {
        self.capacity.floor() as u64
    }

    /// Time until the bucket is full again.
    pub fn reset(&self) -> Duration {
        self.wait_for(self.capacity)
    }
}

/// One key's limits; either may be absent.
#[derive(Debug, Clone)]
pub struct Limiter {
    /// Requests per second.
    pub requests: Option<Bucket>,
    /// Tokens per minute.
    pub tokens: Option<Bucket>,
}

/// What the limiter decided, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// `Err(retry after)` when over a limit.
    pub allowed: Result<(), Duration>,
    /// `(limit, remaining, reset)` of the request bucket.
    pub requests: Option<(u64, u64, Duration)>,
    /// `(limit, remaining, reset)` of the token bucket.
    pub tokens: Option<(u64, u64, Duration)>,
}

impl Limiter {
    /// Limits of `rps` requests/s (burst: one second's worth) and `tpm` tokens/min.
    pub fn new(rps: Option<f64>, tpm: Option<f64>, now: Instant) -> Self {
        Self {
            requests: rps.map(|r| Bucket::new(r.max(1.0), r, now)),
            tokens: tpm.map(|t| Bucket::new(t, t / 60.0, now)),
        }
    }

    /// Admits a request estimated at `tokens`, taking from both buckets only when both allow it.
    pub fn admit(&mut self, tokens: f64, now: Instant) -> Verdict {
        let mut wait = Duration::ZERO;
        if let Some(b) = &mut self.requests {
            b.refill(now);
            if b.tokens < 1.0 {
                wait = wait.max(b.wait_for(1.0));
            }
        }
        if let Some(b) = &mut self.tokens {
            b.refill(now);
            let cost = tokens.min(b.capacity);
            if b.tokens < cost {
                wait = wait.max(b.wait_for(cost));
            }
        }
        let allowed = if wait.is_zero() {
            if let Some(b) = &mut self.requests {
                let _ = b.take(1.0, now);
            }
            if let Some(b) = &mut self.tokens {
                let _ = b.take(tokens, now);
            }
            Ok(())
        } else {
            Err(wait)
        };
        let state = |b: &Bucket| (b.limit(), b.remaining(), b.reset());
        Verdict {
            allowed,
            requests: self.requests.as_ref().map(state),
            tokens: self.tokens.as_ref().map(state),
        }
    }

    /// Charges the difference once the real token count is known.
    pub fn settle(&mut self, estimated: f64, actual: f64, now: Instant) {
        if let Some(b) = &mut self.tokens {
            b.adjust(actual - estimated, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_over_the_rate_wait_and_the_bucket_refills() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(2.0), None, t0);
        assert!(l.admit(0.0, t0).allowed.is_ok());
        assert!(l.admit(0.0, t0).allowed.is_ok());
        let v = l.admit(0.0, t0);
        let wait = v.allowed.expect_err("the third in the same instant");
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(v.requests.map(|r| (r.0, r.1)), Some((2, 0)));
        assert!(l.admit(0.0, t0 + Duration::from_millis(500)).allowed.is_ok());
    }

    #[test]
    fn tokens_per_minute_limit_large_requests_and_settle_corrects_estimates() {
        let t0 = Instant::now();
        let mut l = Limiter::new(None, Some(600.0), t0);
        assert!(l.admit(500.0, t0).allowed.is_ok());
        assert!(l.admit(200.0, t0).allowed.is_err(), "100 left");
        l.settle(500.0, 100.0, t0);
        assert!(
            l.admit(200.0, t0).allowed.is_ok(),
            "the estimate was 400 too high"
        );
        assert!(
            l.admit(10_000.0, t0 + Duration::from_secs(60)).allowed.is_ok(),
            "above capacity: once full"
        );
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Some(1.0), Some(60.0), t0);
        assert!(l.admit(100.0, t0).allowed.is_ok(), "capped at the capacity");
        let v = l.admit(1.0, t0);
        assert!(v.allowed.is_err());
        assert_eq!(v.tokens.map(|t| t.1), Some(0));
    }
}
