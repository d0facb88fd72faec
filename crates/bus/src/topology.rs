//! Creating (idempotently) the streams, buckets and object store mailflow uses.

use std::time::Duration;

use async_nats::jetstream::{kv, object_store, stream};
use tokio_util::sync::CancellationToken;

use crate::connect::{Bus, BusError};

/// Names of streams, buckets, subjects and consumers.
pub mod names {
    /// Accepted messages waiting for scan and route.
    pub const MAIL_IN: &str = "MAIL_IN";
    /// The subject of accepted messages.
    pub const MAIL_IN_SUBJECT: &str = "mail.in";
    /// Delivery jobs.
    pub const MAIL_OUT: &str = "MAIL_OUT";
    /// Deferred delivery jobs waiting for their retry, one subject per delay tier.
    pub const MAIL_RETRY: &str = "MAIL_RETRY";
    /// The per-message timeline: every delivery attempt of every recipient.
    pub const MAIL_EVENTS: &str = "MAIL_EVENTS";
    /// Each message as the route stage accepted it: envelope, final recipients, and the
    /// outcomes known at routing (alias loops); later states are the events.
    pub const STATUS_BUCKET: &str = "mail-status";
    /// Domains and users.
    pub const DIRECTORY_BUCKET: &str = "directory";
    /// Messages the scan stage held back, by queue id.
    pub const QUARANTINE_BUCKET: &str = "quarantine";
    /// Bodies too large to travel inline.
    pub const BODIES_STORE: &str = "mail-bodies";
    /// The durable consumer of the route stage on `MAIL_IN`.
    pub const ROUTE_CONSUMER: &str = "route";
    /// The durable consumer shared by every relay replica on `MAIL_OUT`.
    pub const RELAY_CONSUMER: &str = "relay";

    /// The subject a deferred job waits on in retry tier `tier`, for the delivery job
    /// subject `out` it goes back to (`mail.out.<shard>` → `mail.retry.<tier>.<shard>`).
    pub fn retry(tier: usize, out: &str) -> String {
        format!(
            "mail.retry.{tier}.{}",
            out.strip_prefix("mail.out.").unwrap_or(out)
        )
    }

    /// The subjects of retry tier `tier`.
    pub fn retry_filter(tier: usize) -> String {
        format!("mail.retry.{tier}.>")
    }

    /// The delivery job subject a job waiting on retry subject `subject` goes back to.
    pub fn out_of_retry(subject: &str) -> String {
        let shard = subject
            .strip_prefix("mail.retry.")
            .and_then(|rest| rest.split_once('.'))
            .map_or("0", |(_, shard)| shard);
        format!("mail.out.{shard}")
    }

    /// The durable consumer of retry tier `tier`, shared by every relay replica.
    pub fn retry_consumer(tier: usize) -> String {
        format!("retry-{tier}")
    }

    /// True when `id` is a queue id: a ULID, 26 characters of Crockford base32. Checked
    /// before one is used as a key or subject token, so that a bad one is the caller's
    /// error rather than the store's.
    pub fn is_queue_id(id: &str) -> bool {
        id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    /// The subject of a delivery job for `shard`.
    pub fn mail_out(shard: u32) -> String {
        format!("mail.out.{shard}")
    }

    /// The subject of the events of recipient `index` of a message: the last message on it
    /// is that recipient's current state.
    pub fn event(queue_id: &str, index: u32) -> String {
        format!("mail.events.{queue_id}.{index}")
    }
}

/// The window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Handles to everything created by [`Topology::ensure`].
#[derive(Clone)]
pub struct Topology {
    /// KV `mail-status`.
    pub status: kv::Store,
    /// KV `directory`.
    pub directory: kv::Store,
    /// Object store `mail-bodies`.
    pub bodies: object_store::ObjectStore,
    /// KV `quarantine`.
    pub quarantine: kv::Store,
    /// Stream `MAIL_EVENTS`, for reading recipients' latest events.
    pub events: stream::Stream,
}

impl Topology {
    /// Creates what is missing and opens everything, retrying while NATS is unreachable
    /// until `shutdown`.
    pub async fn ensure(bus: &Bus, shutdown: &CancellationToken) -> Result<Topology, BusError> {
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::try_ensure(bus).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    tracing::warn!(error = %e, "JetStream not ready; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Err(BusError::ShuttingDown),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_ensure(bus: &Bus) -> Result<Topology, BusError> {
        let js = &bus.js;
        let replicas = bus.replicas();
        let retention = bus.retention();
        let work_queue = |name: &str, subject: &str| stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        for config in [
            work_queue(names::MAIL_IN, names::MAIL_IN_SUBJECT),
            work_queue(names::MAIL_OUT, "mail.out.>"),
            work_queue(names::MAIL_RETRY, "mail.retry.>"),
        ] {
            let name = config.name.clone();
            js.get_or_create_stream(config)
                .await
                .map_err(|e| setup(&name, e))?;
        }
        // The history's streams follow the configured retention, also when it changed.
        js.create_or_update_stream(stream::Config {
            name: names::MAIL_EVENTS.into(),
            subjects: vec!["mail.events.>".into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: retention,
            // A message's history is read with direct gets (no consumer per request).
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| setup(names::MAIL_EVENTS, e))?;
        let events = js
            .get_stream(names::MAIL_EVENTS)
            .await
            .map_err(|e| setup(names::MAIL_EVENTS, e))?;
        let status = bus.open_kv(names::STATUS_BUCKET, 1, retention).await?;
        let directory = bus
            .open_kv(names::DIRECTORY_BUCKET, 5, Duration::ZERO)
            .await?;
        // Held messages expire with their bodies.
        let quarantine = bus.open_kv(names::QUARANTINE_BUCKET, 1, retention).await?;
        let bodies = match js.get_object_store(names::BODIES_STORE).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: names::BODIES_STORE.into(),
                    max_age: retention,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| setup(names::BODIES_STORE, e))?,
        };
        // Buckets made before a retention change keep theirs unless updated.
        for bucket in [names::STATUS_BUCKET, names::QUARANTINE_BUCKET] {
            let name = format!("KV_{bucket}");
            if let Ok(mut stream) = js.get_stream(&name).await
                && let Ok(info) = stream.info().await
                && info.config.max_age != retention
            {
                let mut config = info.config.clone();
                config.max_age = retention;
                js.update_stream(config)
                    .await
                    .map_err(|e| setup(&name, e))?;
            }
        }
        Ok(Topology {
            status,
            directory,
            bodies,
            quarantine,
            events,
        })
    }
}

pub(crate) fn setup(name: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Setup {
        name: name.into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn a_deferred_job_goes_back_to_its_own_subject() {
        let waiting = names::retry(2, &names::mail_out(7));
        assert_eq!(waiting, "mail.retry.2.7");
        assert_eq!(names::out_of_retry(&waiting), "mail.out.7");
        assert_eq!(names::retry_filter(2), "mail.retry.2.>");
    }
}
