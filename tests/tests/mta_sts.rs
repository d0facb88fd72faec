//! MTA-STS (RFC 8461) against a real policy host (HTTPS with a certificate from a test CA)
//! and real DNS: in enforce mode mail goes only over TLS verified for a listed MX, and is
//! deferred, never sent in plaintext, when that is not possible.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::https::HttpsServer;
use mailflow_tests::pki::TestCa;
use mailflow_tests::stack::{last_reply, reply_with};
use mailflow_tests::world::World;

const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mx.remote-a.test\r\nmx: *.remote-b.test\r\nmax_age: 86400\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_mode_delivers_only_over_verified_tls_and_defers_otherwise() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let host = ca.acceptor(&["mta-sts.remote-a.test", "mta-sts.remote-b.test"]);
    let https = HttpsServer::start("127.0.0.7".parse().unwrap(), 0, host, POLICY).await;
    let records = "_mta-sts IN TXT \"v=STSv1; id=20261128\"\nmta-sts IN A 127.0.0.7\n";
    let relay = format!(
        "mta_sts_port = {}\ntls_ca_file = \"{}\"",
        https.addr.port(),
        ca_file.display()
    );
    let w = World::start_with(
        &relay,
        &[("remote-a.test", records), ("remote-b.test", records)],
        &[],
    )
    .await;
    // A presents a certificate for its MX name from the trusted CA.
    w.a.offer_starttls_with(ca.acceptor(&["mx.remote-a.test"]));

    let ok = w.send("carol@remote-a.test", "sts").await;
    let status = w.stack.wait_final(&ok, Duration::from_secs(30)).await;
    let carol = &status.recipients[0];
    assert_eq!(carol.state(), RecipientState::Delivered, "{status:?}");
    assert!(carol.tls.is_some());
    assert!(w.a.received()[0].tls);

    // B offers no STARTTLS: deferred with 4.7.5, never sent in plaintext.
    let held = w.send("bob@remote-b.test", "sts").await;
    let status = w.deferred_with(&held, 2, "does not offer STARTTLS").await;
    let reply = reply_with(&status, 0, 451, "4.7.5");
    assert!(reply.text.contains("MTA-STS policy of remote-b.test"));
    // Now B offers STARTTLS with a certificate nobody vouches for: still deferred.
    w.b.offer_starttls();
    let attempts = status.recipients[0].attempts;
    w.deferred_with(&held, attempts + 1, "TLS with").await;
    assert_eq!(
        w.b.arrived(),
        0,
        "mail left in plaintext or over unverified TLS"
    );
    // One fetch per domain: the retries used the cached policy (same record id).
    assert_eq!(https.served(), 2);
}

/// A policy host whose first address takes the connection but fails the TLS handshake is
/// asked at its next address: the policy still applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_host_is_asked_at_each_of_its_addresses() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path());
    let host = ca.acceptor(&["mta-sts.remote-b.test"]);
    let https = HttpsServer::start("127.0.0.7".parse().unwrap(), 0, host, POLICY).await;
    // 127.0.0.9 accepts on the same port and closes at once.
    let broken = tokio::net::TcpListener::bind(("127.0.0.9", https.addr.port()))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = broken.accept().await {
            drop(stream);
        }
    });
    let records =
        "_mta-sts IN TXT \"v=STSv1; id=1\"\nmta-sts IN A 127.0.0.9\nmta-sts IN A 127.0.0.7\n";
    let relay = format!(
        "mta_sts_port = {}\ntls_ca_file = \"{}\"",
        https.addr.port(),
        ca_file.display()
    );
    let w = World::start_with(&relay, &[("remote-b.test", records)], &[]).await;
    // B offers no STARTTLS: under the policy, deferred rather than sent in plaintext.
    let held = w.send("bob@remote-b.test", "second address").await;
    let status = w.deferred_with(&held, 1, "does not offer STARTTLS").await;
    assert!(
        last_reply(&status, 0)
            .text
            .contains("MTA-STS policy of remote-b.test")
    );
    assert_eq!(w.b.arrived(), 0, "sent in plaintext despite the policy");
}
