//! A short-lived cache of policy verdicts, so that the same question (same client, session
//! facts, sender and recipient) within `ttl` costs no round trip. Only definite answers
//! (accept, reject) are kept; a temporary refusal is asked again. A directory change is
//! therefore seen by the ingress at most `ttl` later.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mailflow_proto::v1::{Verdict, verdict::Action};

/// Entries kept at most; the cache is emptied when full (simple, and bounded).
const MAX_ENTRIES: usize = 50_000;

/// Verdicts by encoded request.
#[derive(Debug)]
pub struct VerdictCache {
    /// How long a verdict is reused; zero disables the cache.
    ttl: Duration,
    /// Request bytes → (verdict, expiry).
    entries: Mutex<HashMap<Vec<u8>, (Verdict, Instant)>>,
}

impl VerdictCache {
    /// A cache keeping verdicts for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached verdict for `key`, if still fresh.
    pub fn get(&self, key: &[u8]) -> Option<Verdict> {
        self.get_at(key, Instant::now())
    }

    /// The cached verdict for `key` if fresh at `now`.
    fn get_at(&self, key: &[u8], now: Instant) -> Option<Verdict> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(v, _)| v.clone())
    }

    /// Remembers a definite verdict.
    pub fn put(&self, key: Vec<u8>, verdict: &Verdict) {
        if self.ttl.is_zero()
            || verdict.no_cache
            || !matches!(verdict.action(), Action::Accept | Action::Reject)
        {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (verdict.clone(), Instant::now() + self.ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(action: Action) -> Verdict {
        Verdict {
            action: action as i32,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_definite_answers_for_the_ttl() {
        let cache = VerdictCache::new(Duration::from_secs(60));
        cache.put(b"a".to_vec(), &verdict(Action::Accept));
        cache.put(b"t".to_vec(), &verdict(Action::Tempfail));
        assert_eq!(cache.get(b"a").map(|v| v.action()), Some(Action::Accept));
        assert!(cache.get(b"t").is_none());
        assert!(cache.get(b"other").is_none());
        let later = Instant::now() + Duration::from_secs(61);
        assert!(cache.get_at(b"a", later).is_none(), "expired after the ttl");
        let off = VerdictCache::new(Duration::ZERO);
        off.put(b"a".to_vec(), &verdict(Action::Accept));
        assert!(off.get(b"a").is_none());
        let counted = Verdict {
            no_cache: true,
            ..verdict(Action::Accept)
        };
        cache.put(b"n".to_vec(), &counted);
        assert!(
            cache.get(b"n").is_none(),
            "a verdict marked no_cache is not kept"
        );
    }
}
