//! The directory as an operator drives it with `mailctl`: domains, users and aliases, and
//! what they change in the SMTP session and in delivery.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::{
    AuthenticateRequest, SessionInfo, authenticate_response::Result as AuthResult,
    policy_client::PolicyClient,
};
use mailflow_tests::client::SmtpClient;
use mailflow_tests::mailctl::{self, ok, refused};
use mailflow_tests::peer;
use mailflow_tests::stack::reply_with;
use mailflow_tests::stack::{Stack, local};

async fn authenticate(stack: &Stack, user: &str, password: &str) -> AuthResult {
    let mut policy = PolicyClient::connect(format!("http://{}", stack.policy))
        .await
        .unwrap();
    policy
        .authenticate(AuthenticateRequest {
            session: Some(SessionInfo {
                client_ip: "192.0.2.7".into(),
                listener: "submission".into(),
                ..Default::default()
            }),
            mechanism: "PLAIN".into(),
            username: user.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .result()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailctl_manages_domains_users_and_aliases() {
    let (stack, _dns) = local().await;
    ok(&stack, &["domain", "add", "Other.test"]).await;
    assert_eq!(
        ok(&stack, &["domain", "list"]).await,
        "example.test\nother.test\n"
    );

    // Users: the password comes from standard input, and passwd replaces it.
    let added = mailctl::run(&stack, &["user", "add", "Ann@other.test"], "first\n").await;
    assert!(added.ok, "{}", added.stderr);
    assert_eq!(added.stdout, "user ann@other.test added\n");
    assert_eq!(
        authenticate(&stack, "ann@other.test", "first").await,
        AuthResult::Ok
    );
    let changed = mailctl::run(&stack, &["user", "passwd", "ann@other.test"], "second\n").await;
    assert!(changed.ok, "{}", changed.stderr);
    assert_eq!(
        authenticate(&stack, "ann@other.test", "first").await,
        AuthResult::BadCredentials
    );
    assert_eq!(
        authenticate(&stack, "ann@other.test", "second").await,
        AuthResult::Ok
    );
    let nobody = mailctl::run(&stack, &["user", "passwd", "nobody@other.test"], "x\n").await;
    assert!(
        !nobody.ok && nobody.stderr.contains("NotFound"),
        "{}",
        nobody.stderr
    );
    let empty = mailctl::run(&stack, &["user", "passwd", "ann@other.test"], "\n").await;
    assert!(
        !empty.ok && empty.stderr.contains("no password"),
        "{}",
        empty.stderr
    );

    // Aliases: targets accumulate, list shows them, rm takes one or all.
    assert_eq!(
        ok(
            &stack,
            &["alias", "add", "Sales@other.test", "ann@other.test"]
        )
        .await,
        "sales@other.test -> ann@other.test\n"
    );
    assert_eq!(
        ok(
            &stack,
            &[
                "alias",
                "add",
                "sales@other.test",
                "Boss@Far.test",
                "ann@other.test"
            ]
        )
        .await,
        "sales@other.test -> ann@other.test, Boss@far.test\n"
    );
    ok(&stack, &["alias", "add", "@other.test", "ann@other.test"]).await;
    assert_eq!(
        ok(&stack, &["alias", "list", "--domain", "other.test"]).await,
        "@other.test -> ann@other.test\nsales@other.test -> ann@other.test, Boss@far.test\n"
    );
    refused(
        &stack,
        &["alias", "add", "x@nowhere.test", "ann@other.test"],
        "FailedPrecondition",
    )
    .await;
    refused(
        &stack,
        &["alias", "add", "x@other.test", "not an address"],
        "InvalidArgument",
    )
    .await;
    refused(
        &stack,
        &["alias", "rm", "sales@other.test", "stranger@far.test"],
        "NotFound",
    )
    .await;
    assert_eq!(
        ok(
            &stack,
            &["alias", "rm", "sales@other.test", "boss@far.test"]
        )
        .await,
        "sales@other.test -> ann@other.test\n"
    );
    assert_eq!(
        ok(
            &stack,
            &["alias", "rm", "sales@other.test", "ann@other.test"]
        )
        .await,
        "alias sales@other.test removed\n"
    );
    refused(&stack, &["alias", "rm", "sales@other.test"], "NotFound").await;

    // A domain in use cannot be removed; once empty it can.
    refused(
        &stack,
        &["domain", "rm", "other.test"],
        "1 users and 1 aliases",
    )
    .await;
    ok(&stack, &["alias", "rm", "@other.test"]).await;
    assert_eq!(
        ok(&stack, &["user", "rm", "ann@other.test"]).await,
        "user ann@other.test removed\n"
    );
    assert_eq!(
        authenticate(&stack, "ann@other.test", "second").await,
        AuthResult::BadCredentials
    );
    refused(&stack, &["user", "rm", "ann@other.test"], "NotFound").await;
    ok(&stack, &["domain", "rm", "other.test"]).await;
    assert_eq!(ok(&stack, &["domain", "list"]).await, "example.test\n");
    refused(&stack, &["domain", "rm", "other.test"], "NotFound").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_and_catch_all_are_accepted_and_expanded_into_mailboxes() {
    let (stack, _dns) = local().await;
    stack.add_user("boss@example.test", "boss").await;
    ok(&stack, &["domain", "add", "strict.test"]).await;
    ok(
        &stack,
        &[
            "alias",
            "add",
            "sales@example.test",
            "demo@example.test",
            "boss@example.test",
        ],
    )
    .await;
    ok(
        &stack,
        &["alias", "add", "@example.test", "boss@example.test"],
    )
    .await;
    ok(
        &stack,
        &["alias", "add", "loop@strict.test", "loop2@strict.test"],
    )
    .await;
    ok(
        &stack,
        &["alias", "add", "loop2@strict.test", "loop@strict.test"],
    )
    .await;

    let mut c = SmtpClient::connect(stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    // Nothing takes mail for an unknown address of a domain without a catch-all.
    c.command("MAIL FROM:<someone@client.test>", 250).await;
    let unknown = c.command("RCPT TO:<ghost@strict.test>", 550).await;
    assert!(unknown.text.contains("5.1.1"), "{}", unknown.text);
    c.command("RSET", 250).await;
    // The alias, its own target named again, and a stray caught by the catch-all.
    let id = c
        .send_mail(
            "someone@client.test",
            &[
                "sales@example.test",
                "demo@example.test",
                "stray@example.test",
            ],
            "Subject: to sales\r\n\r\nhello\r\n",
        )
        .await;
    let status = stack.wait_final(&id, Duration::from_secs(30)).await;
    let rows: Vec<(&str, &str)> = status
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.original.as_str()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("demo@example.test", "sales@example.test"),
            ("boss@example.test", "sales@example.test"),
        ],
        "one copy per mailbox, whoever asked for it"
    );
    assert_eq!(stack.mailbox("example.test", "demo").len(), 1);
    assert_eq!(stack.mailbox("example.test", "boss").len(), 1);

    // An alias loop is accepted at RCPT (the address exists), bounced with 5.4.6, and the
    // sender is told.
    let looped = c
        .send_mail(
            "boss@example.test",
            &["loop@strict.test"],
            "Subject: loop\r\n\r\nx\r\n",
        )
        .await;
    let status = stack.wait_final(&looped, Duration::from_secs(30)).await;
    reply_with(&status, 0, 550, "5.4.6");
    let report = mailflow_tests::wait::until(
        "the failure report in boss's mailbox",
        Duration::from_secs(30),
        || async {
            let mail = stack.mailbox("example.test", "boss");
            mail.into_iter()
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .find(|m| m.contains("multipart/report"))
        },
    )
    .await;
    assert!(
        report.contains("Final-Recipient: rfc822; loop@strict.test"),
        "{report}"
    );
    assert!(report.contains("Status: 5.4.6"), "{report}");
    c.command("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_user_may_send_as_its_aliases_only() {
    let (stack, _dns) = local().await;
    stack.add_user("boss@example.test", "boss").await;
    ok(
        &stack,
        &["alias", "add", "sales@example.test", "demo@example.test"],
    )
    .await;
    ok(
        &stack,
        &[
            "alias",
            "add",
            "team@example.test",
            "sales@example.test",
            "boss@example.test",
        ],
    )
    .await;
    let submit = |from: &'static str| {
        let stack = &stack;
        async move {
            let extra = ["--mail-from", from];
            let out =
                peer::submit(stack, stack.submission, "boss@example.test", from, &extra).await;
            out.get("sender refused").unwrap().to_string()
        }
    };
    assert_eq!(submit("sales@example.test").await, "no", "demo's alias");
    assert_eq!(
        submit("team@example.test").await,
        "no",
        "an alias reaching demo through another"
    );
    assert_eq!(
        submit("boss@example.test").await,
        "553",
        "another user's address"
    );
    assert_eq!(
        submit("stranger@remote.test").await,
        "553",
        "a remote address"
    );
}
