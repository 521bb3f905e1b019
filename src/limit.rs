//! Flood control: a token bucket (a burst of N, refilled at a steady rate).
//!
//! The server keeps one per connection and refuses what goes over it; the
//! bundled client keeps a copy with the limits the server announced in its
//! `welcome`, so it paces itself instead of having messages refused.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::server::lock;

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `per_ten_seconds` messages per 10 s on average and
    /// `burst` at once; `None` when `per_ten_seconds` is 0 (no limit).
    pub fn new(per_ten_seconds: u32, burst: u32) -> Option<Self> {
        Self::with_rate(f64::from(per_ten_seconds) / 10.0, burst)
    }

    /// A full bucket allowing `per_minute` per minute on average and
    /// `burst` at once; `None` when `per_minute` is 0.
    pub fn per_minute(per_minute: u32, burst: u32) -> Option<Self> {
        Self::with_rate(f64::from(per_minute) / 60.0, burst)
    }

    fn with_rate(per_second: f64, burst: u32) -> Option<Self> {
        (per_second > 0.0).then(|| {
            let burst = f64::from(burst.max(1));
            Self {
                tokens: burst,
                burst,
                per_second,
                updated: Instant::now(),
            }
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
    }

    /// Takes a token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// [`Self::try_take`] at a given time (for tests).
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes `tokens` at once, as many as there are if fewer: what follows
    /// waits for the refill.
    pub fn charge(&mut self, tokens: u32) {
        self.refill(Instant::now());
        self.tokens = (self.tokens - f64::from(tokens)).max(0.0);
    }

    /// Whether the bucket is full at `now` (it then says nothing a new one
    /// would not).
    pub fn full_at(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }

    /// How long until a token is available (zero if one is).
    pub fn wait(&mut self) -> Duration {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

/// Token buckets for any number of keys in a fixed table: each key takes
/// the bucket its hash picks, so a key costs nothing to remember or forget,
/// and the rare keys that share a bucket share its budget.
#[derive(Debug)]
pub struct SharedBuckets {
    buckets: Mutex<Vec<TokenBucket>>,
    hasher: RandomState,
}

/// Buckets in a [`SharedBuckets`] table.
const SHARED_BUCKETS: usize = 1024;

impl SharedBuckets {
    /// A table of full buckets as [`TokenBucket::new`] makes them; `None`
    /// when `per_ten_seconds` is 0 (no limit).
    pub fn new(per_ten_seconds: u32, burst: u32) -> Option<Self> {
        let bucket = TokenBucket::new(per_ten_seconds, burst)?;
        Some(Self {
            buckets: Mutex::new(vec![bucket; SHARED_BUCKETS]),
            hasher: RandomState::new(),
        })
    }

    /// Takes a token from `key`'s bucket if there is one.
    pub fn try_take(&self, key: &str) -> bool {
        let index = (self.hasher.hash_one(key) % SHARED_BUCKETS as u64) as usize;
        lock(&self.buckets)[index].try_take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_buckets_keep_each_key_to_its_burst() {
        let table = SharedBuckets::new(1, 3).expect("limited");
        let taken = (0..10).filter(|_| table.try_take("busy")).count();
        assert_eq!(taken, 3);
        // Another key almost always has a bucket of its own.
        let others = (0..100)
            .filter(|n| table.try_take(&format!("room {n}")))
            .count();
        assert!(others >= 90, "{others}");
        assert!(SharedBuckets::new(0, 3).is_none());
    }

    #[test]
    fn allows_a_burst_then_the_refill_rate() {
        let mut bucket = TokenBucket::new(20, 10).expect("limited");
        let start = bucket.updated;
        for _ in 0..10 {
            assert!(bucket.try_take_at(start));
        }
        assert!(!bucket.try_take_at(start));
        // 2 per second: one more after half a second, not before.
        assert!(!bucket.try_take_at(start + Duration::from_millis(400)));
        assert!(bucket.try_take_at(start + Duration::from_millis(500)));
        // Never more than the burst, however long it rested.
        let later = start + Duration::from_secs(3600);
        for _ in 0..10 {
            assert!(bucket.try_take_at(later));
        }
        assert!(!bucket.try_take_at(later));
    }

    #[test]
    fn zero_rate_means_unlimited() {
        assert!(TokenBucket::new(0, 10).is_none());
    }
}
