//! The SMTP client: one transaction to one host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mailflow_smtp::{ReplyDecoder, ServerReply, dot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The envelope and content of one transaction.
pub struct Envelope<'a> {
    /// The reverse path, empty for `<>`.
    pub from: &'a str,
    /// The recipients.
    pub rcpts: Vec<&'a str>,
    /// The content, CRLF lines, not dot-stuffed.
    pub body: &'a [u8],
    /// The client declared BODY=8BITMIME.
    pub eight_bit: bool,
    /// The transaction needs SMTPUTF8.
    pub smtputf8: bool,
}

/// Timeouts and our name.
pub struct ClientConfig<'a> {
    /// The name sent with EHLO/HELO.
    pub helo: &'a str,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Wait for each reply.
    pub command_timeout: Duration,
}

/// Why the transaction failed as a whole (before any recipient got its own answer).
#[derive(Debug, thiserror::Error)]
pub enum HostFailure {
    /// Could not connect.
    #[error("connect to {addr} failed: {reason}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection broke or timed out.
    #[error("lost connection with {addr} while {stage}: {reason}")]
    Lost {
        /// The address.
        addr: SocketAddr,
        /// What we were doing.
        stage: &'static str,
        /// Why.
        reason: String,
    },
    /// The server refused the session or the sender.
    #[error("{addr} said: {} {}", reply.code, reply.text())]
    Refused {
        /// The address.
        addr: SocketAddr,
        /// The refusal.
        reply: ServerReply,
    },
    /// The transaction needs SMTPUTF8 and the server lacks it (RFC 6531 §3.4).
    #[error("{addr} does not support SMTPUTF8")]
    NoSmtpUtf8 {
        /// The address.
        addr: SocketAddr,
    },
}

/// One open connection.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    decoder: ReplyDecoder,
    addr: SocketAddr,
    timeout: Duration,
}

impl Conn {
    fn lost(&self, stage: &'static str, reason: impl ToString) -> HostFailure {
        HostFailure::Lost {
            addr: self.addr,
            stage,
            reason: reason.to_string(),
        }
    }

    async fn read_reply(&mut self, stage: &'static str) -> Result<ServerReply, HostFailure> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(self.lost(stage, e)),
            }
            let read =
                tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Err(_) => return Err(self.lost(stage, "timeout")),
                Ok(Err(e)) => return Err(self.lost(stage, e)),
                Ok(Ok(0)) => return Err(self.lost(stage, "connection closed")),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn send(&mut self, data: &[u8], stage: &'static str) -> Result<(), HostFailure> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lost(stage, e)),
            Err(_) => Err(self.lost(stage, "timeout")),
        }
    }

    async fn command(
        &mut self,
        line: &str,
        stage: &'static str,
    ) -> Result<ServerReply, HostFailure> {
        self.send(format!("{line}\r\n").as_bytes(), stage).await?;
        self.read_reply(stage).await
    }

    fn refused(&self, reply: ServerReply) -> HostFailure {
        HostFailure::Refused {
            addr: self.addr,
            reply,
        }
    }
}

/// A connection that has been greeted and has said EHLO, ready for a transaction.
struct Ready {
    /// The connection.
    conn: Conn,
    /// The EHLO keywords, upper case (empty after a HELO fallback).
    extensions: Vec<String>,
    /// When it last finished a transaction.
    idle_since: Instant,
}

impl Ready {
    fn has(&self, ext: &str) -> bool {
        self.extensions
            .iter()
            .any(|l| l.split_ascii_whitespace().next() == Some(ext))
    }
}

/// How long an idle connection is kept for the next message to the same address (Postfix
/// keeps them 2 s by default; servers commonly allow minutes).
const REUSE_TIME: Duration = Duration::from_secs(5);
/// Idle connections kept per address.
const MAX_IDLE_PER_ADDR: usize = 20;

/// Idle connections by address, so consecutive messages to one destination skip the
/// connect, greeting and EHLO.
#[derive(Default)]
pub struct ConnectionCache {
    /// Idle, ready connections.
    idle: Mutex<HashMap<SocketAddr, Vec<Ready>>>,
}

impl ConnectionCache {
    fn take(&self, addr: SocketAddr) -> Option<Ready> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(ready) = list.pop() {
            if ready.idle_since.elapsed() < REUSE_TIME {
                return Some(ready);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, mut ready: Ready) {
        ready.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        list.retain(|r| r.idle_since.elapsed() < REUSE_TIME);
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push(ready);
        }
    }
}

/// Runs one transaction, on a cached connection when there is one; returns each
/// recipient's final reply (its RCPT refusal, or the reply to the end of DATA).
pub async fn deliver(
    addr: SocketAddr,
    config: &ClientConfig<'_>,
    env: &Envelope<'_>,
    cache: &ConnectionCache,
) -> Result<Vec<ServerReply>, HostFailure> {
    if let Some(mut ready) = cache.take(addr) {
        match transaction(&mut ready, env).await {
            // The server closed the idle connection (or says it will): start afresh.
            Err(HostFailure::Lost {
                stage: "MAIL FROM", ..
            }) => {}
            Err(HostFailure::Refused { reply, .. }) if reply.code == 421 => {}
            result => return finish(addr, ready, result, cache).await,
        }
    }
    let mut ready = open(addr, config).await?;
    let result = transaction(&mut ready, env).await;
    finish(addr, ready, result, cache).await
}

/// Keeps a healthy connection for the next message; ends the others politely.
async fn finish(
    addr: SocketAddr,
    mut ready: Ready,
    result: Result<Vec<ServerReply>, HostFailure>,
    cache: &ConnectionCache,
) -> Result<Vec<ServerReply>, HostFailure> {
    match &result {
        Ok(_) => cache.put(addr, ready),
        Err(HostFailure::Lost { .. }) => {}
        Err(_) => {
            // Courtesy only: the outcome is already decided.
            let _ = ready.conn.command("QUIT", "QUIT").await;
        }
    }
    result
}

/// Connects, reads the greeting and says EHLO (HELO when EHLO is refused).
async fn open(addr: SocketAddr, config: &ClientConfig<'_>) -> Result<Ready, HostFailure> {
    let stream = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(HostFailure::Connect {
                addr,
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(HostFailure::Connect {
                addr,
                reason: "timeout".into(),
            });
        }
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(4096),
        decoder: ReplyDecoder::default(),
        addr,
        timeout: config.command_timeout,
    };
    let greeting = conn.read_reply("reading the greeting").await?;
    if greeting.code != 220 {
        let _ = conn.command("QUIT", "QUIT").await;
        return Err(conn.refused(greeting));
    }
    let ehlo = conn
        .command(&format!("EHLO {}", config.helo), "EHLO")
        .await?;
    let extensions: Vec<String> = if ehlo.is_success() {
        ehlo.lines
            .iter()
            .skip(1)
            .map(|l| l.to_ascii_uppercase())
            .collect()
    } else {
        let helo = conn
            .command(&format!("HELO {}", config.helo), "HELO")
            .await?;
        if !helo.is_success() {
            let _ = conn.command("QUIT", "QUIT").await;
            return Err(conn.refused(helo));
        }
        Vec::new()
    };
    Ok(Ready {
        conn,
        extensions,
        idle_since: Instant::now(),
    })
}

/// One transaction from MAIL FROM to the reply to the end of data, leaving the connection
/// ready for the next one.
async fn transaction(
    ready: &mut Ready,
    env: &Envelope<'_>,
) -> Result<Vec<ServerReply>, HostFailure> {
    if env.smtputf8 && !ready.has("SMTPUTF8") {
        return Err(HostFailure::NoSmtpUtf8 {
            addr: ready.conn.addr,
        });
    }
    let mut mail = format!("MAIL FROM:<{}>", env.from);
    if ready.has("SIZE") {
        mail.push_str(&format!(" SIZE={}", env.body.len()));
    }
    // Without 8BITMIME at the peer the content is sent as it is, as Postfix does by default
    // (smtp_send_8bitmime without downgrade): refusing it would bounce most mail for nothing.
    if env.eight_bit && ready.has("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    let rcpts: Vec<String> = env.rcpts.iter().map(|r| format!("RCPT TO:<{r}>")).collect();
    let pipelining = ready.has("PIPELINING");
    let conn = &mut ready.conn;
    let (mail_reply, replies, data) = if pipelining {
        pipelined_envelope(conn, &mail, &rcpts).await?
    } else {
        stepwise_envelope(conn, &mail, &rcpts).await?
    };
    let data_accepted = data.as_ref().is_some_and(|d| d.code == 354);
    let any_rcpt = replies.iter().any(ServerReply::is_success);
    if data_accepted && !(mail_reply.is_success() && any_rcpt) {
        // A server that said 354 although nothing was accepted (RFC 2920 §3.1): end the
        // empty message; it has no recipients, so nothing is delivered.
        conn.send(b".\r\n", "ending an empty message").await?;
        conn.read_reply("waiting for the end of data reply").await?;
    }
    if !mail_reply.is_success() {
        return Err(conn.refused(mail_reply));
    }
    if !any_rcpt {
        let reset = conn.command("RSET", "RSET").await?;
        if !reset.is_success() {
            return Err(conn.refused(reset));
        }
        return Ok(replies);
    }
    match data {
        Some(data) if data.code == 354 => {}
        Some(refusal) => {
            return Ok(replies
                .into_iter()
                .map(|r| if r.is_success() { refusal.clone() } else { r })
                .collect());
        }
        None => unreachable!("both exchanges send DATA once MAIL and a recipient are accepted"),
    }
    let mut encoded = Vec::new();
    dot::encode(env.body, &mut encoded);
    conn.send(&encoded, "sending message body").await?;
    let fin = conn.read_reply("waiting for the end of data reply").await?;
    Ok(replies
        .into_iter()
        .map(|r| if r.is_success() { fin.clone() } else { r })
        .collect())
}

/// The replies to MAIL, each RCPT and DATA (`None` when DATA was not sent).
type EnvelopeReplies = (ServerReply, Vec<ServerReply>, Option<ServerReply>);

/// MAIL, RCPT and DATA in one write, then their replies in order (RFC 2920): one round trip
/// instead of two or more per recipient.
async fn pipelined_envelope(
    conn: &mut Conn,
    mail: &str,
    rcpts: &[String],
) -> Result<EnvelopeReplies, HostFailure> {
    let mut batch = String::with_capacity(mail.len() + 8 + rcpts.len() * 64);
    for line in std::iter::once(mail)
        .chain(rcpts.iter().map(String::as_str))
        .chain(["DATA"])
    {
        batch.push_str(line);
        batch.push_str("\r\n");
    }
    conn.send(batch.as_bytes(), "MAIL FROM").await?;
    let mail_reply = conn.read_reply("MAIL FROM").await?;
    let mut replies = Vec::with_capacity(rcpts.len());
    for _ in rcpts {
        replies.push(conn.read_reply("RCPT TO").await?);
    }
    let data = conn.read_reply("DATA").await?;
    Ok((mail_reply, replies, Some(data)))
}

/// MAIL, RCPT and DATA one at a time, for a server without PIPELINING: stops after a refused
/// MAIL, and sends DATA only when a recipient was accepted.
async fn stepwise_envelope(
    conn: &mut Conn,
    mail: &str,
    rcpts: &[String],
) -> Result<EnvelopeReplies, HostFailure> {
    let mail_reply = conn.command(mail, "MAIL FROM").await?;
    if !mail_reply.is_success() {
        return Ok((mail_reply, Vec::new(), None));
    }
    let mut replies = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        replies.push(conn.command(rcpt, "RCPT TO").await?);
    }
    if !replies.iter().any(ServerReply::is_success) {
        return Ok((mail_reply, replies, None));
    }
    let data = conn.command("DATA", "DATA").await?;
    Ok((mail_reply, replies, Some(data)))
}
