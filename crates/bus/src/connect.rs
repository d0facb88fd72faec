//! Connecting to NATS and publishing with acknowledgement.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use mailflow_runtime::config::NatsConfig;
use mailflow_runtime::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Errors of the bus layer.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The NATS connection could not be set up.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// A JetStream publish was refused or not acknowledged in time.
    #[error("publish to {subject} failed: {reason}")]
    Publish {
        /// The subject published to.
        subject: String,
        /// What went wrong.
        reason: String,
    },
    /// A stream, bucket or store could not be created or opened.
    #[error("cannot set up {name}: {reason}")]
    Setup {
        /// The stream, bucket or store.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A key-value or object operation failed.
    #[error("{op} on {name} failed: {reason}")]
    Storage {
        /// The operation (get, put, update ...).
        op: &'static str,
        /// The bucket or key.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A payload is not the protobuf message it should be.
    #[error("undecodable payload: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Shutdown was requested while waiting for NATS.
    #[error("shutting down")]
    ShuttingDown,
}

/// A connection to NATS with its JetStream context.
#[derive(Clone)]
pub struct Bus {
    /// The core client, for plain subscriptions and the connection state.
    pub client: async_nats::Client,
    /// The JetStream context every stream operation goes through.
    pub js: jetstream::Context,
    /// How many replicas new streams and buckets get.
    replicas: usize,
    /// How long a publish waits for its acknowledgement.
    publish_timeout: Duration,
    /// How long status records, events and stored bodies are kept.
    retention: Duration,
}

impl Bus {
    /// Connects to NATS. The client reconnects by itself for the life of the process; if the
    /// server is not up yet it keeps trying until `shutdown`.
    pub async fn connect(
        config: &NatsConfig,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Bus, BusError> {
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None);
        let connect = options.connect(config.url.as_str());
        let client = tokio::select! {
            res = connect => res.map_err(|source| BusError::Connect { url: config.url.clone(), source })?,
            _ = shutdown.cancelled() => return Err(BusError::ShuttingDown),
        };
        let js = jetstream::context::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .build(client.clone());
        Ok(Bus {
            client,
            js,
            replicas: config.replicas,
            publish_timeout: config.publish_timeout,
            retention: config.history_retention,
        })
    }

    /// The largest message nats-server takes (its `max_payload`, learnt when connecting; 0
    /// before the first connection).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// How many replicas new streams and buckets get.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// How long status records, events and stored bodies are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Publishes `payload` and waits until JetStream has stored it. `msg_id` becomes the
    /// `Nats-Msg-Id`, so a republish after a crash is deduplicated by the stream.
    pub async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        self.publish_all([(subject, msg_id.to_string(), payload)])
            .await
    }

    /// Publishes several messages with their acknowledgements in flight together, then
    /// waits for all of them; fails if any one fails. Each message carries the trace
    /// context of a `publish` span (a child of the caller's) in its headers, so that the
    /// consumer's spans join the caller's trace.
    pub async fn publish_all(
        &self,
        messages: impl IntoIterator<Item = (String, String, Bytes)>,
    ) -> Result<(), BusError> {
        let messages = messages
            .into_iter()
            .map(|(subject, msg_id, payload)| Outgoing {
                subject,
                msg_id,
                payload,
                after: None,
            });
        self.publish_guarded(messages).await.map(drop)
    }

    /// Publishes like [`Bus::publish_all`], each message stored only while its subject has
    /// not moved on from [`Outgoing::after`]: for each message, in order, whether it was
    /// stored (false: another message reached its subject first, and this one is refused).
    pub async fn publish_guarded(
        &self,
        messages: impl IntoIterator<Item = Outgoing>,
    ) -> Result<Vec<bool>, BusError> {
        let span = tracing::info_span!("publish", otel.kind = "producer");
        self.publish_traced(messages, &span)
            .instrument(span.clone())
            .await
    }

    async fn publish_traced(
        &self,
        messages: impl IntoIterator<Item = Outgoing>,
        span: &tracing::Span,
    ) -> Result<Vec<bool>, BusError> {
        let mut headers = HeaderMap::new();
        telemetry::inject(span, |name, value| headers.insert(name, value.as_str()));
        let mut acks = Vec::new();
        for out in messages {
            let subject = out.subject;
            // While disconnected the client would buffer the message and send it after the
            // reconnect, long after the caller gave up on it (and told an SMTP client 451).
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return Err(BusError::Publish {
                    subject,
                    reason: "not connected to NATS".into(),
                });
            }
            let mut msg = PublishMessage::build().payload(out.payload);
            if !headers.is_empty() {
                msg = msg.headers(headers.clone());
            }
            let mut msg = msg.message_id(out.msg_id);
            if let Some(sequence) = out.after {
                msg = msg.expected_last_subject_sequence(sequence);
            }
            let ack = self
                .js
                .send_publish(subject.clone(), msg)
                .await
                .map_err(|e| BusError::Publish {
                    subject: subject.clone(),
                    reason: e.to_string(),
                })?;
            acks.push((subject, ack));
        }
        let mut stored = Vec::with_capacity(acks.len());
        for (subject, ack) in acks {
            match tokio::time::timeout(self.publish_timeout, ack).await {
                Ok(Ok(_)) => stored.push(true),
                Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    stored.push(false);
                }
                Ok(Err(e)) => {
                    return Err(BusError::Publish {
                        subject,
                        reason: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(BusError::Publish {
                        subject,
                        reason: "no acknowledgement in time".into(),
                    });
                }
            }
        }
        Ok(stored)
    }
}

/// A message to publish with [`Bus::publish_guarded`].
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Where it goes.
    pub subject: String,
    /// Its `Nats-Msg-Id` (deduplication).
    pub msg_id: String,
    /// What it carries.
    pub payload: Bytes,
    /// The stream sequence of the subject's latest message that this one must follow (0:
    /// the subject has none yet); `None` publishes whatever came before.
    pub after: Option<u64>,
}
