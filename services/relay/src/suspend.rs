//! Destination domains an operator suspended (`Queue.Suspend`): KV `suspended` (key = the
//! domain's key token), shared by every relay replica. Each replica follows the bucket and
//! keeps the set in memory; the consumer holds a suspended domain's jobs instead of
//! delivering them, after reading the bucket once more: a replica that has not yet seen a
//! `Resume` would otherwise hold the jobs `Resume` just sent round, for another retry delay.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures::StreamExt;
use mailflow_bus::key_token;
use tokio_util::sync::CancellationToken;

/// The KV bucket.
pub const BUCKET: &str = "suspended";

/// A domain as kept here and in the bucket's values: lower case, no final dot.
fn normal(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// A domain as a KV key.
fn key(domain: &str) -> String {
    key_token(domain.trim_end_matches('.'))
}

/// Why the suspension bucket could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// A suspension could not be stored.
    #[error("cannot store the suspension: {0}")]
    Put(#[from] kv::PutError),
    /// A suspension could not be lifted.
    #[error("cannot lift the suspension: {0}")]
    Purge(#[from] kv::PurgeError),
    /// The bucket could not be followed.
    #[error("cannot follow the suspensions: {0}")]
    Watch(#[from] kv::WatchError),
    /// Following the bucket failed or ended.
    #[error("the suspension watch stopped: {0}")]
    Watcher(#[from] kv::WatcherError),
    /// The watch ended without an error.
    #[error("the suspension watch ended")]
    Ended,
}

/// The suspended domains.
#[derive(Clone)]
pub struct Suspensions {
    /// KV `suspended`.
    kv: kv::Store,
    /// The domains, lower case, as this replica last saw them.
    domains: Arc<RwLock<HashSet<String>>>,
}

impl Suspensions {
    /// Follows `kv` until `shutdown`.
    pub fn open(kv: kv::Store, shutdown: CancellationToken) -> Self {
        let this = Self {
            kv,
            domains: Arc::default(),
        };
        let follower = this.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                if let Err(e) = follower.follow().await {
                    tracing::warn!(error = %e, "suspension watch interrupted; following again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        });
        this
    }

    async fn follow(&self) -> Result<(), SuspendError> {
        let mut entries = self.kv.watch_with_history(">").await?;
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            let domain = String::from_utf8_lossy(&entry.value).to_string();
            let mut domains = self.domains.write().unwrap_or_else(|p| p.into_inner());
            if entry.operation == Operation::Put {
                domains.insert(domain);
            } else {
                domains.retain(|d| key(d) != entry.key);
            }
        }
        Err(SuspendError::Ended)
    }

    /// True when delivery to `domain` is suspended.
    pub fn contains(&self, domain: &str) -> bool {
        self.domains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&domain.to_ascii_lowercase())
    }

    /// True when the bucket itself still says `domain` (which this replica sees as
    /// suspended) is. The view is left to the follower: changed here, a suspension stored
    /// again between this read and the change would be lost from it. When the bucket
    /// cannot be read, this replica's view stands.
    pub async fn still_suspended(&self, domain: &str) -> bool {
        let domain = normal(domain);
        match self.kv.get(key(&domain)).await {
            Ok(Some(_)) => true,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(%domain, error = %e, "cannot read the suspension; holding the job");
                true
            }
        }
    }

    /// Every suspended domain, as this replica last saw them.
    pub fn all(&self) -> Vec<String> {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        domains.iter().cloned().collect()
    }

    /// Suspends or releases `domain` for every replica (this one at once).
    pub async fn set(&self, domain: &str, suspended: bool) -> Result<(), SuspendError> {
        let domain = normal(domain);
        if suspended {
            self.kv
                .put(key(&domain), Bytes::from(domain.clone()))
                .await?;
            self.domains
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(domain);
        } else {
            self.kv.purge(key(&domain)).await?;
            self.domains
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&domain);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_nats_safe() {
        assert_eq!(key("Example.COM."), "example=2Ecom");
        assert_eq!(key("xn--bcher-kva.test"), "xn--bcher-kva=2Etest");
    }
}
