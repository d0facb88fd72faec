//! Consuming a work-queue stream through a durable pull consumer shared by every replica.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull};
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

/// Runs `work` on behalf of `msg`, telling JetStream every third of `ack_wait` that the
/// message is still in hand: work that takes longer (a slow server, slow DNS) is not
/// handed to another replica meanwhile.
pub async fn keep_alive<F: Future>(
    msg: &jetstream::Message,
    ack_wait: Duration,
    work: F,
) -> F::Output {
    let every = ack_wait / 3;
    tokio::pin!(work);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    }
}

async fn subscribe(bus: &Bus, spec: &ConsumerSpec) -> Result<PullConsumer, BusError> {
    let setup = |e: String| BusError::Setup {
        name: format!("{}/{}", spec.stream, spec.durable),
        reason: e,
    };
    let stream = bus
        .js
        .get_stream(spec.stream)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter.clone().unwrap_or_default(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    };
    let mut consumer: PullConsumer = stream
        .get_or_create_consumer(&spec.durable, config.clone())
        .await
        .map_err(|e| setup(e.to_string()))?;
    // A consumer made by an earlier configuration keeps its settings on the server: an
    // `ack_wait` raised since would otherwise be paced here and enforced there at the old
    // value, and jobs would be handed out again in the middle of their work.
    let current = &consumer.cached_info().config;
    if current.ack_wait != config.ack_wait || current.max_ack_pending != config.max_ack_pending {
        tracing::info!(consumer = %spec.durable, "updating the consumer to the configuration");
        consumer = stream
            .update_consumer(config)
            .await
            .map_err(|e| setup(e.to_string()))?;
    }
    Ok(consumer)
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
            Ok(consumer) => run(&consumer, &spec, shutdown, &handle).await,
            Err(e) => tracing::warn!(error = %e, "cannot subscribe; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// How long one fetch request waits on the server for messages.
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// Fetches and handles messages until a fetch fails or `shutdown`; returns when the
/// handlers it started are done.
///
/// Each fetch asks for no more messages than there are free handlers, so every message
/// starts the moment it arrives. A message fetched ahead and left waiting for a handler
/// would have no one reporting progress on it, and past the acknowledgement timeout
/// JetStream would hand it to another replica while this one still meant to handle it: a
/// duplicate delivery without any crash. A new fetch waits until a quarter of the handlers
/// are free (or all are), so that fetch requests stay few under load.
async fn run<F, Fut>(
    consumer: &PullConsumer,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
    handle: &F,
) where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = ()>,
{
    let durable = spec.durable.as_str();
    let concurrency = spec.concurrency.max(1);
    let refill = (concurrency / 4).max(1);
    let mut running = FuturesUnordered::new();
    'fetching: loop {
        while concurrency - running.len() < refill {
            tokio::select! {
                Some(()) = running.next() => {}
                _ = shutdown.cancelled() => {
                    release(None, &mut running, durable).await;
                    break 'fetching;
                }
            }
        }
        let fetch = consumer
            .batch()
            .max_messages(concurrency - running.len())
            .expires(FETCH_WAIT)
            .messages();
        let mut batch = tokio::select! {
            batch = fetch => match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(consumer = durable, error = %e, "cannot fetch");
                    break;
                }
            },
            _ = shutdown.cancelled() => {
                release(None, &mut running, durable).await;
                break;
            }
        };
        loop {
            tokio::select! {
                Some(()) = running.next(), if !running.is_empty() => {}
                item = batch.next() => match item {
                    Some(Ok(msg)) => {
                        let span = consume_span(durable, &msg);
                        running.push(handle(msg).instrument(span));
                    }
                    Some(Err(e)) => tracing::warn!(consumer = durable, error = %e, "consumer error"),
                    None => break,
                },
                _ = shutdown.cancelled() => {
                    release(Some(&mut batch), &mut running, durable).await;
                    break 'fetching;
                }
            }
        }
    }
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
    messages: Option<&mut pull::Batch>,
    running: &mut FuturesUnordered<H>,
    durable: &str,
) {
    let until = tokio::time::Instant::now() + RELEASE_MAX;
    let mut released = 0usize;
    // Messages of a fetch still open may yet arrive: each is given back.
    if let Some(messages) = messages {
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
    }
    tracing::info!(
        consumer = durable,
        released,
        still_running = running.len(),
        "shutting down: fetched messages released, running ones finishing"
    );
}
