//! The session state machine driven over in-memory I/O, with a backend that is plain data
//! (this is a unit test of protocol logic; the end-to-end tests use the real services).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mailflow_proto::v1::authenticate_response::Result as AuthResult;
use mailflow_proto::v1::{
    AcceptedMessage, AuthenticateRequest, AuthenticateResponse, Body, CheckConnectionRequest,
    CheckRecipientRequest, CheckSenderRequest, TlsInfo, Verdict, body::Location, verdict::Action,
};
use mailflow_smtp::{LineEndings, ReplyDecoder, ServerReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::{Ending, ListenerKind, Session, SessionConfig};
use crate::backend::{Backend, BackendError, Spool};

/// Accepts `@local.test` (but not `unknown@`), refuses `@remote.test`, and cannot reach
/// policy for `@down.test`. Refuses unauthenticated senders from `@nowhere.test`, and
/// authenticated ones using another address. Knows one user, `user@local.test` with password `secret`, and
/// cuts a client off after 3 failures. Records what was queued, and what became of spooled
/// bodies.
#[derive(Clone)]
struct TestBackend {
    queued: Arc<Mutex<Vec<(AcceptedMessage, Bytes)>>>,
    queue_down: Arc<Mutex<bool>>,
    auth_failures: Arc<Mutex<u32>>,
    /// Bodies above this size are spooled.
    inline_limit: usize,
    spools: Arc<Mutex<Spools>>,
}

impl Default for TestBackend {
    fn default() -> Self {
        Self {
            queued: Arc::default(),
            queue_down: Arc::default(),
            auth_failures: Arc::default(),
            inline_limit: 1_000_000,
            spools: Arc::default(),
        }
    }
}

/// What happened to spooled bodies.
#[derive(Debug, Default)]
struct Spools {
    /// Finished bodies by name.
    stored: HashMap<String, Vec<u8>>,
    /// Bodies given up (aborted or dropped unfinished).
    abandoned: usize,
    /// Writes so far.
    writes: usize,
    /// Writes fail.
    broken: bool,
}

/// An in-memory spool.
#[derive(Debug)]
struct MemorySpool {
    name: String,
    content: Vec<u8>,
    spools: Arc<Mutex<Spools>>,
    done: bool,
}

impl Spool for MemorySpool {
    async fn write(&mut self, content: &[u8]) -> Result<(), BackendError> {
        let mut spools = self.spools.lock().unwrap();
        if spools.broken {
            return Err(BackendError::Queue("object store down".into()));
        }
        spools.writes += 1;
        self.content.extend_from_slice(content);
        Ok(())
    }

    async fn finish(mut self) -> Result<Body, BackendError> {
        self.done = true;
        let content = std::mem::take(&mut self.content);
        let size = content.len() as u64;
        self.spools
            .lock()
            .unwrap()
            .stored
            .insert(self.name.clone(), content);
        Ok(Body {
            location: Some(Location::Object(self.name.clone())),
            size,
            ..Default::default()
        })
    }

    async fn abort(self) {}
}

impl Drop for MemorySpool {
    fn drop(&mut self) {
        if !self.done {
            self.spools.lock().unwrap().abandoned += 1;
        }
    }
}

impl Backend for TestBackend {
    type Spool = MemorySpool;

    fn inline_limit(&self) -> usize {
        self.inline_limit
    }

    fn spool(&self, queue_id: &str) -> MemorySpool {
        MemorySpool {
            name: queue_id.to_string(),
            content: Vec::new(),
            spools: self.spools.clone(),
            done: false,
        }
    }

    async fn check_connection(&self, req: CheckConnectionRequest) -> Result<Verdict, BackendError> {
        // 192.0.2.66 is on a blocklist.
        let listed = req.session.unwrap().client_ip == "192.0.2.66";
        Ok(Verdict {
            action: if listed {
                Action::Reject
            } else {
                Action::Accept
            } as i32,
            code: if listed { 554 } else { 0 },
            enhanced: if listed { "5.7.1" } else { "" }.into(),
            text: "Service unavailable; client blocked using bl.test".into(),
            ..Default::default()
        })
    }

    async fn check_recipient(&self, req: CheckRecipientRequest) -> Result<Verdict, BackendError> {
        let rcpt = req.recipient;
        let verdict = |action: Action, code, enh: &str, text: &str| Verdict {
            action: action as i32,
            code,
            enhanced: enh.into(),
            text: text.into(),
            ..Default::default()
        };
        if rcpt.ends_with("@down.test") {
            return Err(BackendError::Policy("unreachable".into()));
        }
        Ok(if rcpt.starts_with("unknown@") {
            verdict(Action::Reject, 550, "5.1.1", "User unknown")
        } else if rcpt.ends_with("@local.test") || rcpt == "postmaster@mx.local.test" {
            verdict(Action::Accept, 0, "", "")
        } else {
            verdict(Action::Reject, 554, "5.7.1", "Relay access denied")
        })
    }

    async fn check_sender(&self, req: CheckSenderRequest) -> Result<Verdict, BackendError> {
        let identity = req.session.unwrap().auth_identity;
        let refuse = |code, enhanced: &str, text: &str| Verdict {
            action: Action::Reject as i32,
            code,
            enhanced: enhanced.into(),
            text: text.into(),
            ..Default::default()
        };
        Ok(
            if identity.is_empty() && req.sender.ends_with("@nowhere.test") {
                refuse(550, "5.1.8", "Sender address rejected: Domain not found")
            } else if identity.is_empty() || req.sender == identity {
                Verdict {
                    action: Action::Accept as i32,
                    // The real policy evaluates SPF for outside senders only.
                    spf: if identity.is_empty() { "softfail" } else { "" }.into(),
                    ..Default::default()
                }
            } else {
                refuse(553, "5.7.1", "Sender address rejected: not owned by user")
            },
        )
    }

    async fn authenticate(
        &self,
        req: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, BackendError> {
        let mut failures = self.auth_failures.lock().unwrap();
        let (result, identity) = if *failures >= 3 {
            (AuthResult::TooManyFailures as i32, "")
        } else if req.username == "user@local.test" && req.password == "secret" {
            (AuthResult::Ok as i32, "user@local.test")
        } else if req.username == "newer@local.test" {
            // A result a later policy service might send.
            (42, "")
        } else {
            *failures += 1;
            (AuthResult::BadCredentials as i32, "")
        };
        Ok(AuthenticateResponse {
            result,
            identity: identity.into(),
        })
    }

    async fn enqueue(&self, message: AcceptedMessage) -> Result<(), BackendError> {
        if *self.queue_down.lock().unwrap() {
            return Err(BackendError::Queue("down".into()));
        }
        let content = match &message.body.as_ref().unwrap().location {
            Some(Location::Inline(content)) => content.clone(),
            Some(Location::Object(name)) => {
                Bytes::from(self.spools.lock().unwrap().stored[name].clone())
            }
            None => panic!("a message without a body"),
        };
        self.queued.lock().unwrap().push((message, content));
        Ok(())
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.local.test".into(),
        kind: ListenerKind::Mx,
        starttls: true,
        max_message_size: 10_000,
        max_recipients: 3,
        max_line_length: 512,
        min_data_rate: 500,
        hard_error_limit: 10,
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
        line_endings: LineEndings::Reject,
    }
}

/// The client end of a session.
struct Client {
    io: DuplexStream,
    buf: BytesMut,
    decoder: ReplyDecoder,
}

impl Client {
    async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.unwrap();
    }

    async fn reply(&mut self) -> ServerReply {
        loop {
            if let Some(r) = self.decoder.decode(&mut self.buf).unwrap() {
                return r;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.io.read_buf(&mut self.buf))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "connection closed while waiting for a reply");
        }
    }

    /// Reads one reply and checks its code and enhanced code.
    async fn expect(&mut self, code: u16, enhanced: &str) -> ServerReply {
        let r = self.reply().await;
        assert_eq!(r.code, code, "unexpected reply {r:?}");
        let got = r.enhanced.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(got, enhanced, "unexpected enhanced code in {r:?}");
        r
    }

    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.io.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }

    /// A pipelined MAIL, RCPT and DATA that must be accepted.
    async fn open_data(&mut self) {
        self.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n")
            .await;
        self.expect(250, "2.1.0").await;
        self.expect(250, "2.1.5").await;
        self.expect(354, "").await;
    }

    async fn ehlo(&mut self) {
        self.expect(220, "").await;
        self.send("EHLO client.test\r\n").await;
        self.expect(250, "").await;
    }

    /// Opens a transaction from `a@remote.test` to `u@local.test`.
    async fn envelope(&mut self) {
        self.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<u@local.test>\r\n")
            .await;
        self.expect(250, "2.1.0").await;
        self.expect(250, "2.1.5").await;
    }
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

fn start_with(config: SessionConfig, backend: TestBackend, shutdown: CancellationToken) -> Client {
    start_full(config, backend, shutdown, None)
}

/// A session as it runs after a TLS handshake (the in-memory stream stands for the TLS one:
/// the state machine is the same).
fn start_encrypted(config: SessionConfig, backend: TestBackend) -> Client {
    start_full(config, backend, CancellationToken::new(), Some(tls_info()))
}

fn start_full(
    config: SessionConfig,
    backend: TestBackend,
    shutdown: CancellationToken,
    tls: Option<TlsInfo>,
) -> Client {
    start_at("192.0.2.10", config, backend, shutdown, tls)
}

fn start_at(
    ip: &str,
    config: SessionConfig,
    backend: TestBackend,
    shutdown: CancellationToken,
    tls: Option<TlsInfo>,
) -> Client {
    let (server, client) = tokio::io::duplex(64 * 1024);
    let ip: IpAddr = ip.parse().unwrap();
    let session = Session::new(server, ip, tls, Arc::new(config), backend, shutdown);
    tokio::spawn(session.run());
    Client {
        io: client,
        buf: BytesMut::new(),
        decoder: ReplyDecoder::default(),
    }
}

fn start(backend: TestBackend) -> Client {
    start_with(config(), backend, CancellationToken::new())
}

#[tokio::test]
async fn ehlo_lists_extensions() {
    let mut c = start(TestBackend::default());
    let greeting = c.expect(220, "").await;
    assert!(greeting.text().starts_with("mx.local.test ESMTP"));
    c.send("EHLO client.test\r\n").await;
    let r = c.expect(250, "").await;
    for ext in [
        "PIPELINING",
        "SIZE 10000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "DSN",
    ] {
        assert!(r.lines.iter().any(|l| l == ext), "{ext} missing in {r:?}");
    }
    c.send("HELO other.test\r\n").await;
    assert_eq!(c.expect(250, "").await.lines, vec!["mx.local.test"]);
}

#[tokio::test]
async fn a_transaction_is_queued_with_a_received_header() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.send("MAIL FROM:<sender@remote.test> SIZE=100\r\n").await;
    c.expect(250, "2.1.0").await;
    c.send("RCPT TO:<user@local.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user@local.test\r\n")
        .await;
    c.expect(250, "2.1.5").await;
    c.send("DATA\r\n").await;
    c.expect(354, "").await;
    c.send("Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
        .await;
    let r = c.expect(250, "2.0.0").await;
    let id = r
        .text()
        .strip_prefix("Ok: queued as ")
        .expect("queue id")
        .to_string();
    c.send("QUIT\r\n").await;
    c.expect(221, "2.0.0").await;
    assert!(c.closed().await);

    let queued = backend.queued.lock().unwrap();
    let (msg, content) = &queued[0];
    assert_eq!(msg.queue_id, id);
    assert_eq!(
        msg.mail_from.as_ref().unwrap().address,
        "sender@remote.test"
    );
    assert_eq!(msg.recipients[0].address, "user@local.test");
    assert_eq!(msg.recipients[0].dsn_orcpt, "rfc822;user@local.test");
    assert_eq!(msg.recipients[0].dsn_notify.len(), 2);
    assert_eq!(msg.client_ip, "192.0.2.10");
    // The sender check's SPF result travels with the message.
    assert_eq!(msg.spf, "softfail");
    assert_eq!(msg.helo, "client.test");
    let text = std::str::from_utf8(content).unwrap();
    assert!(
        text.starts_with("Received: from client.test ([192.0.2.10])\r\n\tby mx.local.test"),
        "{text}"
    );
    assert!(text.contains(&format!("id {id}")));
    assert!(
        text.ends_with("\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"),
        "{text}"
    );
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.send("MAIL FROM:<>\r\nRCPT TO:<a@local.test>\r\nRCPT TO:<unknown@local.test>\r\nRCPT TO:<b@remote.test>\r\nDATA\r\n").await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(550, "5.1.1").await;
    c.expect(554, "5.7.1").await;
    c.expect(354, "").await;
    c.send("x\r\n.\r\nNOOP\r\n").await;
    c.expect(250, "2.0.0").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.recipients.len(), 1);
    assert_eq!(queued[0].0.mail_from.as_ref().unwrap().address, "");
}

#[tokio::test]
async fn bad_sequences_get_503() {
    let mut c = start(TestBackend::default());
    c.expect(220, "").await;
    c.send("MAIL FROM:<a@local.test>\r\n").await;
    c.expect(503, "5.5.1").await;
    c.send("HELO c.test\r\nRCPT TO:<a@local.test>\r\n").await;
    c.expect(250, "").await;
    c.expect(503, "5.5.1").await;
    c.send("DATA\r\n").await;
    c.expect(503, "5.5.1").await;
    c.send("MAIL FROM:<a@local.test>\r\nMAIL FROM:<a@local.test>\r\nDATA\r\n")
        .await;
    c.expect(250, "2.1.0").await;
    c.expect(503, "5.5.1").await;
    let r = c.expect(503, "5.5.1").await;
    assert!(r.text().contains("RCPT"));
    c.send("RSET\r\nRCPT TO:<a@local.test>\r\n").await;
    c.expect(250, "2.0.0").await;
    c.expect(503, "5.5.1").await;
}

#[tokio::test]
async fn trouble_behind_the_session_is_temporary() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.send(
        "MAIL FROM:<a@remote.test>\r\nRCPT TO:<x@down.test>\r\nRCPT TO:<y@local.test>\r\nDATA\r\n",
    )
    .await;
    c.expect(250, "2.1.0").await;
    c.expect(451, "4.3.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    *backend.queue_down.lock().unwrap() = true;
    c.send("hello\r\n.\r\n").await;
    c.expect(451, "4.3.0").await;
    *backend.queue_down.lock().unwrap() = false;
    c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<y@local.test>\r\nDATA\r\n")
        .await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    c.send("hello\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    assert_eq!(backend.queued.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn recipient_limit_gives_452() {
    let mut c = start(TestBackend::default());
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>\r\n").await;
    c.expect(250, "2.1.0").await;
    for i in 0..3 {
        c.send(&format!("RCPT TO:<u{i}@local.test>\r\n")).await;
        c.expect(250, "2.1.5").await;
    }
    c.send("RCPT TO:<u9@local.test>\r\n").await;
    c.expect(452, "4.5.3").await;
}

/// `<Postmaster>` without a domain is accepted as postmaster at our host name.
#[tokio::test]
async fn bare_postmaster_is_our_postmaster() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<PostMaster>\r\nDATA\r\n")
        .await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    c.send("hello\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    assert_eq!(
        queued[0].0.recipients[0].address,
        "postmaster@mx.local.test"
    );
}

/// Recipients past the limit are not errors: a client that pipelined more than the hard
/// error limit of them still sends its message to those accepted.
#[tokio::test]
async fn surplus_recipients_do_not_end_the_session() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    let mut batch = "MAIL FROM:<a@remote.test>\r\n".to_string();
    for i in 0..20 {
        batch.push_str(&format!("RCPT TO:<u{i}@local.test>\r\n"));
    }
    batch.push_str("DATA\r\n");
    c.send(&batch).await;
    c.expect(250, "2.1.0").await;
    for _ in 0..3 {
        c.expect(250, "2.1.5").await;
    }
    for _ in 3..20 {
        c.expect(452, "4.5.3").await;
    }
    c.expect(354, "").await;
    c.send("hello\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.recipients.len(), 3);
}

#[tokio::test]
async fn over_long_line_is_refused_and_the_session_survives() {
    let mut c = start(TestBackend::default());
    c.ehlo().await;
    let long = format!("NOOP {}\r\n", "x".repeat(100_000));
    c.send(&long).await;
    c.expect(500, "5.5.2").await;
    c.send("NOOP\r\n").await;
    c.expect(250, "2.0.0").await;
}

#[tokio::test]
async fn size_limits() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test> SIZE=10001\r\n").await;
    c.expect(552, "5.3.4").await;
    c.open_data().await;
    let line = format!("{}\r\n", "y".repeat(998));
    for _ in 0..20 {
        c.send(&line).await;
    }
    c.send(".\r\n").await;
    c.expect(552, "5.3.4").await;
    assert!(backend.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bare_lf_smuggling_is_refused() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.open_data().await;
    // A smuggled second transaction behind "\n.\n" must stay message text.
    c.send("Subject: a\r\n\r\nhi\n.\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nevil\r\n.\r\n").await;
    c.expect(550, "5.5.2").await;
    c.send("NOOP\r\n").await;
    c.expect(250, "2.0.0").await;
    assert!(backend.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn normalizes_bare_lf_when_configured() {
    let backend = TestBackend::default();
    let mut cfg = config();
    cfg.line_endings = LineEndings::Normalize;
    let mut c = start_with(cfg, backend.clone(), CancellationToken::new());
    c.ehlo().await;
    c.open_data().await;
    c.send("a\nb\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    assert!(queued[0].1.ends_with(b"\r\na\r\nb\r\n"));
}

#[tokio::test]
async fn too_many_errors_closes_with_421() {
    let mut cfg = config();
    cfg.hard_error_limit = 3;
    let mut c = start_with(cfg, TestBackend::default(), CancellationToken::new());
    c.expect(220, "").await;
    c.send("FOO\r\nBAR\r\nBAZ\r\n").await;
    c.expect(500, "5.5.2").await;
    c.expect(500, "5.5.2").await;
    c.expect(500, "5.5.2").await;
    c.expect(421, "4.7.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn utf8_needs_smtputf8() {
    let mut c = start(TestBackend::default());
    c.ehlo().await;
    c.send("MAIL FROM:<jöran@remote.test>\r\n").await;
    c.expect(553, "5.6.7").await;
    c.send("MAIL FROM:<jöran@remote.test> SMTPUTF8\r\nRCPT TO:<ü@local.test>\r\n")
        .await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
}

#[tokio::test]
async fn nul_and_invalid_utf8_get_501_and_the_session_survives() {
    let mut c = start(TestBackend::default());
    c.ehlo().await;
    c.io.write_all(b"NOOP \0\r\nHELO \xff\r\nNOOP\r\n")
        .await
        .unwrap();
    c.expect(501, "5.5.2").await;
    c.expect(501, "5.5.2").await;
    c.expect(250, "2.0.0").await;
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_with_421() {
    let shutdown = CancellationToken::new();
    let mut c = start_with(config(), TestBackend::default(), shutdown.clone());
    c.ehlo().await;
    shutdown.cancel();
    c.expect(421, "4.3.2").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn shutdown_lets_an_open_transaction_finish() {
    let backend = TestBackend::default();
    let shutdown = CancellationToken::new();
    let mut c = start_with(config(), backend.clone(), shutdown.clone());
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>\r\n").await;
    c.expect(250, "2.1.0").await;
    shutdown.cancel();
    c.send("RCPT TO:<u@local.test>\r\nDATA\r\n").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    c.send("x\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    c.expect(421, "4.3.2").await;
    assert_eq!(backend.queued.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn idle_client_times_out_with_421() {
    let mut cfg = config();
    cfg.command_timeout = Duration::from_millis(200);
    let mut c = start_with(cfg, TestBackend::default(), CancellationToken::new());
    c.expect(220, "").await;
    c.expect(421, "4.4.2").await;
    assert!(c.closed().await);
}

fn submission() -> SessionConfig {
    SessionConfig {
        kind: ListenerKind::Submission,
        ..config()
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn starttls_discards_pipelined_plaintext_and_resets_the_session() {
    let backend = TestBackend::default();
    let (server, client) = tokio::io::duplex(64 * 1024);
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    let cfg = Arc::new(config());
    let session = Session::new(
        server,
        ip,
        None,
        cfg.clone(),
        backend.clone(),
        CancellationToken::new(),
    );
    let task = tokio::spawn(session.run());
    let mut c = Client {
        io: client,
        buf: BytesMut::new(),
        decoder: ReplyDecoder::default(),
    };
    c.expect(220, "").await;
    c.send("EHLO client.test\r\n").await;
    let r = c.expect(250, "").await;
    assert!(r.lines.iter().any(|l| l == "STARTTLS"));
    assert!(
        !r.lines.iter().any(|l| l.starts_with("AUTH")),
        "no AUTH before TLS"
    );
    // The injection attack: commands pipelined behind STARTTLS in plaintext.
    c.send("STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n").await;
    c.expect(220, "2.0.0").await;
    let Ok(Ok(Ending::StartTls(stream))) = task.await else {
        panic!("the session did not hand over for TLS");
    };
    let resumed = Session::new(
        stream,
        ip,
        Some(tls_info()),
        cfg,
        backend,
        CancellationToken::new(),
    );
    tokio::spawn(resumed.resume());
    // Fresh state: MAIL needs a new EHLO; the injected MAIL was never executed.
    c.send("MAIL FROM:<a@remote.test>\r\n").await;
    c.expect(503, "5.5.1").await;
    c.send("EHLO client.test\r\n").await;
    let r = c.expect(250, "").await;
    assert!(
        !r.lines.iter().any(|l| l == "STARTTLS"),
        "no second STARTTLS"
    );
    assert!(r.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"));
    c.send("STARTTLS\r\n").await;
    c.expect(503, "5.5.1").await;
}

#[tokio::test]
async fn auth_needs_tls() {
    let mut c = start(TestBackend::default());
    c.ehlo().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        b64("\0user@local.test\0secret")
    ))
    .await;
    c.expect(530, "5.7.0").await;
}

#[tokio::test]
async fn auth_plain_and_login() {
    let mut c = start_encrypted(config(), TestBackend::default());
    c.ehlo().await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        b64("\0user@local.test\0wrong")
    ))
    .await;
    c.expect(535, "5.7.8").await;
    c.send("AUTH PLAIN\r\n").await;
    c.expect(334, "").await;
    c.send(&format!("{}\r\n", b64("\0user@local.test\0secret")))
        .await;
    c.expect(235, "2.7.0").await;
    c.send("AUTH PLAIN\r\n").await;
    c.expect(503, "5.5.1").await;

    let mut c = start_encrypted(config(), TestBackend::default());
    c.ehlo().await;
    c.send("AUTH LOGIN\r\n").await;
    let r = c.expect(334, "").await;
    assert_eq!(r.text(), "VXNlcm5hbWU6");
    c.send(&format!("{}\r\n", b64("user@local.test"))).await;
    let r = c.expect(334, "").await;
    assert_eq!(r.text(), "UGFzc3dvcmQ6");
    c.send(&format!("{}\r\n", b64("secret"))).await;
    c.expect(235, "2.7.0").await;
}

#[tokio::test]
async fn auth_refusals() {
    let mut c = start_encrypted(config(), TestBackend::default());
    c.ehlo().await;
    c.send("AUTH CRAM-MD5\r\n").await;
    c.expect(504, "5.5.4").await;
    c.send("AUTH\r\n").await;
    c.expect(501, "5.5.4").await;
    // A verdict this version does not know is temporary, not a wrong password.
    c.send(&format!("AUTH PLAIN {}\r\n", b64("\0newer@local.test\0x")))
        .await;
    c.expect(454, "4.7.0").await;
    c.send("AUTH LOGIN\r\n*\r\n").await;
    c.expect(334, "").await;
    c.expect(501, "5.7.0").await;
    c.send("AUTH PLAIN not-base64!\r\n").await;
    c.expect(501, "5.5.2").await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        b64("boss@local.test\0user@local.test\0secret")
    ))
    .await;
    c.expect(535, "5.7.8").await;
}

#[tokio::test]
async fn too_many_auth_failures_disconnects_with_421() {
    let mut c = start_encrypted(config(), TestBackend::default());
    c.ehlo().await;
    for _ in 0..3 {
        c.send(&format!(
            "AUTH PLAIN {}\r\n",
            b64("\0user@local.test\0guess")
        ))
        .await;
        c.expect(535, "5.7.8").await;
    }
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        b64("\0user@local.test\0secret")
    ))
    .await;
    c.expect(421, "4.7.0").await;
    assert!(c.closed().await);
}

#[tokio::test]
async fn submission_requires_tls_then_auth_and_owned_sender() {
    let mut c = start_with(
        submission(),
        TestBackend::default(),
        CancellationToken::new(),
    );
    c.ehlo().await;
    c.send("MAIL FROM:<user@local.test>\r\n").await;
    let r = c.expect(530, "5.7.0").await;
    assert!(r.text().contains("STARTTLS"));

    let backend = TestBackend::default();
    let mut c = start_encrypted(submission(), backend.clone());
    c.ehlo().await;
    c.send("MAIL FROM:<user@local.test>\r\n").await;
    let r = c.expect(530, "5.7.0").await;
    assert!(r.text().contains("Authentication required"));
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        b64("\0user@local.test\0secret")
    ))
    .await;
    c.expect(235, "2.7.0").await;
    c.send("MAIL FROM:<boss@local.test>\r\n").await;
    c.expect(553, "5.7.1").await;
    c.send("MAIL FROM:<user@local.test>\r\nRCPT TO:<someone@remote.test>\r\nDATA\r\n")
        .await;
    c.expect(250, "2.1.0").await;
    // The test backend refuses remote recipients whoever asks; the real policy lets
    // authenticated users relay (see the policy service's tests).
    c.expect(554, "5.7.1").await;
    c.expect(503, "5.5.1").await;
    c.send("RCPT TO:<friend@local.test>\r\nDATA\r\n").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    c.send("Subject: s\r\n\r\nx\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    let (msg, content) = &queued[0];
    assert_eq!(msg.auth_identity, "user@local.test");
    assert_eq!(msg.listener, "submission");
    assert_eq!(msg.spf, "");
    assert_eq!(msg.tls.as_ref().unwrap().version, "TLSv1.3");
    let text = std::str::from_utf8(content).unwrap();
    assert!(
        text.contains("(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)"),
        "{text}"
    );
    assert!(text.contains("with ESMTPSA id"), "{text}");
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.expect(220, "").await;
    c.send("EHLO client.test\r\n").await;
    let r = c.expect(250, "").await;
    assert!(r.lines.iter().any(|l| l == "CHUNKING"));
    c.envelope().await;
    // A chunk may hold what would end DATA; here it is plain content.
    c.send("BDAT 19\r\nSubject: x\r\n\r\n.\r\nab").await;
    c.expect(250, "2.0.0").await;
    c.send("BDAT 5 LAST\r\nc\r\n\r\n").await;
    c.expect(250, "2.0.0").await;
    c.send("NOOP\r\n").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    assert_eq!(queued.len(), 1);
    assert!(
        queued[0]
            .1
            .ends_with(b"\r\nSubject: x\r\n\r\n.\r\nabc\r\n\r\n")
    );
}

/// The envelope is fixed once chunks have started: a later RCPT is a sequence error and the
/// message goes to the recipients given before.
#[tokio::test]
async fn rcpt_after_a_chunk_is_refused() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<u@local.test>\r\nBDAT 4\r\nab\r\nRCPT TO:<v@local.test>\r\nBDAT 3 LAST\r\nc\r\n")
        .await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(250, "2.0.0").await;
    c.expect(503, "5.5.1").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    assert_eq!(queued.len(), 1);
    let rcpts: Vec<&str> = queued[0]
        .0
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["u@local.test"]);
}

#[tokio::test]
async fn bdat_refusals_keep_the_session_in_step() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    // No transaction: the chunk is read and refused, and what follows is a command again.
    c.send("BDAT 10 LAST\r\n0123456789NOOP\r\n").await;
    c.expect(503, "5.5.1").await;
    c.expect(250, "2.0.0").await;
    // A bare LF inside a chunk refuses the message at LAST.
    c.send(
        "MAIL FROM:<a@remote.test>\r\nRCPT TO:<u@local.test>\r\nBDAT 3\r\na\nbBDAT 2 LAST\r\nc\n",
    )
    .await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(250, "2.0.0").await;
    c.expect(550, "5.5.2").await;
    // DATA after BDAT is a sequence error.
    c.send("MAIL FROM:<a@remote.test>\r\nRCPT TO:<u@local.test>\r\nBDAT 1\r\nxDATA\r\n")
        .await;
    c.expect(250, "2.1.0").await;
    c.expect(250, "2.1.5").await;
    c.expect(250, "2.0.0").await;
    c.expect(503, "5.5.1").await;
    // A size that cannot be read ends the session.
    c.send("BDAT lots\r\n").await;
    c.expect(501, "5.5.4").await;
    assert!(c.closed().await);
    assert!(backend.queued.lock().unwrap().is_empty());
}

#[tokio::test]
async fn bdat_over_the_size_limit_is_refused() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.envelope().await;
    let chunk = "z".repeat(6000);
    c.send(&format!("BDAT 6000\r\n{chunk}BDAT 6000 LAST\r\n{chunk}"))
        .await;
    c.expect(250, "2.0.0").await;
    c.expect(552, "5.3.4").await;
    c.send("NOOP\r\n").await;
    c.expect(250, "2.0.0").await;
    assert!(backend.queued.lock().unwrap().is_empty());
}

/// Every way of hiding a second transaction behind a non-CRLF end marker: each gives exactly
/// one reply to the DATA (a refusal by default), never a second queued message.
#[tokio::test]
async fn smuggling_endings_never_make_two_messages() {
    let endings = [
        "\n.\n",
        "\r.\r",
        "\n.\r\n",
        "\r.\r\n",
        "\r\n.\n",
        "\n.\r",
        "\r\n.\r",
        ".\n",
        "\r\n.\r\r\n",
    ];
    for normalize in [false, true] {
        for ending in endings {
            let backend = TestBackend::default();
            let mut cfg = config();
            if normalize {
                cfg.line_endings = LineEndings::Normalize;
            }
            let mut c = start_with(cfg, backend.clone(), CancellationToken::new());
            c.ehlo().await;
            c.open_data().await;
            c.send(&format!(
                "Subject: a\r\n\r\nhi{ending}MAIL FROM:<evil@remote.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nevil\r\n.\r\nNOOP\r\n"
            ))
            .await;
            let r = c.reply().await;
            if normalize {
                assert_eq!(r.code, 250, "{ending:?}: {r:?}");
            } else {
                assert_eq!(
                    (r.code, r.enhanced.map(|e| e.to_string())),
                    (550, Some("5.5.2".into())),
                    "{ending:?}"
                );
            }
            c.expect(250, "2.0.0").await; // the NOOP
            let queued = backend.queued.lock().unwrap();
            assert_eq!(queued.len(), usize::from(normalize), "{ending:?}");
            if normalize {
                let text = String::from_utf8_lossy(&queued[0].1);
                assert!(
                    text.contains("MAIL FROM:<evil@remote.test>"),
                    "{ending:?}: smuggled text stays content"
                );
            }
        }
    }
}

#[tokio::test]
async fn requiretls_is_offered_and_accepted_only_over_tls() {
    let mut c = start(TestBackend::default());
    c.expect(220, "").await;
    c.send("EHLO client.test\r\n").await;
    assert!(
        !c.expect(250, "")
            .await
            .lines
            .iter()
            .any(|l| l == "REQUIRETLS")
    );
    c.send("MAIL FROM:<a@remote.test> REQUIRETLS\r\n").await;
    c.expect(530, "5.7.10").await;

    let backend = TestBackend::default();
    let mut c = start_encrypted(config(), backend.clone());
    c.expect(220, "").await;
    c.send("EHLO client.test\r\n").await;
    assert!(
        c.expect(250, "")
            .await
            .lines
            .iter()
            .any(|l| l == "REQUIRETLS")
    );
    c.send("MAIL FROM:<a@remote.test> REQUIRETLS\r\n").await;
    c.expect(250, "2.1.0").await;
    c.send("RCPT TO:<u@local.test>\r\nDATA\r\n").await;
    c.expect(250, "2.1.5").await;
    c.expect(354, "").await;
    c.send("x\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    assert!(
        backend.queued.lock().unwrap()[0]
            .0
            .mail_from
            .as_ref()
            .unwrap()
            .requiretls
    );
}

#[test]
fn data_rate_is_judged_after_the_grace_period() {
    use super::data::RateGuard;
    let fresh = RateGuard::new();
    assert!(!fresh.too_slow(500), "no verdict during the grace period");
    let long_ago = tokio::time::Instant::now() - Duration::from_secs(60);
    let mut slow = RateGuard::started_at(long_ago);
    slow.count(1000);
    assert!(slow.too_slow(500));
    let mut fast = RateGuard::started_at(long_ago);
    fast.count(60_000);
    assert!(!fast.too_slow(500));
}

/// Each BDAT chunk arrives at once, but the transaction as a whole is slower than the
/// minimum data rate: the session ends and nothing is queued.
#[tokio::test(start_paused = true)]
async fn bdat_data_rate_counts_every_chunk_of_the_transaction() {
    let backend = TestBackend::default();
    let mut c = start(backend.clone());
    c.ehlo().await;
    c.envelope().await;
    // 10 octets every 4 s (within the command timeout of 5 s): 2.5 octets per second
    // against the minimum of 500, judged once the 30 s of grace are over.
    for _ in 0..8 {
        c.send("BDAT 10\r\n0123456789").await;
        c.expect(250, "2.0.0").await;
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    c.send("BDAT 10\r\n0123456789").await;
    c.expect(421, "4.4.2").await;
    assert!(backend.queued.lock().unwrap().is_empty());
}

/// A backend that spools bodies above 300 octets (the Received header alone is about 200),
/// and a client past EHLO.
async fn spooling() -> (TestBackend, Client) {
    let backend = TestBackend {
        inline_limit: 300,
        ..TestBackend::default()
    };
    let mut c = start(backend.clone());
    c.ehlo().await;
    (backend, c)
}

/// Waits until the spools have seen `n` writes (the header and the first content make two).
async fn spool_writes_reach(backend: &TestBackend, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.spools.lock().unwrap().writes < n {
        assert!(
            std::time::Instant::now() < deadline,
            "spooling did not start"
        );
        tokio::task::yield_now().await;
    }
}

/// `n` lines of body text, 50 octets each.
fn lines(n: usize) -> String {
    (0..n).map(|i| format!("{i:047}\r\n")).collect()
}

#[tokio::test]
async fn a_large_data_body_is_spooled_while_it_arrives() {
    let (backend, mut c) = spooling().await;
    c.open_data().await;
    let text = lines(160);
    // In parts, as a client writes them: the spool takes each as it comes.
    for part in text.as_bytes().chunks(1000) {
        c.send(std::str::from_utf8(part).unwrap()).await;
    }
    c.send(".\r\n").await;
    c.expect(250, "2.0.0").await;
    let queued = backend.queued.lock().unwrap();
    let (msg, content) = &queued[0];
    let body = msg.body.as_ref().unwrap();
    assert!(matches!(&body.location, Some(Location::Object(name)) if *name == msg.queue_id));
    assert!(content.starts_with(b"Received: from client.test"));
    assert!(content.ends_with(text.as_bytes()));
    assert_eq!(body.size, content.len() as u64);
    let spools = backend.spools.lock().unwrap();
    assert!(spools.writes >= 2, "{spools:?}");
    assert_eq!(spools.abandoned, 0);
}

#[tokio::test]
async fn a_small_body_stays_inline_and_a_refused_large_one_is_removed() {
    let (backend, mut c) = spooling().await;
    c.open_data().await;
    c.send("Subject: small\r\n\r\nx\r\n.\r\n").await;
    c.expect(250, "2.0.0").await;
    {
        let queued = backend.queued.lock().unwrap();
        let body = queued[0].0.body.as_ref().unwrap();
        assert!(matches!(body.location, Some(Location::Inline(_))));
    }
    // Spooling starts, then a bare LF dooms the message: what was stored goes.
    c.open_data().await;
    c.send(&lines(10)).await;
    spool_writes_reach(&backend, 2).await;
    c.send(&format!("bare\n{}.\r\n", lines(200))).await;
    c.expect(550, "5.5.2").await;
    // Too big (config: 10,000 octets) after spooling started.
    c.open_data().await;
    c.send(&lines(10)).await;
    spool_writes_reach(&backend, 4).await;
    c.send(&format!("{}.\r\n", lines(300))).await;
    c.expect(552, "5.3.4").await;
    c.send("NOOP\r\n").await;
    c.expect(250, "2.0.0").await;
    assert_eq!(backend.queued.lock().unwrap().len(), 1);
    let spools = backend.spools.lock().unwrap();
    assert_eq!(spools.abandoned, 2, "{spools:?}");
    assert!(spools.stored.is_empty());
}

#[tokio::test]
async fn bdat_chunks_are_spooled_and_rset_drops_them() {
    let (backend, mut c) = spooling().await;
    c.envelope().await;
    let text = lines(40);
    c.send(&format!("BDAT {}\r\n{text}", text.len())).await;
    c.expect(250, "2.0.0").await;
    c.send(&format!("BDAT {} LAST\r\n{text}", text.len())).await;
    c.expect(250, "2.0.0").await;
    {
        let queued = backend.queued.lock().unwrap();
        let (msg, content) = &queued[0];
        assert!(matches!(
            msg.body.as_ref().unwrap().location,
            Some(Location::Object(_))
        ));
        assert!(content.ends_with(format!("{text}{text}").as_bytes()));
    }
    // A transaction reset mid-way gives its spooled body up.
    c.envelope().await;
    c.send(&format!("BDAT {}\r\n{text}", text.len())).await;
    c.expect(250, "2.0.0").await;
    c.send("RSET\r\n").await;
    c.expect(250, "2.0.0").await;
    let spools = backend.spools.lock().unwrap();
    assert_eq!((spools.stored.len(), spools.abandoned), (1, 1));
}

#[tokio::test]
async fn a_failing_spool_gives_451_and_the_session_goes_on() {
    let (backend, mut c) = spooling().await;
    backend.spools.lock().unwrap().broken = true;
    c.open_data().await;
    c.send(&format!("{}.\r\n", lines(100))).await;
    c.expect(451, "4.3.0").await;
    backend.spools.lock().unwrap().broken = false;
    c.open_data().await;
    c.send(&format!("{}.\r\n", lines(100))).await;
    c.expect(250, "2.0.0").await;
    assert_eq!(backend.queued.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn every_sender_but_the_null_one_is_checked() {
    let mut c = start(TestBackend::default());
    c.ehlo().await;
    c.send("MAIL FROM:<a@nowhere.test>\r\n").await;
    c.expect(550, "5.1.8").await;
    c.send("MAIL FROM:<>\r\n").await;
    c.expect(250, "2.1.0").await;
}

#[tokio::test]
async fn a_refused_client_gets_no_greeting() {
    let mut c = start_at(
        "192.0.2.66",
        config(),
        TestBackend::default(),
        CancellationToken::new(),
        None,
    );
    let r = c.expect(554, "5.7.1").await;
    assert!(r.text().contains("blocked using bl.test"), "{r:?}");
    assert!(c.closed().await);
}
