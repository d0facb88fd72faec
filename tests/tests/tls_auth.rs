//! TLS and authentication with real clients: swaks and Python's smtplib, against the MX
//! (STARTTLS), submission (STARTTLS + AUTH required) and implicit-TLS listeners.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::{SmtpClient, queue_id};
use mailflow_tests::peer;
use mailflow_tests::stack::{local, write_certificate};
use mailflow_tests::wait;
use mailflow_tests::world::World;

/// Runs swaks and returns (success, transcript).
async fn swaks(args: Vec<String>) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || Command::new("swaks").args(args).output())
        .await
        .unwrap()
        .expect("swaks runs (scripts/install-deps peers installs it)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// swaks authenticating as demo@example.test (password `demo`) and sending from it; `tls`
/// is `--tls` (STARTTLS) or `--tlsc` (implicit TLS).
async fn swaks_as_demo(
    server: SocketAddr,
    tls: &str,
    mechanism: &str,
    to: &str,
    extra: &[&str],
) -> (bool, String) {
    let server = server.to_string();
    let mut list = vec![
        "--server",
        &server,
        tls,
        "--auth",
        mechanism,
        "--auth-user",
        "demo@example.test",
        "--auth-password",
        "demo",
        "--from",
        "demo@example.test",
        "--to",
        to,
        "--helo",
        "client.test",
    ];
    list.extend_from_slice(extra);
    swaks(args(&list)).await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn queued(transcript: &str) -> String {
    let line = transcript
        .lines()
        .find(|l| l.contains("queued as"))
        .unwrap_or_else(|| panic!("no queue id in:\n{transcript}"));
    queue_id(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_starttls_on_mx_pipelined() {
    let w = World::start().await;
    let server = w.stack.smtp.to_string();
    let (ok, t) = swaks(args(&[
        "--server",
        &server,
        "--tls",
        "--pipeline",
        "--to",
        "demo@example.test",
        "--from",
        "someone@client.test",
        "--helo",
        "client.test",
        "--header",
        "Subject: starttls",
    ]))
    .await;
    assert!(ok, "{t}");
    let id = queued(&t);
    w.stack.wait_final(&id, Duration::from_secs(30)).await;
    let mail = String::from_utf8(w.stack.mailbox("example.test", "demo").remove(0)).unwrap();
    // swaks (OpenSSL) lists AES-256-GCM first; the ingress chooses AES-128-GCM.
    assert!(
        mail.contains("\t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)"),
        "{mail}"
    );
    assert!(mail.contains("with ESMTPS id"), "{mail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_submission_with_auth_relays_to_a_remote_domain() {
    let w = World::start().await;
    let (ok, t) = swaks_as_demo(
        w.stack.submission,
        "--tls",
        "PLAIN",
        "alice@remote-a.test",
        &["--header", "Subject: submission"],
    )
    .await;
    assert!(ok, "{t}");
    let id = queued(&t);
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    let got = w.a.received();
    assert_eq!(got.len(), 1);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("with ESMTPSA id"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_implicit_tls_with_auth_login() {
    let w = World::start().await;
    let (ok, t) = swaks_as_demo(w.stack.smtps, "--tlsc", "LOGIN", "demo@example.test", &[]).await;
    assert!(ok, "{t}");
    w.stack
        .wait_final(&queued(&t), Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_refuses_plaintext_and_unauthenticated_mail() {
    let w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.submission).await;
    let ehlo = c.command("EHLO client.test", 250).await;
    assert!(ehlo.text.contains("STARTTLS"));
    assert!(
        !ehlo.text.contains("AUTH"),
        "AUTH must not be offered in plaintext: {}",
        ehlo.text
    );
    let r = c
        .command("AUTH PLAIN AGRlbW9AZXhhbXBsZS50ZXN0AGRlbW8=", 530)
        .await;
    assert!(
        r.text
            .starts_with("5.7.0 Must issue a STARTTLS command first"),
        "{r:?}"
    );
    let r = c.command("MAIL FROM:<demo@example.test>", 530).await;
    assert!(r.text.starts_with("5.7.0 "), "{r:?}");
    // On the MX port too, credentials never travel in plaintext.
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command("AUTH PLAIN AGRlbW9AZXhhbXBsZS50ZXN0AGRlbW8=", 530)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_starttls_login_smtputf8_and_sender_ownership() {
    let w = World::start().await;
    let extra = ["--smtputf8", "--mail-from", "boss@example.test"];
    let out = peer::submit(
        &w.stack,
        w.stack.submission,
        "bob@remote-b.test",
        "smtplib-utf8",
        &extra,
    )
    .await;
    assert_eq!(out.get("sender refused"), Some("553"));
    assert_eq!(out.get("refused"), Some("0"));
    assert!(out.get("tls").unwrap().starts_with("TLSv1."));
    wait::until(
        "bob's exchanger to receive the message",
        Duration::from_secs(30),
        || async {
            let got = w.b.received();
            got.iter()
                .any(|d| String::from_utf8_lossy(&d.data).contains("Subject: smtplib-utf8"))
                .then_some(())
        },
    )
    .await;
}

/// A sending MTA caches one TLS session per destination and offers it on each new
/// connection (Postfix's `smtp_tls_session_cache_database`): the ingress resumes it every
/// time (stateless tickets, as Postfix's smtpd issues), not just once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tls_session_resumes_on_every_connection() {
    let (stack, _dns) = local().await;
    let out = peer::run(args(&[
        "resume",
        "--server",
        &stack.smtp.to_string(),
        "--ca",
        stack.cert.to_str().unwrap(),
        "--times",
        "3",
    ]))
    .await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.get("first"), Some("full"));
    assert_eq!(out.get("resumed"), Some("3 of 3"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_implicit_tls() {
    let w = World::start().await;
    peer::submit(
        &w.stack,
        w.stack.smtps,
        "demo@example.test",
        "smtps",
        &["--implicit"],
    )
    .await;
    wait::until("local delivery", Duration::from_secs(30), || async {
        (!w.stack.mailbox("example.test", "demo").is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_limited_per_ip() {
    let w = World::start().await;
    let out = peer::run(args(&[
        "bad-login",
        "--server",
        &w.stack.submission.to_string(),
        "--ca",
        w.stack.cert.to_str().unwrap(),
        "--user",
        "demo@example.test",
        "--attempts",
        "5",
    ]))
    .await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    // auth_failure_limit = 3 in the test configuration.
    for i in 0..3 {
        assert_eq!(
            out.get(&format!("attempt {i}")),
            Some("535"),
            "{}",
            out.stdout
        );
    }
    for i in 3..5 {
        let code = out.get(&format!("attempt {i}")).unwrap();
        assert!(code == "421" || code == "disconnected", "{}", out.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_injection_is_not_executed() {
    let w = World::start().await;
    let out = peer::run(args(&[
        "injection",
        "--server",
        &w.stack.smtp.to_string(),
        "--ca",
        w.stack.cert.to_str().unwrap(),
    ]))
    .await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.get("starttls"), Some("220"));
    assert_eq!(
        out.get("first reply in tls"),
        Some("250 2.0.0 Ok"),
        "{}",
        out.stdout
    );
    assert_eq!(out.get("mail without ehlo"), Some("503"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_restart() {
    let w = World::start().await;
    let before = w.stack.dir.path().join("before.der");
    let out = peer::run(args(&[
        "peer-cert",
        "--server",
        &w.stack.smtps.to_string(),
        "--out",
        before.to_str().unwrap(),
    ]))
    .await;
    assert!(out.ok, "{}", out.stderr);
    // An open session survives the rotation.
    let mut open = SmtpClient::connect(w.stack.smtp).await;
    open.command("EHLO client.test", 250).await;
    let rotated = tempfile::tempdir().unwrap();
    let (cert, key) = write_certificate(rotated.path());
    std::fs::copy(&key, w.stack.dir.path().join("key.pem")).unwrap();
    std::fs::copy(&cert, w.stack.dir.path().join("cert.pem")).unwrap();
    let new_der = {
        let pem = std::fs::read_to_string(&cert).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        b64
    };
    let after = w.stack.dir.path().join("after.der");
    wait::until(
        "the new certificate to be served",
        Duration::from_secs(20),
        || async {
            let out = peer::run(args(&[
                "peer-cert",
                "--server",
                &w.stack.smtps.to_string(),
                "--out",
                after.to_str().unwrap(),
            ]))
            .await;
            let der = std::fs::read(&after).ok()?;
            (out.ok && der != std::fs::read(&before).unwrap()).then_some(())
        },
    )
    .await;
    let served = std::fs::read(&after).unwrap();
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(new_der)
        .unwrap();
    assert_eq!(served, expected);
    open.command("NOOP", 250).await;
}

/// lettre, a Rust client, over STARTTLS (submission) and implicit TLS, verifying the
/// server certificate against the test's own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_starttls_and_implicit_tls() {
    use lettre::message::Mailbox;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let w = World::start().await;
    let pem = std::fs::read(&w.stack.cert).unwrap();
    let tls = TlsParameters::builder("localhost".into())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .build_rustls()
        .unwrap();
    for (port, mode, subject) in [
        (
            w.stack.submission.port(),
            Tls::Required(tls.clone()),
            "lettre-starttls",
        ),
        (
            w.stack.smtps.port(),
            Tls::Wrapper(tls.clone()),
            "lettre-implicit",
        ),
    ] {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
            .port(port)
            .tls(mode)
            .credentials(Credentials::new("demo@example.test".into(), "demo".into()))
            .build();
        let from: Mailbox = "Demo <demo@example.test>".parse().unwrap();
        let email = Message::builder()
            .from(from.clone())
            .to("Carol <carol@remote-a.test>".parse().unwrap())
            .subject(subject)
            .body(String::from("Sent by lettre.\n"))
            .unwrap();
        let response = mailer.send(email).await.expect("lettre sends");
        assert_eq!(response.code().to_string(), "250");
        let text: String = response.message().collect::<Vec<_>>().join(" ");
        w.stack
            .wait_final(&queue_id(&text), Duration::from_secs(30))
            .await;
    }
    let subjects: Vec<String> =
        w.a.received()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.data).into_owned())
            .collect();
    for subject in ["lettre-starttls", "lettre-implicit"] {
        assert!(
            subjects
                .iter()
                .any(|s| s.contains(&format!("Subject: {subject}"))),
            "{subject}"
        );
    }
}
