//! Consuming a work-queue stream through a durable pull consumer shared by every replica.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use mailflow_runtime::telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::connect::{Bus, BusError};

/// Which consumer, and how much work it may hold.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream.
    pub stream: &'static str,
    /// The durable consumer's name (shared by all replicas of a stage).
    pub durable: String,
    /// Only messages on this subject; every subject of the stream when `None`.
    pub filter: Option<String>,
    /// Redelivery after this long without an acknowledgement or progress report.
    pub ack_wait: Duration,
    /// Messages handed out and not yet acknowledged, across replicas.
    pub max_ack_pending: i64,
    /// Messages handled at once by this process.
    pub concurrency: usize,
}

async fn subscribe(bus: &Bus, spec: &ConsumerSpec) -> Result<pull::Stream, BusError> {
    let setup = |e: String| BusError::Setup {
        name: format!("{}/{}", spec.stream, spec.durable),
        reason: e,
    };
    let stream = bus
        .js
        .get_stream(spec.stream)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subject: spec.filter.clone().unwrap_or_default(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_ack_pending: spec.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| setup(e.to_string()))?;
    consumer
        .stream()
        .max_messages_per_batch(spec.concurrency)
        .messages()
        .await
        .map_err(|e| setup(e.to_string()))
}

/// The span of handling one message: named after the consumer, and a child of the
/// publisher's span when the message's headers carry its trace context.
fn consume_span(durable: &str, msg: &jetstream::Message) -> tracing::Span {
    let span = tracing::info_span!("consume", otel.name = durable, otel.kind = "consumer", subject = %msg.subject);
    if let Some(headers) = &msg.headers {
        telemetry::set_parent(&span, |name| headers.get(name).map(|v| v.as_str()));
    }
    span
}

/// Calls `handle` for every message, `spec.concurrency` at once, until `shutdown`;
/// resubscribes when the subscription fails or ends (for example after NATS restarts).
/// `handle` acknowledges each message itself.
pub async fn consume<F, Fut>(bus: &Bus, spec: ConsumerSpec, shutdown: &CancellationToken, handle: F)
where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()>,
{
    while !shutdown.is_cancelled() {
        match subscribe(bus, &spec).await {
            Ok(messages) => {
                let handle = &handle;
                let durable = spec.durable.as_str();
                messages
                    .take_until(shutdown.cancelled())
                    .for_each_concurrent(spec.concurrency, |item| async move {
                        match item {
                            Ok(msg) => {
                                let span = consume_span(durable, &msg);
                                handle(msg).instrument(span).await
                            }
                            Err(e) => {
                                tracing::warn!(consumer = durable, error = %e, "consumer error")
                            }
                        }
                    })
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
