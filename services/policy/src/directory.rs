//! The directory: local domains and users in the JetStream KV bucket `directory`.
//!
//! Keys are `domain.<domain>` and `user.<domain>.<local part>`, lower-cased, with every
//! octet outside `[A-Za-z0-9_-]` written as `=XX` (NATS keys allow only a few characters,
//! and the dot separates tokens). Values are protobuf messages.

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use futures::TryStreamExt;
use mailflow_proto::v1::{DomainInfo, StoredUser};
use mailflow_smtp::address;
use prost::Message;

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
    /// The KV store failed.
    #[error("directory storage: {0}")]
    Storage(String),
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
}

fn storage(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Storage(e.to_string())
}

/// The directory, shared by every policy replica through KV.
#[derive(Clone)]
pub struct Directory {
    /// The `directory` bucket.
    kv: Store,
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

impl Directory {
    /// A directory over the `directory` bucket.
    pub fn new(kv: Store) -> Self {
        Self { kv }
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
        self.kv
            .put(domain_key(&domain), Bytes::from(value.encode_to_vec()))
            .await
            .map_err(storage)?;
        Ok(domain)
    }

    /// True when `domain` is local.
    pub async fn is_local_domain(&self, domain: &str) -> Result<bool, DirectoryError> {
        Ok(self
            .kv
            .get(domain_key(domain))
            .await
            .map_err(storage)?
            .is_some())
    }

    /// Every local domain, sorted.
    pub async fn domains(&self) -> Result<Vec<String>, DirectoryError> {
        let mut out = Vec::new();
        for key in self.keys_with_prefix("domain.").await? {
            if let Some(value) = self.kv.get(&key).await.map_err(storage)? {
                out.push(DomainInfo::decode(value).map_err(storage)?.domain);
            }
        }
        out.sort();
        Ok(out)
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
        let hash = Argon2::default()
            .hash_password(password.as_bytes())
            .map_err(|e| DirectoryError::Hash(e.to_string()))?
            .to_string();
        let canonical = format!("{local}@{domain}");
        let value = StoredUser {
            address: canonical.clone(),
            password_hash: hash,
        };
        self.kv
            .put(
                user_key(&local, &domain),
                Bytes::from(value.encode_to_vec()),
            )
            .await
            .map_err(storage)?;
        Ok(canonical)
    }

    /// The stored user for `local@domain`, if any.
    pub async fn user(
        &self,
        local: &str,
        domain: &str,
    ) -> Result<Option<StoredUser>, DirectoryError> {
        match self
            .kv
            .get(user_key(local, domain))
            .await
            .map_err(storage)?
        {
            Some(v) => Ok(Some(StoredUser::decode(v).map_err(storage)?)),
            None => Ok(None),
        }
    }

    /// Users, of one domain or of all, sorted.
    pub async fn users(&self, domain: Option<&str>) -> Result<Vec<String>, DirectoryError> {
        let prefix = match domain {
            Some(d) => format!("user.{}.", token(d)),
            None => "user.".to_string(),
        };
        let mut out = Vec::new();
        for key in self.keys_with_prefix(&prefix).await? {
            if let Some(value) = self.kv.get(&key).await.map_err(storage)? {
                out.push(StoredUser::decode(value).map_err(storage)?.address);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, DirectoryError> {
        let keys = self.kv.keys().await.map_err(storage)?;
        let all: Vec<String> = keys.try_collect().await.map_err(storage)?;
        Ok(all.into_iter().filter(|k| k.starts_with(prefix)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_nats_tokens() {
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
    }
}
