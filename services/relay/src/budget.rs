//! The relay's budget of body memory. A delivery holds its message's body whole (kept for
//! the notices the attempt may owe) and, while it sends it, one encoded piece of it
//! (`smtp_client::BODY_PIECE`: the body goes out a piece at a time), so what one process
//! holds is bounded by counting each body's octets plus one piece: `concurrency`
//! deliveries of messages near `max_message_size` would otherwise hold gigabytes.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::smtp_client::BODY_PIECE;

/// Octets are counted in KiB: a semaphore takes at most `u32::MAX` permits at once.
const UNIT: u64 = 1024;

/// The octets of bodies the deliveries under way may hold together.
#[derive(Clone)]
pub struct BodyBudget {
    /// One permit per KiB of the budget.
    permits: Arc<Semaphore>,
    /// The whole budget, in KiB: a body larger than it takes all of it and goes alone.
    total: u32,
}

impl BodyBudget {
    /// A budget of `octets` (at least 1 KiB).
    pub fn new(octets: usize) -> Self {
        let total = u32::try_from(octets as u64 / UNIT)
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until a body of `size` octets (counted with one encoded piece of it) fits in
    /// what the others leave; the budget gets it back when the permit is dropped.
    /// Deliveries waiting are counted in the gauge `mailflow_relay_body_memory_waiting`.
    pub async fn reserve(&self, size: u64) -> Option<OwnedSemaphorePermit> {
        let held = size.saturating_add(size.min(BODY_PIECE as u64));
        let kib = u32::try_from(held.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        if let Ok(permit) = self.permits.clone().try_acquire_many_owned(kib) {
            return Some(permit);
        }
        let _waiting = Waiting::start();
        // The semaphore is never closed: `None` cannot happen.
        self.permits.clone().acquire_many_owned(kib).await.ok()
    }
}

/// One delivery counted as waiting for body memory while this lives (also when the wait
/// is abandoned).
struct Waiting;

impl Waiting {
    fn start() -> Self {
        metrics::gauge!("mailflow_relay_body_memory_waiting").increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("mailflow_relay_body_memory_waiting").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bodies_wait_for_room_and_a_huge_one_goes_alone() {
        // A body smaller than a piece counts twice: 3 KiB and 2 KiB fill 10 KiB.
        let budget = BodyBudget::new(10 * 1024);
        let first = budget.reserve(3 * 1024).await;
        let second = budget.reserve(2 * 1024).await;
        // Full: the next waits until one is given back.
        let third = tokio::time::timeout(Duration::from_secs(1), budget.reserve(1)).await;
        assert!(third.is_err(), "room was found in a full budget");
        drop(second);
        let small = budget.reserve(100).await;
        drop((first, small));
        // Larger than the whole budget: it takes all of it, and nothing else fits meanwhile.
        let huge = budget.reserve(1 << 30).await;
        let other = tokio::time::timeout(Duration::from_secs(1), budget.reserve(1)).await;
        assert!(other.is_err());
        drop(huge);
        assert!(budget.reserve(5 * 1024).await.is_some());
    }

    /// A large body counts once, with one encoded piece (64 KiB): 600 KiB and 250 KiB fit
    /// in 1 MiB together (counted whole twice, they would not).
    #[tokio::test(start_paused = true)]
    async fn a_large_body_counts_once_with_one_piece() {
        let budget = BodyBudget::new(1024 * 1024);
        let room = |size| tokio::time::timeout(Duration::from_secs(1), budget.reserve(size));
        let first = room(600 * 1024).await;
        let second = room(250 * 1024).await;
        assert!(first.is_ok() && second.is_ok(), "both fit");
        // 664 + 314 KiB taken: 100 KiB more (164 with its piece) does not fit.
        assert!(room(100 * 1024).await.is_err());
        drop(first);
        assert!(room(100 * 1024).await.is_ok());
    }
}
