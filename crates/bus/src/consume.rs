//! Consuming a work-queue stream through a durable pull consumer shared by every replica.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
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
///
/// At shutdown, handlers already running finish, while the messages this process has
/// fetched but not started are released ([`release`]) for the other replicas to take
/// at once rather than after the acknowledgement timeout.
pub async fn consume<F, Fut>(bus: &Bus, spec: ConsumerSpec, shutdown: &CancellationToken, handle: F)
where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()>,
{
    while !shutdown.is_cancelled() {
        match subscribe(bus, &spec).await {
            Ok(messages) => run(messages, &spec, shutdown, &handle).await,
            Err(e) => tracing::warn!(error = %e, "cannot subscribe; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Takes messages from one subscription until it ends or `shutdown`; returns when the
/// handlers it started are done.
async fn run<F, Fut>(
    mut messages: pull::Stream,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
    handle: &F,
) where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()>,
{
    let durable = spec.durable.as_str();
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = running.next(), if !running.is_empty() => {}
            item = messages.next(), if running.len() < spec.concurrency => match item {
                Some(Ok(msg)) => {
                    let span = consume_span(durable, &msg);
                    running.push(handle(msg).instrument(span));
                }
                Some(Err(e)) => tracing::warn!(consumer = durable, error = %e, "consumer error"),
                None => break,
            },
            _ = shutdown.cancelled() => {
                release(&mut messages, &mut running, durable).await;
                break;
            }
        }
    }
    drop(messages);
    while running.next().await.is_some() {}
}

/// After shutdown, how long the subscription may stay silent before every message fetched
/// for this process is taken to have been released.
const RELEASE_QUIET: Duration = Duration::from_millis(50);
/// The longest the release goes on (new messages may keep arriving meanwhile).
const RELEASE_MAX: Duration = Duration::from_millis(500);
/// How long a released message waits before JetStream hands it out again: long enough
/// that it does not come straight back to this process while it is still releasing,
/// short next to an acknowledgement timeout.
const RELEASE_DELAY: Duration = Duration::from_secs(1);

/// Gives back the messages fetched for this process and not started (negative
/// acknowledgements), while the running handlers go on. Like a crash, a release counts as
/// a delivery of the message in JetStream's count.
async fn release<H: Future<Output = ()>>(
    messages: &mut pull::Stream,
    running: &mut FuturesUnordered<H>,
    durable: &str,
) {
    let until = tokio::time::Instant::now() + RELEASE_MAX;
    let mut released = 0usize;
    loop {
        tokio::select! {
            Some(()) = running.next(), if !running.is_empty() => {}
            item = tokio::time::timeout(RELEASE_QUIET, messages.next()) => match item {
                Ok(Some(Ok(msg))) => {
                    if let Err(e) = msg.ack_with(AckKind::Nak(Some(RELEASE_DELAY))).await {
                        tracing::warn!(consumer = durable, error = %e, "not released; redelivered after the acknowledgement timeout");
                    }
                    released += 1;
                }
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            },
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    tracing::info!(
        consumer = durable,
        released,
        still_running = running.len(),
        "shutting down: fetched messages released, running ones finishing"
    );
}
