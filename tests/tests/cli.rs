//! The front door as an operator meets it: swaks against the ingress, `mailctl status`, and
//! the services' answer to a bad configuration.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::binary;
use mailflow_tests::client::queue_id;
use mailflow_tests::stack::local;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_to_demo_is_delivered_and_mailctl_shows_it() {
    let (stack, _dns) = local().await;
    let server = stack.smtp.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("swaks")
            .args([
                "--server",
                &server,
                "--to",
                "demo@example.test",
                "--from",
                "someone@client.test",
            ])
            .args(["--helo", "client.test", "--header", "Subject: walkthrough"])
            .output()
            .expect("swaks runs (scripts/install-deps peers installs it)")
    })
    .await
    .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    let line = transcript
        .lines()
        .find(|l| l.contains("queued as"))
        .unwrap_or_else(|| panic!("no queue id in:\n{transcript}"));
    let id = queue_id(line);
    let status = stack.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    let mail = stack.mailbox("example.test", "demo");
    assert_eq!(mail.len(), 1);
    assert!(String::from_utf8_lossy(&mail[0]).contains("Subject: walkthrough"));

    let queue = format!("http://{}", stack.queue);
    let out = Command::new(binary("mailctl"))
        .args(["--server", &queue, "status", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("queue id:  {id}")), "{text}");
    assert!(text.contains("sender:    someone@client.test"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("demo@example.test"))
        .expect("recipient row");
    assert!(row.contains("delivered"), "{row}");

    let out = Command::new(binary("mailctl"))
        .args(["--server", &queue, "status", "01AAAAAAAAAAAAAAAAAAAAAAAA"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}

#[test]
fn bad_config_lists_every_bad_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[ingress]\nmx_listen = \"nowhere\"\nmax_recipients = \"many\"\nbogus = 1\n[relay]\nack_wait = \"soon\"\n",
    )
    .unwrap();
    for service in ["mailflow-ingress", "mailflow-policy", "mailflow-relay"] {
        let out = Command::new(binary(service))
            .env("MAILFLOW_CONFIG", &path)
            .env("MAILFLOW_POLICY__GRPC_LISTEN", "also-bad")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{service}");
        let err = String::from_utf8_lossy(&out.stderr);
        for key in [
            "ingress.mx_listen",
            "ingress.max_recipients",
            "ingress.bogus",
            "relay.ack_wait",
            "policy.grpc_listen",
        ] {
            assert!(err.contains(key), "{service}: {key} missing from:\n{err}");
        }
    }
}
