//! Prometheus `/metrics` on every service: scraped and parsed before and after mail goes
//! through, the counters move by the right amounts.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use mailflow_tests::client::SmtpClient;
use mailflow_tests::stack::{INGRESS, POLICY, RELAY};
use mailflow_tests::wait;
use mailflow_tests::world::World;

/// The value of `series` (0 when absent).
fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// The sum of every series of metric `name` whose labels contain all of `labels`.
fn sum(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            (series.as_str() == name || series.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_what_went_through() {
    let w = World::start().await;
    // Warm up: one message so every metric exists, then take the baseline.
    let first = w.send("carol@remote-a.test", "warm-up").await;
    w.stack.wait_final(&first, Duration::from_secs(30)).await;
    let before = (
        w.stack.scrape(INGRESS).await,
        w.stack.scrape(POLICY).await,
        w.stack.scrape(RELAY).await,
    );

    // Two messages delivered (one over TLS to sink A, one in plaintext to sink B), and one
    // recipient refused at RCPT.
    let a = w.send("carol@remote-a.test", "one").await;
    let b = w.send("bob@remote-b.test", "two").await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command("MAIL FROM:<sender@client.test>", 250).await;
    c.command("RCPT TO:<nobody@example.test>", 550).await;
    c.command("QUIT", 221).await;
    for id in [&a, &b] {
        w.stack.wait_final(id, Duration::from_secs(30)).await;
    }

    let delta =
        |after: &HashMap<String, f64>,
         before: &HashMap<String, f64>,
         name: &str,
         labels: &[&str]| { sum(after, name, labels) - sum(before, name, labels) };
    let ingress = w.stack.scrape(INGRESS).await;
    assert_eq!(
        delta(
            &ingress,
            &before.0,
            "mailflow_smtp_connections_total",
            &["listener=\"mx\""]
        ),
        3.0
    );
    assert_eq!(
        delta(
            &ingress,
            &before.0,
            "mailflow_messages_total",
            &["code=\"250\""]
        ),
        2.0
    );
    assert_eq!(
        delta(
            &ingress,
            &before.0,
            "mailflow_smtp_refusals_total",
            &["code=\"550\""]
        ),
        1.0
    );
    let policy = w.stack.scrape(POLICY).await;
    assert!(
        delta(
            &policy,
            &before.1,
            "mailflow_policy_check_seconds_count",
            &["check=\"recipient\""]
        ) >= 1.0
    );
    let relay = wait::until("the relay's counters", Duration::from_secs(10), || async {
        let relay = w.stack.scrape(RELAY).await;
        (delta(
            &relay,
            &before.2,
            "mailflow_delivery_attempts_total",
            &["result=\"delivered\""],
        ) == 2.0)
            .then_some(relay)
    })
    .await;
    let to = |domain: &str| {
        delta(
            &relay,
            &before.2,
            "mailflow_delivery_attempts_total",
            &["result=\"delivered\"", &format!("domain=\"{domain}\"")],
        )
    };
    assert_eq!((to("remote-a.test"), to("remote-b.test")), (1.0, 1.0));
    assert_eq!(
        delta(
            &relay,
            &before.2,
            "mailflow_tls_sessions_total",
            &["direction=\"out\""]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &relay,
            &before.2,
            "mailflow_delivery_latency_seconds_count",
            &[]
        ),
        2.0
    );
    // The queue gauges are sampled: MAIL_EVENTS holds the three messages' events.
    let events = wait::until("the stream gauges", Duration::from_secs(15), || async {
        let relay = w.stack.scrape(RELAY).await;
        let n = value(&relay, "mailflow_stream_messages{stream=\"MAIL_EVENTS\"}");
        (n >= 3.0).then_some(n)
    })
    .await;
    assert_eq!(events, 3.0);
}

/// The log line of `message` in `log` that mentions `queue_id`.
fn line<'a>(log: &'a str, queue_id: &str, message: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(queue_id) && l.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} line for {queue_id} in:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_and_attempt_has_one_log_line_with_maillog_fields() {
    let w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let id = c
        .send_mail(
            "sender@client.test",
            &["carol@remote-a.test"],
            "Message-ID: <logged@client.test>\r\nSubject: logged\r\n\r\nx\r\n",
        )
        .await;
    w.stack.wait_final(&id, Duration::from_secs(30)).await;
    let (ingress, policy, relay) = (
        w.stack.log(INGRESS),
        w.stack.log(POLICY),
        w.stack.log(RELAY),
    );
    let accepted = line(&ingress, &id, "accepted");
    for field in [
        "from=sender@client.test",
        "to=carol@remote-a.test",
        "nrcpt=1",
        "status=\"accepted\"",
    ] {
        assert!(accepted.contains(field), "{field} missing: {accepted}");
    }
    let routed = line(&policy, &id, "routed");
    assert!(routed.contains("message_id=logged@client.test"), "{routed}");
    let attempt = line(&relay, &id, "delivery attempt");
    for field in [
        "message_id=logged@client.test",
        "from=sender@client.test",
        "to=carol@remote-a.test",
        "relay=mx.remote-a.test[127.0.0.2]",
        "delay=",
        "dsn=2.0.0",
        "status=\"delivered\"",
        "tls=TLSv1.3",
    ] {
        assert!(attempt.contains(field), "{field} missing: {attempt}");
    }
}
