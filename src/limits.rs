//! Shared limiter state, built once for all workers: per-key token buckets (governor), one
//! for inference and one for cheap reads, per-key in-flight counters, and the
//! failed-authentication throttle per client IP.
//! State outlives keys-file reloads: editing the file does not refill a bucket unless the
//! key's id or its quota (requests_per_minute and burst, or reads_per_minute and
//! read_burst) changes, which starts a new bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::Limits;
use crate::error::{GatewayError, RatePolicy};

/// The token buckets of every key sharing one quota, keyed by key id.
pub type Bucket =
    RateLimiter<Arc<str>, DashMapStateStore<Arc<str>>, DefaultClock, StateInformationMiddleware>;

/// Bucket sets by (per minute, burst).
type Buckets = Mutex<HashMap<(u32, u32), Arc<Bucket>>>;

/// Limiter state that survives reloads of the keys file.
#[derive(Default)]
pub struct LimiterPool {
    buckets: Buckets,
    /// Apart from `buckets`, so that a key's reads never share its inference bucket even
    /// when both have the same quota.
    read_buckets: Buckets,
    in_flight: Mutex<HashMap<Arc<str>, Arc<AtomicU32>>>,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl LimiterPool {
    /// The bucket set for `rpm` requests per minute with bursts of `burst`.
    pub fn bucket(&self, rpm: u32, burst: u32) -> Arc<Bucket> {
        bucket_in(&self.buckets, rpm, burst)
    }

    /// The limits of identity `id` (a key's or a network's id), with the state it shares
    /// with earlier loads of the keys file under the same id and limits.
    pub fn key_limits(&self, id: Arc<str>, limits: Limits) -> KeyLimits {
        KeyLimits {
            bucket: self.bucket(limits.requests_per_minute, limits.burst),
            reads: bucket_in(
                &self.read_buckets,
                limits.reads_per_minute,
                limits.read_burst,
            ),
            in_flight: self.in_flight(&id),
            id,
            limits,
        }
    }

    /// The in-flight counter of key `id`.
    pub fn in_flight(&self, id: &Arc<str>) -> Arc<AtomicU32> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(Arc::clone(id)).or_default())
    }

    /// Drops state nobody needs any more: full buckets, idle counters of removed keys.
    pub fn sweep(&self) {
        let mut buckets: Vec<Arc<Bucket>> = Vec::new();
        for set in [&self.buckets, &self.read_buckets] {
            if let Ok(b) = set.lock() {
                buckets.extend(b.values().cloned());
            }
        }
        for bucket in buckets {
            bucket.retain_recent();
            bucket.shrink_to_fit();
        }
        if let Ok(mut map) = self.in_flight.lock() {
            map.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Relaxed) > 0);
        }
    }
}

fn bucket_in(set: &Buckets, rpm: u32, burst: u32) -> Arc<Bucket> {
    let mut buckets = set.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(buckets.entry((rpm, burst)).or_insert_with(|| {
        let quota = Quota::per_minute(nonzero(rpm)).allow_burst(nonzero(burst));
        Arc::new(RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>())
    }))
}

/// One identity's request limits and their live state: its place in the buckets (inference
/// and cheap reads) shared with the identities of the same limits, and its in-flight
/// counter. An API key or a trusted network holds one. The in-process state sits behind
/// these few calls ([`take`], [`take_read`], [`InFlight::acquire`]), so that a store
/// shared by replicas can take its place without a caller changing.
pub struct KeyLimits {
    pub id: Arc<str>,
    pub limits: Limits,
    bucket: Arc<Bucket>,
    reads: Arc<Bucket>,
    in_flight: Arc<AtomicU32>,
}

/// Whole seconds, rounded up.
fn whole_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Whole seconds to wait, at least 1, at most 60 (what OpenAI and Ollama clients honour).
fn retry_secs(wait: Duration) -> u64 {
    whole_secs(wait).clamp(1, 60)
}

/// Takes one request from the key's bucket.
pub fn take(key: &KeyLimits) -> Result<RatePolicy, GatewayError> {
    let l = &key.limits;
    take_from(
        key,
        &key.bucket,
        RatePolicy::DEFAULT,
        l.requests_per_minute,
        l.burst,
    )
}

/// Takes one cheap read from the key's bucket of reads (never from its inference bucket).
pub fn take_read(key: &KeyLimits) -> Result<RatePolicy, GatewayError> {
    let l = &key.limits;
    take_from(
        key,
        &key.reads,
        RatePolicy::READS,
        l.reads_per_minute,
        l.read_burst,
    )
}

fn take_from(
    key: &KeyLimits,
    bucket: &Bucket,
    name: &'static str,
    quota: u32,
    burst: u32,
) -> Result<RatePolicy, GatewayError> {
    // The time for one token to come back, and in whole seconds.
    let period = Duration::from_secs(60) / quota.max(1);
    let refill = retry_secs(period);
    // Tokens still to come back before the bucket is full (the bucket holds `burst`).
    let missing = |remaining: u32| burst.max(1).saturating_sub(remaining);
    match bucket.check_key(&key.id) {
        Ok(snapshot) => {
            let remaining = snapshot.remaining_burst_capacity();
            Ok(RatePolicy {
                name,
                quota,
                remaining,
                reset: if remaining < burst { refill } else { 0 },
                // `remaining` is rounded down, so this is at most one period too long.
                full_in: period.saturating_mul(missing(remaining)),
            })
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(bucket.clock().now());
            Err(GatewayError::RateLimited {
                key_id: Arc::clone(&key.id),
                policy: RatePolicy {
                    name,
                    quota,
                    remaining: 0,
                    reset: retry_secs(wait),
                    // Empty: the next token in `wait`, the others one period apart.
                    full_in: wait + period.saturating_mul(missing(1)),
                },
            })
        }
    }
}

/// Holds one of a key's in-flight slots; released on drop (when the response body ends
/// or the client goes away).
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicU32>,
}

impl InFlight {
    pub fn acquire(key: &KeyLimits) -> Result<Self, GatewayError> {
        let limit = key.limits.max_in_flight;
        key.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map(|_| Self {
                counter: Arc::clone(&key.in_flight),
            })
            .map_err(|_| GatewayError::TooManyInFlight {
                key_id: Arc::clone(&key.id),
                limit,
            })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bans client addresses that fail authentication too often, so keys cannot be guessed.
pub struct AuthThrottle {
    failures: RateLimiter<IpAddr, DashMapStateStore<IpAddr>, DefaultClock>,
    banned: DashMap<IpAddr, Instant>,
    ban: Duration,
}

impl AuthThrottle {
    /// Allows `max_failures` failures per `window` per address, then bans it for `ban`.
    pub fn new(max_failures: u32, window: Duration, ban: Duration) -> Self {
        let period = (window / max_failures.max(1)).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(nonzero(max_failures));
        Self {
            failures: RateLimiter::dashmap(quota),
            banned: DashMap::new(),
            ban,
        }
    }

    /// Refuses a banned address before its credentials are even looked at.
    pub fn check(&self, ip: IpAddr) -> Result<(), GatewayError> {
        let Some(until) = self.banned.get(&ip).map(|e| *e.value()) else {
            return Ok(());
        };
        let now = Instant::now();
        if until > now {
            return Err(GatewayError::AuthThrottled {
                remaining: whole_secs(until - now),
            });
        }
        self.banned.remove_if(&ip, |_, until| *until <= now);
        Ok(())
    }

    /// Records a failed authentication; returns the error to answer with (`error`, or a
    /// ban once the address is over its allowance).
    pub fn fail(&self, ip: IpAddr, error: GatewayError) -> GatewayError {
        if self.failures.check_key(&ip).is_ok() {
            return error;
        }
        self.banned.insert(ip, Instant::now() + self.ban);
        tracing::warn!(client_ip = %ip, ban = %humantime::format_duration(self.ban), "too many failed authentications; address banned");
        GatewayError::AuthThrottled {
            remaining: whole_secs(self.ban),
        }
    }

    /// Drops expired bans and forgotten failure counts.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
    }

    /// Addresses with failure state (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pool: &LimiterPool, limits: Limits) -> KeyLimits {
        pool.key_limits("k".into(), limits)
    }

    #[test]
    fn bucket_is_exact_and_survives_reload() {
        let pool = LimiterPool::default();
        let limits = Limits {
            requests_per_minute: 1,
            burst: 3,
            max_in_flight: 1,
            reads_per_minute: 1,
            read_burst: 3,
            tokens: Default::default(),
        };
        let k = key(&pool, limits);
        let remaining: Vec<u32> = (0..3).map(|_| take(&k).unwrap().remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let err = take(&k).unwrap_err();
        let GatewayError::RateLimited { policy, .. } = err else {
            panic!("{err:?}")
        };
        assert!((1..=60).contains(&policy.reset), "{policy:?}");
        // The same key parsed again (a reload) shares the bucket.
        let again = key(&pool, limits);
        assert!(take(&again).is_err());
        // Its reads have a bucket of their own, though of the same quota.
        let reads: Vec<u32> = (0..3).map(|_| take_read(&k).unwrap().remaining).collect();
        assert_eq!(reads, [2, 1, 0]);
        let err = take_read(&again).unwrap_err();
        let GatewayError::RateLimited { policy, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(policy.name, RatePolicy::READS);
    }

    #[test]
    fn full_in_is_the_time_until_the_bucket_is_full() {
        let pool = LimiterPool::default();
        // One token a second, three in the bucket.
        let k = key(
            &pool,
            Limits {
                requests_per_minute: 60,
                burst: 3,
                max_in_flight: 1,
                reads_per_minute: 60,
                read_burst: 3,
                tokens: Default::default(),
            },
        );
        let s = Duration::from_secs(1);
        let full: Vec<Duration> = (0..3).map(|_| take(&k).unwrap().full_in).collect();
        // Rounded down remaining: each at most one period over the truth.
        for (got, truth) in full.iter().zip([s, 2 * s, 3 * s]) {
            assert!(*got >= truth - s && *got <= truth, "{got:?} vs {truth:?}");
        }
        let err = take(&k).unwrap_err();
        let GatewayError::RateLimited { policy, .. } = err else {
            panic!("{err:?}")
        };
        // Empty: the next token in under a second, then two more.
        assert!(
            policy.full_in > 2 * s && policy.full_in <= 3 * s,
            "{policy:?}"
        );
    }

    #[test]
    fn in_flight_slots_are_released_on_drop() {
        let pool = LimiterPool::default();
        let k = key(
            &pool,
            Limits {
                requests_per_minute: 60,
                burst: 60,
                max_in_flight: 2,
                reads_per_minute: 60,
                read_burst: 60,
                tokens: Default::default(),
            },
        );
        let a = InFlight::acquire(&k).unwrap();
        let _b = InFlight::acquire(&k).unwrap();
        assert!(matches!(
            InFlight::acquire(&k),
            Err(GatewayError::TooManyInFlight { limit: 2, .. })
        ));
        drop(a);
        assert!(InFlight::acquire(&k).is_ok());
    }

    #[test]
    fn throttle_bans_after_max_failures_then_sweeps() {
        let t = AuthThrottle::new(3, Duration::from_secs(60), Duration::from_secs(30));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check(ip).is_ok());
            assert!(matches!(
                t.fail(ip, GatewayError::InvalidKey),
                GatewayError::InvalidKey
            ));
        }
        assert!(matches!(
            t.fail(ip, GatewayError::InvalidKey),
            GatewayError::AuthThrottled { remaining: 30 }
        ));
        assert!(matches!(
            t.check(ip),
            Err(GatewayError::AuthThrottled { .. })
        ));
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(t.check(other).is_ok());
        t.sweep();
        assert!(t.check(ip).is_err(), "a live ban survives the sweep");
    }

    #[test]
    fn retry_after_is_whole_seconds_between_1_and_60() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_secs(Duration::from_secs(3600)), 60);
    }
}
