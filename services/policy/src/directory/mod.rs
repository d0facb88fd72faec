//! The directory: local domains, users, aliases and DKIM keys in the JetStream KV bucket
//! `directory`
//! (keys in [`keys`], values protobuf messages).
//!
//! Every policy replica keeps the whole directory in memory, fed by a KV watch: lookups in
//! the SMTP session cost no round trip, and a change made through any replica reaches every
//! other one as fast as NATS delivers it (milliseconds). Writes go to KV first and are then
//! applied to the local copy at once, so a client that just added a user can use it.

mod keys;
mod snapshot;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use async_nats::jetstream::kv::{Entry, Operation, Store};
use bytes::Bytes;
use futures::StreamExt;
use mailflow_bus::compare_and_set;
use mailflow_proto::v1::{AliasInfo, DkimAlgorithm, DkimKeyInfo, DomainInfo, StoredUser};
use mailflow_runtime::config::Transport;
use mailflow_smtp::address;
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use keys::Key;
pub use snapshot::{ExpandError, MAX_EXPANSION, Snapshot};

/// Errors of directory operations.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The domain is not a valid host name.
    #[error("invalid domain {0:?}")]
    InvalidDomain(String),
    /// The address is not `local@domain`.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// The address's domain is not a local domain.
    #[error("domain {0} is not a local domain")]
    UnknownDomain(String),
    /// No such domain, user or alias.
    #[error("{0} not found")]
    NotFound(String),
    /// A domain that still has users or aliases.
    #[error("domain {domain} still has {users} users and {aliases} aliases; remove them first")]
    DomainInUse {
        /// The domain.
        domain: String,
        /// How many users it has.
        users: usize,
        /// How many aliases it has (the catch-all included).
        aliases: usize,
    },
    /// An alias needs at least one target.
    #[error("an alias needs at least one target")]
    NoTargets,
    /// An empty password.
    #[error("the password must not be empty")]
    EmptyPassword,
    /// The KV store failed, or the directory has not been loaded yet.
    #[error("directory storage: {0}")]
    Storage(String),
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
    /// A transport that does not parse.
    #[error("{0}")]
    InvalidTransport(String),
    /// A DKIM selector that is not a DNS label sequence.
    #[error("invalid DKIM selector {0:?}")]
    InvalidSelector(String),
    /// The key could not be generated.
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
}

fn storage(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Storage(e.to_string())
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

/// Splits and validates `local@domain`, lower-casing the local part.
fn split_address(address: &str) -> Result<(String, String), DirectoryError> {
    let mailbox = address::parse_mailbox(address.trim())
        .map_err(|_| DirectoryError::InvalidAddress(address.to_string()))?;
    if mailbox.is_address_literal() {
        return Err(DirectoryError::InvalidAddress(address.to_string()));
    }
    Ok((mailbox.local.to_lowercase(), mailbox.domain))
}

/// A domain as the directory keeps it: trimmed, without the root's dot, lower case.
fn normal_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_lowercase()
}

/// Splits an alias source: `local@domain`, or `@domain` for the catch-all (empty local).
fn split_source(source: &str) -> Result<(String, String), DirectoryError> {
    match source.trim().strip_prefix('@') {
        Some(domain) if address::is_domain(domain) => Ok((String::new(), domain.to_lowercase())),
        Some(_) => Err(DirectoryError::InvalidAddress(source.to_string())),
        None => split_address(source),
    }
}

/// The canonical spelling of an address: a local domain's address is lower-cased whole, as
/// the directory ignores case; a remote one keeps its local part.
fn canonical(local: &str, domain: &str, is_local: bool) -> String {
    if is_local {
        format!("{}@{domain}", local.to_lowercase())
    } else {
        format!("{local}@{domain}")
    }
}

/// Hashes a password with argon2id on the blocking pool.
async fn hash_password(password: &str) -> Result<String, DirectoryError> {
    if password.is_empty() {
        return Err(DirectoryError::EmptyPassword);
    }
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| DirectoryError::Hash(e.to_string()))?
    .map_err(|e| DirectoryError::Hash(e.to_string()))
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

    /// Runs `f` over the complete copy (waiting for the first load).
    pub async fn view<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> Result<R, DirectoryError> {
        let mut ready = self.ready.clone();
        match tokio::time::timeout(LOAD_WAIT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(f(&self.cache.read().unwrap_or_else(|p| p.into_inner()))),
            _ => Err(DirectoryError::Storage("directory not loaded yet".into())),
        }
    }

    /// Applies a write to the local copy at once (the watch brings it too, later).
    fn apply_locally(&self, key: &str, value: Option<&Bytes>) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set(key, value);
    }

    /// Writes an entry to KV, then applies it locally.
    async fn put(&self, key: Key, value: Vec<u8>) -> Result<(), DirectoryError> {
        let (key, value) = (key.encode(), Bytes::from(value));
        self.kv.put(&key, value.clone()).await.map_err(storage)?;
        self.apply_locally(&key, Some(&value));
        Ok(())
    }

    /// Deletes an entry in KV, then locally.
    async fn delete(&self, key: Key) -> Result<(), DirectoryError> {
        let key = key.encode();
        self.kv.delete(&key).await.map_err(storage)?;
        self.apply_locally(&key, None);
        Ok(())
    }

    /// Fails with `UnknownDomain` unless `domain` is local.
    async fn require_local(&self, domain: &str) -> Result<(), DirectoryError> {
        if self.view(|s| s.is_local(domain)).await? {
            Ok(())
        } else {
            Err(DirectoryError::UnknownDomain(domain.to_string()))
        }
    }

    /// Adds a local domain, or changes its transport (empty: the relay's default).
    pub async fn add_domain(
        &self,
        domain: &str,
        transport: &str,
    ) -> Result<DomainInfo, DirectoryError> {
        let domain = normal_domain(domain);
        if !address::is_domain(&domain) {
            return Err(DirectoryError::InvalidDomain(domain));
        }
        let transport = match transport.trim() {
            "" => String::new(),
            t => t
                .parse::<Transport>()
                .map_err(|e| DirectoryError::InvalidTransport(e.to_string()))?
                .to_string(),
        };
        let value = DomainInfo {
            domain: domain.clone(),
            transport,
        };
        self.put(Key::Domain(domain), value.encode_to_vec()).await?;
        Ok(value)
    }

    /// Removes a local domain that has no users and no aliases left.
    pub async fn remove_domain(&self, domain: &str) -> Result<String, DirectoryError> {
        let domain = normal_domain(domain);
        let (known, users, aliases) = self
            .view(|s| {
                (
                    s.is_local(&domain),
                    snapshot::of_domain(&s.users, Some(&domain)).count(),
                    snapshot::of_domain(&s.aliases, Some(&domain)).count(),
                )
            })
            .await?;
        if !known {
            return Err(DirectoryError::NotFound(format!("domain {domain}")));
        }
        if users + aliases > 0 {
            return Err(DirectoryError::DomainInUse {
                domain,
                users,
                aliases,
            });
        }
        self.delete(Key::Domain(domain.clone())).await?;
        Ok(domain)
    }

    /// Every local domain with its transport, sorted.
    pub async fn domains(&self) -> Result<Vec<DomainInfo>, DirectoryError> {
        self.view(|s| {
            s.domains
                .iter()
                .map(|d| DomainInfo {
                    domain: d.clone(),
                    transport: s.transport(d).to_string(),
                })
                .collect()
        })
        .await
    }

    /// Adds or replaces a user; only an argon2id hash of the password is stored.
    pub async fn add_user(&self, address: &str, password: &str) -> Result<String, DirectoryError> {
        let (local, domain) = split_address(address)?;
        self.require_local(&domain).await?;
        self.store_user(local, domain, password).await
    }

    /// Replaces the password of an existing user.
    pub async fn set_password(
        &self,
        address: &str,
        password: &str,
    ) -> Result<String, DirectoryError> {
        let (local, domain) = split_address(address)?;
        if self.user(&local, &domain).await?.is_none() {
            return Err(DirectoryError::NotFound(format!("user {local}@{domain}")));
        }
        self.store_user(local, domain, password).await
    }

    async fn store_user(
        &self,
        local: String,
        domain: String,
        password: &str,
    ) -> Result<String, DirectoryError> {
        let hash = hash_password(password).await?;
        let address = canonical(&local, &domain, true);
        let value = StoredUser {
            address: address.clone(),
            password_hash: hash,
        };
        self.put(Key::User(domain, local), value.encode_to_vec())
            .await?;
        Ok(address)
    }

    /// Removes a user. Its mailbox on disk is left alone: deleting mail is the operator's
    /// decision.
    pub async fn remove_user(&self, address: &str) -> Result<String, DirectoryError> {
        let (local, domain) = split_address(address)?;
        let Some(user) = self.user(&local, &domain).await? else {
            return Err(DirectoryError::NotFound(format!("user {local}@{domain}")));
        };
        self.delete(Key::User(domain, local)).await?;
        Ok(user.address)
    }

    /// The stored user for `local@domain`, if any.
    pub async fn user(
        &self,
        local: &str,
        domain: &str,
    ) -> Result<Option<StoredUser>, DirectoryError> {
        self.view(|s| s.user(local, domain).cloned()).await
    }

    /// Users, of one domain or of all, sorted.
    pub async fn users(&self, domain: Option<&str>) -> Result<Vec<String>, DirectoryError> {
        let domain = domain.map(str::to_lowercase);
        self.view(|s| {
            snapshot::of_domain(&s.users, domain.as_deref())
                .map(|u| u.address.clone())
                .collect()
        })
        .await
    }

    /// Adds `targets` to the alias `source` (`local@domain` or `@domain`), creating it when
    /// missing; returns the whole alias. Concurrent changes through other replicas are
    /// merged, not overwritten (compare-and-set on the KV revision).
    pub async fn add_alias(
        &self,
        source: &str,
        targets: &[String],
    ) -> Result<AliasInfo, DirectoryError> {
        let (local, domain) = split_source(source)?;
        self.require_local(&domain).await?;
        if targets.is_empty() {
            return Err(DirectoryError::NoTargets);
        }
        let mut add = Vec::with_capacity(targets.len());
        for target in targets {
            let (l, d) = split_target(target)?;
            let local_target = self.view(|s| s.is_local(&d)).await?;
            add.push(canonical(&l, &d, local_target));
        }
        let source = alias_source(&local, &domain);
        self.change_alias(Key::Alias(domain, local), |current| {
            let mut alias = current.unwrap_or_else(|| AliasInfo {
                source: source.clone(),
                targets: Vec::new(),
            });
            for t in &add {
                if !alias.targets.contains(t) {
                    alias.targets.push(t.clone());
                }
            }
            Some(alias)
        })
        .await?
        .ok_or(DirectoryError::NoTargets)
    }

    /// Removes `targets` from the alias `source`, or the whole alias when `targets` is
    /// empty; returns what is left (`None` when the alias is gone).
    pub async fn remove_alias(
        &self,
        source: &str,
        targets: &[String],
    ) -> Result<Option<AliasInfo>, DirectoryError> {
        let (local, domain) = split_source(source)?;
        let key = Key::Alias(domain.clone(), local.clone());
        let exists = self
            .view(|s| s.aliases.contains_key(&(domain.clone(), local.clone())))
            .await?;
        if !exists {
            return Err(DirectoryError::NotFound(format!(
                "alias {}",
                alias_source(&local, &domain)
            )));
        }
        let drop: Vec<String> = targets.iter().map(|t| t.trim().to_lowercase()).collect();
        let missing = self
            .view(|s| {
                let alias = s.aliases.get(&(domain.clone(), local.clone()));
                drop.iter()
                    .find(|t| {
                        alias.is_some_and(|a| !a.targets.iter().any(|x| &x.to_lowercase() == *t))
                    })
                    .cloned()
            })
            .await?;
        if let Some(target) = missing {
            return Err(DirectoryError::NotFound(format!(
                "target {target} of alias {}",
                alias_source(&local, &domain)
            )));
        }
        self.change_alias(key, |current| {
            let mut alias = current?;
            alias
                .targets
                .retain(|t| !drop.is_empty() && !drop.contains(&t.to_lowercase()));
            (!alias.targets.is_empty()).then_some(alias)
        })
        .await
    }

    /// Read-modify-write of one alias record; `change` returning `None` deletes it.
    async fn change_alias(
        &self,
        key: Key,
        mut change: impl FnMut(Option<AliasInfo>) -> Option<AliasInfo>,
    ) -> Result<Option<AliasInfo>, DirectoryError> {
        let encoded = key.encode();
        let mut written = None;
        compare_and_set(&self.kv, &encoded, 20, |current| {
            let current = current.and_then(|v| AliasInfo::decode(v).ok());
            written = change(current);
            Ok(written.as_ref().map(|a| Bytes::from(a.encode_to_vec())))
        })
        .await
        .map_err(storage)?;
        let value = written.as_ref().map(|a| Bytes::from(a.encode_to_vec()));
        self.apply_locally(&encoded, value.as_ref());
        Ok(written)
    }

    /// Aliases, of one domain or of all, sorted by source.
    pub async fn aliases(&self, domain: Option<&str>) -> Result<Vec<AliasInfo>, DirectoryError> {
        let domain = domain.map(str::to_lowercase);
        self.view(|s| {
            snapshot::of_domain(&s.aliases, domain.as_deref())
                .cloned()
                .collect()
        })
        .await
    }
}

impl Directory {
    /// Generates a DKIM key for the local domain `domain`, replacing its current one, and
    /// returns what to publish in DNS.
    pub async fn generate_dkim(
        &self,
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
    ) -> Result<DkimKeyInfo, DirectoryError> {
        let domain = normal_domain(domain);
        self.require_local(&domain).await?;
        let selector = match selector.trim() {
            "" => crate::dkim::default_selector(std::time::SystemTime::now()),
            s if address::is_domain(s) => s.to_lowercase(),
            s => return Err(DirectoryError::InvalidSelector(s.to_string())),
        };
        let key = {
            let domain = domain.clone();
            tokio::task::spawn_blocking(move || {
                crate::dkim::generate(&domain, &selector, algorithm)
            })
            .await
            .map_err(|e| crate::dkim::DkimError::Crypto(e.to_string()))??
        };
        self.put(Key::Dkim(domain), key.encode_to_vec()).await?;
        Ok(crate::dkim::info(&key))
    }

    /// Every domain's DKIM key, without private parts, sorted by domain.
    pub async fn dkim_keys(&self) -> Result<Vec<DkimKeyInfo>, DirectoryError> {
        self.view(|s| s.dkim.values().map(crate::dkim::info).collect())
            .await
    }

    /// Removes a domain's DKIM key.
    pub async fn remove_dkim(&self, domain: &str) -> Result<(), DirectoryError> {
        let domain = normal_domain(domain);
        if !self.view(|s| s.dkim.contains_key(&domain)).await? {
            return Err(DirectoryError::NotFound(format!("DKIM key of {domain}")));
        }
        self.delete(Key::Dkim(domain)).await
    }
}

/// How an alias source is written: `local@domain`, or `@domain` for the catch-all.
fn alias_source(local: &str, domain: &str) -> String {
    format!("{local}@{domain}")
}

/// Splits and validates an alias target; unlike a user address, its local part keeps its
/// case (it may be a remote mailbox).
fn split_target(target: &str) -> Result<(String, String), DirectoryError> {
    let mailbox = address::parse_mailbox(target.trim())
        .map_err(|_| DirectoryError::InvalidAddress(target.to_string()))?;
    Ok((mailbox.local, mailbox.domain))
}

/// Applies one KV entry (a put or a delete) to a copy.
fn apply(snapshot: &mut Snapshot, entry: &Entry) {
    snapshot.set(
        &entry.key,
        (entry.operation == Operation::Put).then_some(&entry.value),
    );
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
                apply(snapshot, &entry);
                pending = pending.saturating_sub(1);
                if entry.delta == 0 || pending == 0 {
                    publish(loading.take().unwrap_or_default());
                }
            }
            None => apply(
                &mut cache.write().unwrap_or_else(|p| p.into_inner()),
                &entry,
            ),
        }
    }
}
