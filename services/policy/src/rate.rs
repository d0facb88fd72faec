//! Rate limits, counted in fixed windows in the KV bucket `rate-limits` shared by every
//! policy replica: MAIL FROM requests per client IP and per authenticated user per hour (as
//! Postfix's `smtpd_client_message_rate_limit` counts message delivery requests; past a limit
//! `451 4.7.1` until the next hour), and connections per client IP per minute
//! (`smtpd_client_connection_rate_limit`; past it `421 4.7.0`).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;
use mailflow_bus::{Bus, BusError, compare_and_set};
use mailflow_proto::v1::Verdict;

use crate::checks;

/// The KV bucket of counts.
pub const RATE_BUCKET: &str = "rate-limits";

/// The window of message counts.
const HOUR: u64 = 3600;
/// The window of connection counts.
const MINUTE: u64 = 60;

/// The limits and their counts.
#[derive(Clone)]
pub struct RateLimiter {
    /// KV `rate-limits`; entries outlive their hour by one more.
    kv: kv::Store,
    /// Messages per client IP per hour; 0 = no limit.
    per_ip: u32,
    /// Messages per authenticated user per hour; 0 = no limit.
    per_user: u32,
    /// Connections per client IP per minute; 0 = no limit.
    connections: u32,
}

/// The key of `id`'s count of `kind` in window `window`: hex keeps any address one token.
fn key(kind: &str, id: &str, window: u64) -> String {
    let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{kind}.{hex}.{window}")
}

/// The window of `length` seconds `now` falls in, counted from the epoch.
fn window_of(now: SystemTime, length: u64) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / length
}

/// The refusal once `who` sent `limit` messages this hour.
fn refusal(who: &str, limit: u32) -> Verdict {
    uncached(checks::tempfail(
        451,
        "4.7.1",
        format!(
            "Error: too much mail from {who} (limit {limit} messages per hour); try again later"
        ),
    ))
}

/// A verdict that counted something: the next identical request may be answered otherwise.
fn uncached(verdict: Verdict) -> Verdict {
    Verdict {
        no_cache: true,
        ..verdict
    }
}

impl RateLimiter {
    /// Opens the bucket when a limit is set; `None` when none is.
    pub async fn open(
        bus: &Bus,
        per_ip: u32,
        per_user: u32,
        connections: u32,
    ) -> Result<Option<Self>, BusError> {
        if per_ip == 0 && per_user == 0 && connections == 0 {
            return Ok(None);
        }
        let kv = bus
            .open_kv(RATE_BUCKET, 1, Duration::from_secs(2 * HOUR))
            .await?;
        Ok(Some(Self {
            kv,
            per_ip,
            per_user,
            connections,
        }))
    }

    /// True when messages are limited (each MAIL FROM must then be counted).
    pub fn limits_messages(&self) -> bool {
        self.per_ip > 0 || self.per_user > 0
    }

    /// True when connections are limited (each one must then be counted).
    pub fn limits_connections(&self) -> bool {
        self.connections > 0
    }

    /// Counts one connection from `ip`; the refusal when it is over the limit.
    pub async fn connection(
        &self,
        ip: IpAddr,
        now: SystemTime,
    ) -> Result<Option<Verdict>, BusError> {
        if self.connections == 0 {
            return Ok(None);
        }
        let ip_text = ip.to_string();
        let count = self
            .count(&key("conn", &ip_text, window_of(now, MINUTE)))
            .await?;
        Ok((count > self.connections).then(|| {
            uncached(checks::tempfail(
                421,
                "4.7.0",
                format!("Error: too many connections from {ip_text}"),
            ))
        }))
    }

    /// Counts one message from `ip` (and `user`, when authenticated); the refusal when it
    /// is over a limit.
    pub async fn hit(
        &self,
        ip: IpAddr,
        user: &str,
        now: SystemTime,
    ) -> Result<Option<Verdict>, BusError> {
        let hour = window_of(now, HOUR);
        let ip_text = ip.to_string();
        let mut checks = vec![("ip", ip_text.as_str(), self.per_ip)];
        if !user.is_empty() {
            checks.push(("user", user, self.per_user));
        }
        for (kind, id, limit) in checks {
            if limit == 0 {
                continue;
            }
            if self.count(&key(kind, id, hour)).await? > limit {
                return Ok(Some(refusal(id, limit)));
            }
        }
        Ok(None)
    }

    /// Adds one to a count and returns the new value.
    async fn count(&self, key: &str) -> Result<u32, BusError> {
        let mut now = 0;
        compare_and_set(&self.kv, key, 50, |current| {
            let before: u32 = current
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
                .unwrap_or(0);
            now = before.saturating_add(1);
            Ok(Some(Bytes::from(now.to_string())))
        })
        .await?;
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tokens_per_hour() {
        let at = UNIX_EPOCH + Duration::from_secs(10 * HOUR + 59);
        assert_eq!(window_of(at, HOUR), 10);
        assert_eq!(window_of(at, MINUTE), 600);
        assert_eq!(key("ip", "192.0.2.1", 10), "ip.3139322e302e322e31.10");
        assert_eq!(key("user", "a.b@x", 10), "user.612e624078.10");
        assert_ne!(key("user", "a.b@x", 10), key("user", "a_b@x", 10));
        let v = refusal("192.0.2.1", 100);
        assert_eq!((v.code, v.enhanced.as_str()), (451, "4.7.1"));
        assert!(v.no_cache);
    }
}
