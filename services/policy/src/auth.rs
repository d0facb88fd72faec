//! Authentication: password verification against the directory, and failed attempts counted
//! per client IP in the KV bucket `auth-failures`, so that every ingress replica and every
//! policy replica sees the same count. Entries expire `auth_failure_window` after the last
//! failure (the bucket's max age).

use std::net::IpAddr;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
use async_nats::jetstream::kv;
use bytes::Bytes;
use mailflow_bus::{Bus, BusError, compare_and_set};
use mailflow_proto::v1::StoredUser;

/// The KV bucket of failure counts.
pub const FAILURES_BUCKET: &str = "auth-failures";

/// Why an authentication could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The failure counter could not be read or written.
    #[error("auth failure counter: {0}")]
    Storage(String),
}

/// The failure counter.
#[derive(Clone)]
pub struct FailureCounter {
    /// KV `auth-failures`.
    kv: kv::Store,
    /// Failures allowed before the client is cut off.
    limit: u32,
}

fn key(ip: IpAddr) -> String {
    // Dots and colons are not allowed in one key token.
    ip.to_string().replace(['.', ':'], "_")
}

impl FailureCounter {
    /// Opens (or creates) the bucket.
    pub async fn open(bus: &Bus, limit: u32, window: Duration) -> Result<Self, BusError> {
        let kv = bus.open_kv(FAILURES_BUCKET, 1, window).await?;
        Ok(Self { kv, limit })
    }

    /// True when `ip` has used up its attempts.
    pub async fn exhausted(&self, ip: IpAddr) -> Result<bool, AuthError> {
        Ok(self.count(ip).await? >= self.limit)
    }

    async fn count(&self, ip: IpAddr) -> Result<u32, AuthError> {
        match self.kv.get(key(ip)).await {
            Ok(value) => Ok(parse_count(value)),
            Err(e) => Err(AuthError::Storage(e.to_string())),
        }
    }

    /// Counts one failure for `ip` (compare-and-set, so concurrent failures all count).
    pub async fn record_failure(&self, ip: IpAddr) -> Result<(), AuthError> {
        compare_and_set(&self.kv, &key(ip), 20, |current| {
            Ok(Some(Bytes::from((parse_count(current) + 1).to_string())))
        })
        .await
        .map_err(|e| AuthError::Storage(e.to_string()))
    }
}

/// A stored count; a missing or unreadable one counts as zero.
fn parse_count(value: Option<Bytes>) -> u32 {
    value
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Checks `password` against the user's stored argon2id hash. Slow by design: call it from
/// a blocking thread.
pub fn verify(user: &StoredUser, password: &str) -> bool {
    PasswordHash::new(&user.password_hash).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher;

    #[test]
    fn keys_are_single_tokens() {
        assert_eq!(key("192.0.2.1".parse().unwrap()), "192_0_2_1");
        assert_eq!(key("2001:db8::1".parse().unwrap()), "2001_db8__1");
    }

    #[test]
    fn verifies_argon2id() {
        let hash = Argon2::default()
            .hash_password(b"secret")
            .unwrap()
            .to_string();
        let user = StoredUser {
            address: "a@b.test".into(),
            password_hash: hash,
        };
        assert!(verify(&user, "secret"));
        assert!(!verify(&user, "Secret"));
        let broken = StoredUser {
            address: "a@b.test".into(),
            password_hash: "not a hash".into(),
        };
        assert!(!verify(&broken, "secret"));
    }
}
