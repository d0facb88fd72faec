//! DANE (RFC 7672) with real DNSSEC-signed zones: when an MX host has validated TLSA
//! records, mail goes only over TLS whose certificate matches them, and is deferred
//! otherwise, never sent in plaintext.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::dns::Signing;
use mailflow_tests::pki::TestCa;
use mailflow_tests::world::World;

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
    let reply = status.recipients[0].last_reply.clone().unwrap();
    assert_eq!(
        (reply.code, reply.enhanced.as_str()),
        (451, "4.7.5"),
        "{reply:?}"
    );
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
    let reply = status.recipients[0].last_reply.clone().unwrap();
    assert_eq!(
        (reply.code, reply.enhanced.as_str()),
        (451, "4.7.5"),
        "{reply:?}"
    );
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
