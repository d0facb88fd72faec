//! Queue depths as Prometheus gauges, sampled every few seconds: messages and the age of
//! the oldest one per stream, and pending messages per consumer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::pull;
use mailflow_bus::{Bus, names};
use tokio_util::sync::CancellationToken;

/// How often the gauges are refreshed.
const EVERY: Duration = Duration::from_secs(5);

/// The streams watched, each with the consumer whose backlog matters.
const STREAMS: [(&str, Option<&str>); 4] = [
    (names::MAIL_IN, Some(names::ROUTE_CONSUMER)),
    (names::MAIL_OUT, Some(names::RELAY_CONSUMER)),
    (names::MAIL_RETRY, None),
    (names::MAIL_EVENTS, None),
];

/// Samples until `shutdown`.
pub async fn sample(bus: Bus, shutdown: CancellationToken) {
    loop {
        for (stream, consumer) in STREAMS {
            let Ok(mut handle) = bus.js.get_stream(stream).await else {
                continue;
            };
            if let Ok(info) = handle.info().await {
                let state = &info.state;
                metrics::gauge!("mailflow_stream_messages", "stream" => stream)
                    .set(state.messages as f64);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let age = if state.messages > 0 {
                    (now - state.first_timestamp.unix_timestamp()).max(0)
                } else {
                    0
                };
                metrics::gauge!("mailflow_stream_oldest_age_seconds", "stream" => stream)
                    .set(age as f64);
            }
            if let Some(name) = consumer
                && let Ok(mut c) = handle.get_consumer::<pull::Config>(name).await
                && let Ok(info) = c.info().await
            {
                metrics::gauge!("mailflow_consumer_pending", "stream" => stream, "consumer" => name)
                    .set(info.num_pending as f64);
                metrics::gauge!("mailflow_consumer_ack_pending", "stream" => stream, "consumer" => name)
                    .set(info.num_ack_pending as f64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
