//! OpenTelemetry traces: one message's spans, exported by the ingress, the policy service
//! and the relay to an OTLP collector, form one trace with correct parent links, the trace
//! context having crossed gRPC metadata and NATS headers.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use mailflow_tests::otlp::{Collector, Span};
use mailflow_tests::stack::{INGRESS, POLICY, RELAY};
use mailflow_tests::wait;
use mailflow_tests::world::World;

/// The spans of the trace whose ingress `transaction` span names `queue_id`, once every
/// span named in `expected` (service, name) is there and every parent link resolves.
async fn trace_of(collector: &Collector, queue_id: &str, expected: &[(&str, &str)]) -> Vec<Span> {
    wait::until(
        "the message's whole trace",
        Duration::from_secs(30),
        || async {
            let spans = collector.spans();
            let transaction = spans.iter().find(|s| {
                s.service == INGRESS
                    && s.name == "transaction"
                    && s.attribute("queue_id") == Some(queue_id)
            })?;
            let trace: Vec<Span> = spans
                .iter()
                .filter(|s| s.trace_id == transaction.trace_id)
                .cloned()
                .collect();
            let complete = expected.iter().all(|(service, name)| {
                trace
                    .iter()
                    .any(|s| s.service == *service && s.name == *name)
            });
            let linked = trace.iter().all(|s| {
                s.parent_span_id.is_empty() || trace.iter().any(|p| p.span_id == s.parent_span_id)
            });
            (complete && linked).then_some(trace)
        },
    )
    .await
}

/// The one span of `service` named `name` in `trace`.
fn one<'a>(trace: &'a [Span], service: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = trace
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name} in {trace:#?}");
    found[0]
}

fn parent<'a>(trace: &'a [Span], span: &Span) -> &'a Span {
    trace
        .iter()
        .find(|p| p.span_id == span.parent_span_id)
        .unwrap_or_else(|| panic!("the parent of {span:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_the_services() {
    let collector = Collector::start().await;
    let w = World::start_traced(&collector).await;
    let id = w.send("carol@remote-a.test", "traced").await;
    w.stack.wait_final(&id, Duration::from_secs(30)).await;

    let check_recipient = "/mailflow.v1.Policy/CheckRecipient";
    let trace = trace_of(
        &collector,
        &id,
        &[
            (INGRESS, "smtp"),
            (INGRESS, "transaction"),
            (INGRESS, "publish"),
            (POLICY, check_recipient),
            (POLICY, "route"),
            (POLICY, "scan"),
            (RELAY, "relay"),
            (RELAY, "delivery"),
        ],
    )
    .await;

    // The SMTP session is the root; the transaction is its child.
    let session = one(&trace, INGRESS, "smtp");
    assert!(session.parent_span_id.is_empty(), "{session:?}");
    let roots = trace.iter().filter(|s| s.parent_span_id.is_empty()).count();
    assert_eq!(roots, 1, "one root in {trace:#?}");
    let transaction = one(&trace, INGRESS, "transaction");
    assert_eq!(parent(&trace, transaction).span_id, session.span_id);

    // The policy check ran in the transaction, across gRPC metadata.
    let check = one(&trace, POLICY, check_recipient);
    assert_eq!(parent(&trace, check).span_id, transaction.span_id);

    // Publish to MAIL_IN in the transaction; the route stage continues it across the NATS
    // headers, and scans inside it.
    let publish = one(&trace, INGRESS, "publish");
    assert_eq!(parent(&trace, publish).span_id, transaction.span_id);
    let route = one(&trace, POLICY, "route");
    assert_eq!(parent(&trace, route).span_id, publish.span_id);
    assert_eq!(
        parent(&trace, one(&trace, POLICY, "scan")).span_id,
        route.span_id
    );

    // The relay's consumer continues from a publish of the route stage, and the delivery
    // attempt runs inside it.
    let relay = one(&trace, RELAY, "relay");
    let job_publish = parent(&trace, relay);
    assert_eq!(
        (job_publish.service.as_str(), job_publish.name.as_str()),
        (POLICY, "publish")
    );
    assert_eq!(parent(&trace, job_publish).span_id, route.span_id);
    let delivery = one(&trace, RELAY, "delivery");
    assert_eq!(parent(&trace, delivery).span_id, relay.span_id);
    assert_eq!(delivery.attribute("domain"), Some("remote-a.test"));

    // A second message gets a trace of its own.
    let second = w.send("bob@remote-b.test", "traced again").await;
    w.stack.wait_final(&second, Duration::from_secs(30)).await;
    let other = trace_of(&collector, &second, &[(RELAY, "delivery")]).await;
    assert_ne!(other[0].trace_id, trace[0].trace_id);

    // A deferred message's next attempt joins its trace: the job parked for retry and
    // moved back carries the context along.
    let deferred = w.send("tempfail@remote-a.test", "traced twice").await;
    w.deferred_with(&deferred, 2, "busy").await;
    let trace = trace_of(&collector, &deferred, &[(RELAY, "delivery")]).await;
    wait::until(
        "two delivery spans in one trace",
        Duration::from_secs(30),
        || async {
            let attempts = collector
                .spans()
                .iter()
                .filter(|s| s.trace_id == trace[0].trace_id && s.name == "delivery")
                .count();
            (attempts >= 2).then_some(())
        },
    )
    .await;

    // No span of the collector's own health or reflection traffic, and every service
    // named itself.
    let services: HashMap<&str, usize> =
        collector.spans().iter().fold(HashMap::new(), |mut m, s| {
            *m.entry(match s.service.as_str() {
                INGRESS => INGRESS,
                POLICY => POLICY,
                RELAY => RELAY,
                other => panic!("span from {other:?}"),
            })
            .or_default() += 1;
            m
        });
    assert_eq!(services.len(), 3, "{services:?}");
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| !s.name.starts_with("/grpc.")),
        "health checks are not traced"
    );
}
