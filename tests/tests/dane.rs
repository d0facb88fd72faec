//! DANE (RFC 7672) with real DNSSEC-signed zones: when an MX host has validated TLSA
//! records, mail goes only over TLS whose certificate matches them, and is deferred
//! otherwise, never sent in plaintext.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::dns::Signing;
use mailflow_tests::pki::TestCa;
use mailflow_tests::stack::reply_with;
use mailflow_tests::world::World;
use mailflow_tests::{peer, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validated_tlsa_records_make_matching_tls_mandatory() {
    let ca = TestCa::new();
    // For DANE-EE only the key counts, not the name nor the issuer.
    let (acceptor, spki) = ca.leaf(&["not-the-mx-name.test"]);
    let (_, other_spki) = ca.leaf(&["other.test"]);
    // Both remote zones are signed: remote-a's MX publishes sink A's key, remote-b's MX a
    // key sink B does not have.
    let tlsa = |key: &str| format!("_{{mx_port}}._tcp.mx IN TLSA 3 1 1 {key}\n");
    let (tlsa_a, tlsa_b) = (tlsa(&spki), tlsa(&other_spki));
    let w = World::start_with(
        "",
        &[("remote-a.test", &tlsa_a), ("remote-b.test", &tlsa_b)],
        &[
            ("remote-a.test", Signing::Signed),
            ("remote-b.test", Signing::Signed),
        ],
    )
    .await;
    w.a.offer_starttls_with(acceptor);

    let ok = w.send("carol@remote-a.test", "dane").await;
    let status = w.stack.wait_final(&ok, Duration::from_secs(30)).await;
    let carol = &status.recipients[0];
    assert_eq!(carol.state(), RecipientState::Delivered, "{status:?}");
    assert!(carol.tls.is_some() && w.a.received()[0].tls);

    // Sink B offers no STARTTLS: deferred, never sent in plaintext.
    let held = w.send("bob@remote-b.test", "dane").await;
    let status = w.deferred_with(&held, 2, "does not offer STARTTLS").await;
    let reply = reply_with(&status, 0, 451, "4.7.5");
    assert!(reply.text.starts_with("DANE of remote-b.test"), "{reply:?}");
    // With STARTTLS but a key the TLSA record does not name: still deferred.
    w.b.offer_starttls();
    let attempts = status.recipients[0].attempts;
    w.deferred_with(&held, attempts + 1, "TLSA").await;
    assert_eq!(w.b.arrived(), 0, "mail left without a matching certificate");
}

/// A zone whose DNSSEC chain is broken (its parent's DS names another key: forged answers or
/// a botched rollover) may have had its DANE records stripped: its mail waits, and never
/// goes in plaintext (RFC 7672 §2.1.1). A provably unsigned zone is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_failing_validation_is_deferred_and_an_unsigned_one_is_not() {
    let w = World::start_with("", &[], &[("remote-b.test", Signing::Broken)]).await;

    let held = w.send("bob@remote-b.test", "bogus").await;
    let status = w.deferred_with(&held, 2, "DNSSEC validation").await;
    let reply = reply_with(&status, 0, 451, "4.7.5");
    assert!(reply.text.contains("remote-b.test"), "{reply:?}");
    assert_eq!(
        w.b.arrived(),
        0,
        "mail left for a zone that failed validation"
    );

    // remote-a.test is unsigned, and its parent proves it: opportunistic TLS as ever.
    let ok = w.send("carol@remote-a.test", "unsigned").await;
    let status = w.stack.wait_final(&ok, Duration::from_secs(30)).await;
    assert_eq!(
        status.recipients[0].state(),
        RecipientState::Delivered,
        "{status:?}"
    );
    assert!(w.a.received()[0].tls);
}

/// REQUIRETLS mail (RFC 8689 §4.2.1) leaves over a path DANE verifies, to a next hop that
/// offers REQUIRETLS; to a provably unsigned domain without MTA-STS it is returned with
/// 5.7.30, never sent over unverified TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_mail_takes_a_dane_verified_path_or_returns() {
    let ca = TestCa::new();
    let (acceptor, spki) = ca.leaf(&["mx.remote-a.test"]);
    let tlsa = format!("_{{mx_port}}._tcp.mx IN TLSA 3 1 1 {spki}\n");
    let w = World::start_with(
        "",
        &[("remote-a.test", &tlsa)],
        &[("remote-a.test", Signing::Signed)],
    )
    .await;
    w.a.offer_starttls_with(acceptor);
    w.a.set_requiretls(true);
    w.b.offer_starttls();
    w.b.set_requiretls(true);

    let submission = w.stack.submission;
    peer::submit(
        &w.stack,
        submission,
        "carol@remote-a.test",
        "verified",
        &["--requiretls"],
    )
    .await;
    let got = wait::until("the message at sink A", Duration::from_secs(30), || async {
        w.a.received()
            .into_iter()
            .find(|d| d.subject() == "verified")
    })
    .await;
    assert!(got.tls, "{got:?}");
    assert!(
        got.mail_params.contains("REQUIRETLS"),
        "{}",
        got.mail_params
    );

    // remote-b.test is unsigned and has no MTA-STS policy: no verified path.
    peer::submit(
        &w.stack,
        submission,
        "bob@remote-b.test",
        "unverifiable",
        &["--requiretls"],
    )
    .await;
    let bounce = wait::until(
        "the bounce in demo's mailbox",
        Duration::from_secs(30),
        || async {
            w.stack
                .mailbox("example.test", "demo")
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .find(|m| m.contains("Status: 5.7.30"))
        },
    )
    .await;
    assert!(bounce.contains("REQUIRETLS"), "{bounce}");
    assert!(w.b.received().is_empty(), "sent over an unverified path");
}
