//! The directory: local domains and users in the JetStream KV bucket `directory`.
//!
//! Keys are `domain.<domain>` and `user.<domain>.<local part>`, lower-cased, with every
//! octet outside `[A-Za-z0-9_-]` written as `=XX` (NATS keys allow only a few characters,
//! and the dot separates tokens). Values are protobuf messages.
//!
//! Every policy replica keeps the whole directory in memory, fed by a KV watch: lookups in
//! the SMTP session cost no round trip, and a change made through any replica reaches every
//! other one as fast as NATS delivers it (milliseconds). Writes go to KV first and are then
//! applied to the local copy at once, so a client that just added a user can use it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use async_nats::jetstream::kv::{Entry, Operation, Store};
use bytes::Bytes;
use futures::StreamExt;
use mailflow_proto::v1::{DomainInfo, StoredUser};
use mailflow_smtp::address;
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Errors of directory operations.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The domain is not a valid host name.
    #[error("invalid domain {0:?}")]
    InvalidDomain(String),
    /// The address is not `local@domain`.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// The user's domain is not a local domain.
    #[error("domain {0} is not a local domain")]
    UnknownDomain(String),
    /// An empty password.
    #[error("the password must not be empty")]
    EmptyPassword,
    /// The KV store failed, or the directory has not been loaded yet.
    #[error("directory storage: {0}")]
    Storage(String),
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
}

fn storage(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Storage(e.to_string())
}

/// The in-memory copy of the bucket.
#[derive(Debug, Default)]
struct Snapshot {
    /// Local domains.
    domains: BTreeSet<String>,
    /// Users by (domain, local part), both lower case.
    users: BTreeMap<(String, String), StoredUser>,
}

impl Snapshot {
    /// Applies one KV entry (a put or a delete) to the copy.
    fn apply(&mut self, entry: &Entry) {
        self.set(
            &entry.key,
            (entry.operation == Operation::Put).then_some(&entry.value),
        );
    }

    /// Sets `key` to `value`, or removes it when `None`.
    fn set(&mut self, key: &str, value: Option<&Bytes>) {
        let put = value.is_some();
        if let Some(rest) = key.strip_prefix("domain.") {
            let domain = untoken(rest);
            if put {
                self.domains.insert(domain);
            } else {
                self.domains.remove(&domain);
            }
        } else if let Some(rest) = key.strip_prefix("user.") {
            let Some((domain, local)) = rest.split_once('.') else {
                return;
            };
            let key_parts = (untoken(domain), untoken(local));
            match value.map(|v| StoredUser::decode(v.clone())) {
                Some(Ok(user)) => {
                    self.users.insert(key_parts, user);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "undecodable user record"),
                None => {
                    self.users.remove(&key_parts);
                }
            }
        }
    }
}

/// The directory, shared by every policy replica through KV.
#[derive(Clone)]
pub struct Directory {
    /// The `directory` bucket.
    kv: Store,
    /// The in-memory copy.
    cache: Arc<RwLock<Snapshot>>,
    /// True once the copy holds the whole bucket.
    ready: watch::Receiver<bool>,
}

/// Encodes one key token.
fn token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.to_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Decodes one key token.
fn untoken(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn domain_key(domain: &str) -> String {
    format!("domain.{}", token(domain))
}

fn user_key(local: &str, domain: &str) -> String {
    format!("user.{}.{}", token(domain), token(local))
}

/// Splits and validates `local@domain`.
fn split_address(address: &str) -> Result<(String, String), DirectoryError> {
    let mailbox = address::parse_mailbox(address)
        .map_err(|_| DirectoryError::InvalidAddress(address.to_string()))?;
    Ok((mailbox.local.to_lowercase(), mailbox.domain))
}

/// How long a lookup waits for the first load before answering "unavailable".
const LOAD_WAIT: Duration = Duration::from_secs(5);

impl Directory {
    /// Opens the directory and starts following the bucket until `shutdown`.
    pub fn open(kv: Store, shutdown: CancellationToken) -> Self {
        let cache = Arc::new(RwLock::new(Snapshot::default()));
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(follow(kv.clone(), cache.clone(), ready_tx, shutdown));
        Self { kv, cache, ready }
    }

    /// Waits until the copy is complete.
    async fn loaded(&self) -> Result<(), DirectoryError> {
        let mut ready = self.ready.clone();
        match tokio::time::timeout(LOAD_WAIT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(DirectoryError::Storage("directory not loaded yet".into())),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes an entry to KV, then applies it locally.
    async fn put(&self, key: String, value: Vec<u8>) -> Result<(), DirectoryError> {
        let value = Bytes::from(value);
        self.kv.put(&key, value.clone()).await.map_err(storage)?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set(&key, Some(&value));
        Ok(())
    }

    /// Adds a local domain (idempotent).
    pub async fn add_domain(&self, domain: &str) -> Result<String, DirectoryError> {
        let domain = domain.trim().trim_end_matches('.').to_lowercase();
        if !address::is_domain(&domain) {
            return Err(DirectoryError::InvalidDomain(domain));
        }
        let value = DomainInfo {
            domain: domain.clone(),
        };
        self.put(domain_key(&domain), value.encode_to_vec()).await?;
        Ok(domain)
    }

    /// True when `domain` is local.
    pub async fn is_local_domain(&self, domain: &str) -> Result<bool, DirectoryError> {
        self.loaded().await?;
        Ok(self.read().domains.contains(&domain.to_lowercase()))
    }

    /// Every local domain, sorted.
    pub async fn domains(&self) -> Result<Vec<String>, DirectoryError> {
        self.loaded().await?;
        Ok(self.read().domains.iter().cloned().collect())
    }

    /// Adds or replaces a user; only an argon2id hash of the password is stored.
    pub async fn add_user(&self, address: &str, password: &str) -> Result<String, DirectoryError> {
        let (local, domain) = split_address(address)?;
        if !self.is_local_domain(&domain).await? {
            return Err(DirectoryError::UnknownDomain(domain));
        }
        if password.is_empty() {
            return Err(DirectoryError::EmptyPassword);
        }
        let password = password.to_string();
        let hash = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| DirectoryError::Hash(e.to_string()))?
        .map_err(|e| DirectoryError::Hash(e.to_string()))?;
        let canonical = format!("{local}@{domain}");
        let value = StoredUser {
            address: canonical.clone(),
            password_hash: hash,
        };
        self.put(user_key(&local, &domain), value.encode_to_vec())
            .await?;
        Ok(canonical)
    }

    /// The stored user for `local@domain`, if any.
    pub async fn user(
        &self,
        local: &str,
        domain: &str,
    ) -> Result<Option<StoredUser>, DirectoryError> {
        self.loaded().await?;
        let key = (domain.to_lowercase(), local.to_lowercase());
        Ok(self.read().users.get(&key).cloned())
    }

    /// Users, of one domain or of all, sorted.
    pub async fn users(&self, domain: Option<&str>) -> Result<Vec<String>, DirectoryError> {
        self.loaded().await?;
        let domain = domain.map(str::to_lowercase);
        Ok(self
            .read()
            .users
            .iter()
            .filter(|((d, _), _)| domain.as_ref().is_none_or(|want| want == d))
            .map(|(_, u)| u.address.clone())
            .collect())
    }
}

/// Follows the bucket: loads it whole, then applies changes as they come; after a lost
/// connection it loads everything again.
async fn follow(
    kv: Store,
    cache: Arc<RwLock<Snapshot>>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = follow_once(&kv, &cache, &ready, &shutdown).await {
            tracing::warn!(error = %e, "directory watch interrupted; reloading");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

async fn follow_once(
    kv: &Store,
    cache: &RwLock<Snapshot>,
    ready: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), DirectoryError> {
    let mut pending = kv.status().await.map_err(storage)?.values();
    let mut entries = kv.watch_with_history(">").await.map_err(storage)?;
    let publish = |fresh: Snapshot| {
        *cache.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        ready.send_replace(true);
    };
    let mut loading = Some(Snapshot::default());
    if pending == 0 {
        publish(loading.take().unwrap_or_default());
    }
    loop {
        let next = tokio::select! {
            e = entries.next() => e,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Some(entry) = next else {
            return Err(storage("watch ended"));
        };
        let entry = entry.map_err(storage)?;
        match loading.as_mut() {
            Some(snapshot) => {
                snapshot.apply(&entry);
                pending = pending.saturating_sub(1);
                if entry.delta == 0 || pending == 0 {
                    publish(loading.take().unwrap_or_default());
                }
            }
            None => cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply(&entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_nats_tokens_and_decode_back() {
        assert_eq!(domain_key("Example.TEST"), "domain.example=2Etest");
        assert_eq!(
            user_key("first.last+tag", "example.test"),
            "user.example=2Etest.first=2Elast=2Btag"
        );
        let key = user_key("\"a b\"", "x.test");
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b))
        );
        assert_eq!(untoken("first=2Elast=2Btag"), "first.last+tag");
        assert_eq!(untoken(&token("Jöran@x")), "jöran@x");
    }
}
