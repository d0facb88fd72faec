//! Destination domains an operator suspended (`Queue.Suspend`): KV `suspended` (key = the
//! domain's key token), shared by every relay replica. Each replica follows the bucket and
//! keeps the set in memory; the consumer holds a suspended domain's jobs instead of
//! delivering them.

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

/// A domain as a KV key.
fn key(domain: &str) -> String {
    key_token(domain.trim_end_matches('.'))
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

    async fn follow(&self) -> Result<(), String> {
        let mut entries = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            let domain = String::from_utf8_lossy(&entry.value).to_string();
            let mut domains = self.domains.write().unwrap_or_else(|p| p.into_inner());
            if entry.operation == Operation::Put {
                domains.insert(domain);
            } else {
                domains.retain(|d| key(d) != entry.key);
            }
        }
        Err("watch ended".into())
    }

    /// True when delivery to `domain` is suspended.
    pub fn contains(&self, domain: &str) -> bool {
        self.domains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&domain.to_ascii_lowercase())
    }

    /// Every suspended domain, as this replica last saw them.
    pub fn all(&self) -> Vec<String> {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        domains.iter().cloned().collect()
    }

    /// Suspends or releases `domain` for every replica (this one at once).
    pub async fn set(&self, domain: &str, suspended: bool) -> Result<(), String> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if suspended {
            self.kv
                .put(key(&domain), Bytes::from(domain.clone()))
                .await
                .map_err(|e| e.to_string())?;
            self.domains
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(domain);
        } else {
            self.kv
                .purge(key(&domain))
                .await
                .map_err(|e| e.to_string())?;
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
