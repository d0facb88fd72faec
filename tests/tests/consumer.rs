//! The shared consumer loop against a real nats-server: a consumer made under an earlier
//! configuration takes the new one, so the acknowledgement timeout the server enforces is
//! the one the handlers pace their progress reports by.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::stream;
use mailflow_bus::{Bus, ConsumerSpec, consume};
use mailflow_runtime::config::NatsConfig;
use mailflow_tests::nats::Nats;
use mailflow_tests::wait;
use tokio_util::sync::CancellationToken;

/// Runs the consumer loop with `ack_wait` until it has made or updated the consumer, then
/// stops it; returns the server's `ack_wait`.
async fn consume_once(bus: &Bus, ack_wait: Duration) -> Duration {
    let spec = ConsumerSpec {
        stream: "WORK",
        durable: "worker".into(),
        filter: None,
        ack_wait,
        max_ack_pending: 10,
        concurrency: 2,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let running = tokio::spawn({
        let bus = bus.clone();
        async move { consume(&bus, spec, &stop, |_msg| async {}).await }
    });
    let js = bus.js.clone();
    let seen = wait::until("the consumer's settings", Duration::from_secs(10), || {
        let js = js.clone();
        async move {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_stream("WORK")
                .await
                .ok()?
                .get_consumer("worker")
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.config.ack_wait == ack_wait).then_some(info.config.ack_wait)
        }
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_follows_a_changed_acknowledgement_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path()).await;
    let config = NatsConfig {
        url: nats.url(),
        ..Default::default()
    };
    let bus = Bus::connect(&config, "test", &CancellationToken::new())
        .await
        .unwrap();
    bus.js
        .create_stream(stream::Config {
            name: "WORK".into(),
            subjects: vec!["work".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        consume_once(&bus, Duration::from_secs(2)).await,
        Duration::from_secs(2)
    );
    // Raised in the configuration, then started again: the server enforces the new value.
    assert_eq!(
        consume_once(&bus, Duration::from_secs(9)).await,
        Duration::from_secs(9)
    );
}
