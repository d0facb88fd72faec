//! Per-destination limits of one relay replica: at most `concurrency` deliveries to one
//! domain at a time (Postfix's `default_destination_concurrency_limit` is 20 too) and,
//! optionally, at most `rate` deliveries per second to it.
//!
//! A job whose destination is at its limit does not wait long: after [`WAIT`] it is put
//! back at the end of the delivery queue, so that it neither holds one of the relay's
//! delivery slots nor delays mail for other destinations (see the consumer).
//!
//! A destination none of whose servers could be reached ([`Unreachable`], Postfix's "dead"
//! destinations) is not tried again for a while: its other mail is deferred at once, so a
//! black-holed domain costs one connection timeout per back-off period, not one per
//! message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::deliver::Outcome;

/// How long a job waits for its destination before it is requeued.
pub const WAIT: Duration = Duration::from_millis(50);

/// How many idle destinations are remembered before they are forgotten.
const REMEMBERED: usize = 10_000;

/// One destination's state.
struct Destination {
    /// Deliveries in progress.
    permits: Arc<Semaphore>,
    /// When the next delivery may start under the rate limit.
    next_start: Mutex<Instant>,
}

/// The limits, shared by the consumer's tasks.
pub struct Destinations {
    /// Deliveries to one domain at once.
    concurrency: usize,
    /// The gap between two starts to one domain (zero: no rate limit).
    spacing: Duration,
    /// State by domain.
    domains: Mutex<HashMap<String, Arc<Destination>>>,
}

impl Destinations {
    /// At most `concurrency` deliveries at once and `rate` per second (0: no limit) per
    /// domain.
    pub fn new(concurrency: usize, rate: f64) -> Self {
        let spacing = if rate > 0.0 {
            Duration::from_secs_f64(1.0 / rate)
        } else {
            Duration::ZERO
        };
        Self {
            concurrency: concurrency.max(1),
            spacing,
            domains: Mutex::new(HashMap::new()),
        }
    }

    fn destination(&self, domain: &str) -> Arc<Destination> {
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        if domains.len() > REMEMBERED {
            let now = Instant::now();
            let full = self.concurrency;
            domains.retain(|_, d| {
                d.permits.available_permits() < full
                    || *d.next_start.lock().unwrap_or_else(|p| p.into_inner()) > now
            });
        }
        domains
            .entry(domain.to_string())
            .or_insert_with(|| {
                Arc::new(Destination {
                    permits: Arc::new(Semaphore::new(self.concurrency)),
                    next_start: Mutex::new(Instant::now()),
                })
            })
            .clone()
    }

    /// A delivery slot for `domain`, waiting at most `wait`; `None` when the destination
    /// stays at its limit that long. Dropping the permit frees the slot.
    pub async fn acquire(&self, domain: &str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let dest = self.destination(domain);
        let deadline = Instant::now() + wait;
        let permit = tokio::time::timeout_at(deadline, dest.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        if self.spacing.is_zero() {
            return Some(permit);
        }
        let start = {
            let mut next = dest.next_start.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(Instant::now());
            if start > deadline {
                return None;
            }
            *next = start + self.spacing;
            start
        };
        tokio::time::sleep_until(start).await;
        Some(permit)
    }
}

/// Destinations recently found unreachable, with the outcome their mail gets meanwhile.
pub struct Unreachable {
    /// How long after a failure the destination is not tried.
    backoff: Duration,
    /// Until when, and what to answer, by destination.
    map: Mutex<HashMap<String, (Instant, Outcome)>>,
}

impl Unreachable {
    /// Destinations are left alone for `backoff` after a failure (zero: never).
    pub fn new(backoff: Duration) -> Self {
        Self {
            backoff,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The outcome for mail to `key` while it is marked unreachable.
    pub fn check(&self, key: &str) -> Option<Outcome> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((until, outcome)) if *until > Instant::now() => Some(outcome.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Marks `key` unreachable after a failure that gave `outcome`.
    pub fn mark(&self, key: &str, outcome: &Outcome) {
        if self.backoff.is_zero() {
            return;
        }
        let mut outcome = outcome.clone();
        outcome.reply.text = format!(
            "{} (destination unreachable: not tried again for {}s)",
            outcome.reply.text,
            self.backoff.as_secs()
        );
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > REMEMBERED {
            let now = Instant::now();
            map.retain(|_, (until, _)| *until > now);
        }
        map.insert(key.to_string(), (Instant::now() + self.backoff, outcome));
    }

    /// Forgets a failure of `key` (it answered).
    pub fn clear(&self, key: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::RecipientState;

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_destination_is_left_alone_for_the_backoff() {
        let u = Unreachable::new(Duration::from_secs(60));
        assert!(u.check("a.test").is_none());
        let failed = Outcome::new(RecipientState::Deferred, 451, "4.4.1", "timeout".into());
        u.mark("a.test", &failed);
        let meanwhile = u.check("a.test").unwrap();
        assert_eq!(meanwhile.state, RecipientState::Deferred);
        assert!(
            meanwhile
                .reply
                .text
                .starts_with("timeout (destination unreachable")
        );
        assert!(u.check("b.test").is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(u.check("a.test").is_none());
        u.mark("a.test", &failed);
        u.clear("a.test");
        assert!(u.check("a.test").is_none());
        let never = Unreachable::new(Duration::ZERO);
        never.mark("a.test", &failed);
        assert!(never.check("a.test").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_limited_per_domain() {
        let d = Destinations::new(2, 0.0);
        let a1 = d.acquire("a.test", WAIT).await.unwrap();
        let _a2 = d.acquire("a.test", WAIT).await.unwrap();
        let before = Instant::now();
        assert!(d.acquire("a.test", WAIT).await.is_none());
        assert_eq!(before.elapsed(), WAIT);
        // Another domain is not affected.
        assert!(d.acquire("b.test", WAIT).await.is_some());
        drop(a1);
        assert!(d.acquire("a.test", Duration::ZERO).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_starts() {
        let d = Destinations::new(10, 4.0);
        let wait = Duration::from_millis(300);
        let t0 = Instant::now();
        let _p = d.acquire("a.test", wait).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        let _p = d.acquire("a.test", wait).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(250));
        // The next start is 250 ms away, beyond a shorter wait: requeue.
        assert!(d.acquire("a.test", WAIT).await.is_none());
        let _p = d.acquire("a.test", wait).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
    }
}
