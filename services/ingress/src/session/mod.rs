//! One SMTP session: a state machine driven by command lines, generic over the stream (TCP
//! in production, in-memory in tests) and over the [`Backend`].
//!
//! Replies are buffered and flushed only when the client has no further complete command
//! waiting, which is what PIPELINING (RFC 2920) needs.

mod auth;
mod bdat;
mod body;
mod data;
mod ehlo;
mod mail;
mod misc;
mod rcpt;
mod starttls;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mailflow_proto::v1::{CheckConnectionRequest, SessionInfo, TlsInfo, Verdict, verdict::Action};
use mailflow_runtime::config::{BareLineEndings, IngressConfig};
use mailflow_smtp::bdat::BdatBody;
use mailflow_smtp::params::{MailParams, RcptParams};
use mailflow_smtp::{
    Command, EnhancedCode, LineDecoder, LineEndings, LineEvent, Mailbox, Path, Reply,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::Backend;
use body::Incoming;

/// The kinds of listener, which differ in what they require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Port 25: mail from the internet; STARTTLS offered, AUTH optional.
    Mx,
    /// Port 587: STARTTLS, then AUTH, before MAIL.
    Submission,
    /// Port 465: implicit TLS (RFC 8314), AUTH before MAIL.
    Smtps,
}

impl ListenerKind {
    /// The name used in logs, policy requests and the envelope.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mx => "mx",
            ListenerKind::Submission => "submission",
            ListenerKind::Smtps => "smtps",
        }
    }

    /// Submission listeners accept mail only from authenticated clients.
    pub fn requires_auth(self) -> bool {
        !matches!(self, ListenerKind::Mx)
    }
}

/// Settings of one listener, shared by its sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name (greeting, EHLO, Received).
    pub hostname: String,
    /// Which listener this is.
    pub kind: ListenerKind,
    /// STARTTLS can be offered (a certificate is configured).
    pub starttls: bool,
    /// The size limit advertised with SIZE and enforced.
    pub max_message_size: usize,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// The longest command line.
    pub max_line_length: usize,
    /// The slowest average DATA/BDAT rate tolerated, in octets per second.
    pub min_data_rate: u64,
    /// Errors before the session is closed.
    pub hard_error_limit: u32,
    /// Wait for a command.
    pub command_timeout: Duration,
    /// Wait for each block of DATA.
    pub data_timeout: Duration,
    /// Bare CR/LF policy for DATA.
    pub line_endings: LineEndings,
}

impl SessionConfig {
    /// The settings of a `kind` listener from the `[ingress]` section.
    pub fn from_config(c: &IngressConfig, kind: ListenerKind, tls_available: bool) -> Self {
        Self {
            hostname: c.hostname.clone(),
            kind,
            starttls: tls_available && kind != ListenerKind::Smtps,
            max_message_size: c.max_message_size,
            max_recipients: c.max_recipients.0,
            max_line_length: c.max_line_length.0,
            min_data_rate: c.min_data_rate,
            hard_error_limit: c.hard_error_limit,
            command_timeout: c.command_timeout,
            data_timeout: c.data_timeout,
            line_endings: match c.bare_line_endings {
                BareLineEndings::Reject => LineEndings::Reject,
                BareLineEndings::Normalize => LineEndings::Normalize,
            },
        }
    }
}

/// The EHLO/HELO the client gave.
#[derive(Debug, Clone)]
struct Greeting {
    /// The argument of EHLO/HELO.
    name: String,
    /// EHLO (extensions allowed) rather than HELO.
    extended: bool,
}

/// An open mail transaction; `P` is the backend's body spool.
#[derive(Debug)]
struct Transaction<P> {
    /// The reverse path.
    from: Path,
    /// Its parameters.
    params: MailParams,
    /// Accepted recipients, in order.
    rcpts: Vec<(Mailbox, RcptParams)>,
    /// BDAT chunks received so far, once the client started with BDAT.
    chunks: Chunks<P>,
    /// The SPF result the policy service computed for the sender, recorded with the
    /// message so that the scan stage need not look it up again.
    spf: String,
    /// The transaction's span (a child of the session's): policy checks and the publish to
    /// the queue run in it, so the message's trace starts here.
    span: tracing::Span,
}

/// The BDAT side of a transaction (RFC 3030).
#[derive(Debug)]
enum Chunks<P> {
    /// No BDAT yet (DATA is still possible).
    None,
    /// Chunks are arriving: the receiver, the body on its way to storage, and the data rate
    /// of the chunks so far.
    Receiving(BdatBody, Incoming<P>, data::RateGuard),
    /// A chunk was refused: later chunks are read and refused the same way until LAST.
    Failed(Reply),
}

/// Where the session stands.
#[derive(Debug)]
enum State<P> {
    /// Greeting sent; EHLO or HELO expected.
    Fresh,
    /// EHLO/HELO done, no transaction.
    Ready(Greeting),
    /// MAIL accepted; RCPT or DATA expected. Dropping it (RSET, EHLO, a closed connection)
    /// drops a spooled body, which removes what was stored of it. Boxed: an idle session
    /// should not pay for a transaction's size.
    Mail(Greeting, Box<Transaction<P>>),
}

/// What the command loop does next.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// Read the next command.
    Continue,
    /// Flush and close the connection.
    Close,
    /// Hand the connection over for the TLS handshake (STARTTLS was accepted).
    StartTls,
}

/// How a session ended.
pub enum Ending<S> {
    /// The connection is finished.
    Closed,
    /// STARTTLS was accepted: the caller performs the handshake on the returned stream and
    /// continues with a new session over TLS (all state is reset, RFC 3207 §4.2).
    StartTls(S),
}

/// What reading from the client produced.
enum Input {
    /// A command line.
    Line(Bytes),
    /// An over-long line was discarded.
    TooLong,
    /// The client closed the connection.
    Closed,
    /// The client was idle too long.
    TimedOut,
    /// The server is shutting down and no transaction is open.
    Shutdown,
}

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One SMTP session.
pub struct Session<S, B: Backend> {
    /// The client connection.
    stream: S,
    /// Received octets not yet consumed.
    inbuf: BytesMut,
    /// Replies not yet sent (flushed before each read, for PIPELINING).
    outbuf: Vec<u8>,
    /// Frames command lines with a bounded length.
    lines: LineDecoder,
    /// The protocol state.
    state: State<B::Spool>,
    /// Listener settings.
    config: Arc<SessionConfig>,
    /// Policy and queue.
    backend: B,
    /// The client's address, for policy and Received.
    client_ip: IpAddr,
    /// The TLS session, once the connection is encrypted.
    tls: Option<TlsInfo>,
    /// The authenticated identity, once AUTH succeeded.
    auth: Option<String>,
    /// Errors so far, against `hard_error_limit`.
    errors: u32,
    /// Cancelled when the server drains; idle sessions are then closed with 421.
    shutdown: CancellationToken,
}

/// Read at most this much at once, so a flood of input is consumed in bounded steps.
const READ_CHUNK: usize = 16 * 1024;
/// The buffer an idle session reads into.
const IDLE_CHUNK: usize = 512;

impl<S, B> Session<S, B>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// A session over `stream` with a client at `client_ip`; `tls` describes the TLS session
    /// when the stream is encrypted.
    pub fn new(
        stream: S,
        client_ip: IpAddr,
        tls: Option<TlsInfo>,
        config: Arc<SessionConfig>,
        backend: B,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            stream,
            inbuf: BytesMut::new(),
            outbuf: Vec::new(),
            lines: LineDecoder::new(config.max_line_length),
            state: State::Fresh,
            config,
            backend,
            client_ip,
            tls,
            auth: None,
            errors: 0,
            shutdown,
        }
    }

    /// Greets the client and runs the session.
    pub async fn run(mut self) -> Result<Ending<S>, SessionError> {
        if let Some(refusal) = self.connection_refusal().await {
            // RFC 5321 §3.1: a 554 (or 421) instead of the greeting; nothing is served.
            self.reply(refusal);
            self.flush().await?;
            return Ok(Ending::Closed);
        }
        let greeting = format!("{} ESMTP mailflow", self.config.hostname);
        self.reply(Reply::plain(220, greeting));
        self.resume().await
    }

    /// Policy's answer for this client before the greeting, when it refuses. If policy
    /// cannot be asked the connection is served: every transaction needs its verdicts anyway,
    /// and they fail safe (451).
    async fn connection_refusal(&mut self) -> Option<Reply> {
        let request = CheckConnectionRequest {
            session: Some(self.session_info("")),
        };
        match self.backend.check_connection(request).await {
            Ok(v) if v.action() == Action::Accept => None,
            Ok(v) => Some(verdict_reply(v)),
            Err(e) => {
                tracing::warn!(error = %e, "connection check failed; serving the client");
                None
            }
        }
    }

    /// Runs the session without a greeting (after the TLS handshake of STARTTLS).
    pub async fn resume(mut self) -> Result<Ending<S>, SessionError> {
        loop {
            let flow = match self.next_line().await? {
                // Boxed: the verbs' futures are large and mostly not running, and an idle
                // session should not carry their space.
                Input::Line(line) => match Command::parse(&line) {
                    Ok(cmd) => Box::pin(self.dispatch(cmd)).await?,
                    Err(e) => self.refuse(e.reply()),
                },
                Input::TooLong => self.refuse(Reply::new(
                    500,
                    EnhancedCode::new(5, 5, 2),
                    "Error: line too long",
                )),
                Input::Closed => return Ok(Ending::Closed),
                Input::TimedOut => {
                    let text = format!("{} Error: timeout exceeded", self.config.hostname);
                    self.reply(Reply::new(421, EnhancedCode::new(4, 4, 2), text));
                    Flow::Close
                }
                Input::Shutdown => {
                    let text = format!(
                        "{} Service shutting down, closing transmission channel",
                        self.config.hostname
                    );
                    self.reply(Reply::new(421, EnhancedCode::new(4, 3, 2), text));
                    Flow::Close
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    self.flush().await?;
                    let _ = self.stream.shutdown().await;
                    return Ok(Ending::Closed);
                }
                Flow::StartTls => {
                    self.flush().await?;
                    return Ok(Ending::StartTls(self.stream));
                }
            }
        }
    }

    async fn dispatch(&mut self, cmd: Command) -> Result<Flow, SessionError> {
        // Commands of an open transaction run in its span; others in the session's.
        let span = match &self.state {
            State::Mail(_, tx) => tx.span.clone(),
            _ => tracing::Span::none(),
        };
        self.command(cmd).instrument(span).await
    }

    async fn command(&mut self, cmd: Command) -> Result<Flow, SessionError> {
        Ok(match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params).await,
            Command::Rcpt { to, params } => self.rcpt(to, params).await,
            Command::Data => self.data().await?,
            Command::Rset => self.rset(),
            Command::Noop => self.ok(),
            Command::Quit => self.quit(),
            Command::Vrfy => self.vrfy(),
            Command::Help => self.help(),
            Command::StartTls => self.starttls(),
            Command::Auth(args) => self.auth(&args).await?,
            Command::Bdat(args) => self.bdat(&args).await?,
        })
    }

    /// Queues a reply.
    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.outbuf);
    }

    /// Queues a refusal and counts it; past the hard error limit the session closes.
    fn refuse(&mut self, reply: Reply) -> Flow {
        metrics::counter!("mailflow_smtp_refusals_total", "code" => reply.code.to_string())
            .increment(1);
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.config.hard_error_limit {
            let text = format!("{} Error: too many errors", self.config.hostname);
            self.reply(Reply::new(421, EnhancedCode::new(4, 7, 0), text));
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Queues a reply, counting it as an error when it is one.
    fn answer(&mut self, reply: Reply) -> Flow {
        if reply.is_positive() {
            self.reply(reply);
            Flow::Continue
        } else {
            self.refuse(reply)
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.outbuf.is_empty() {
            self.stream.write_all(&self.outbuf).await?;
            self.stream.flush().await?;
            self.outbuf.clear();
        }
        Ok(())
    }

    /// Reads more input into `inbuf` (`data`: message data is expected); `Ok(false)` on end
    /// of stream, `None` on timeout.
    async fn fill(&mut self, timeout: Duration, data: bool) -> Result<Option<bool>, SessionError> {
        // A session waiting for a command does so with a small buffer, which keeps 10,000
        // idle sessions cheap; message data, or a command already begun, is read in larger
        // steps (a whole small message in one read).
        let want = if self.inbuf.is_empty() && !data {
            IDLE_CHUNK
        } else {
            READ_CHUNK
        };
        self.inbuf.reserve(want);
        let mut limited = (&mut self.stream).take(READ_CHUNK as u64);
        match tokio::time::timeout(timeout, limited.read_buf(&mut self.inbuf)).await {
            Err(_) => Ok(None),
            Ok(Ok(n)) => Ok(Some(n > 0)),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    async fn next_line(&mut self) -> Result<Input, SessionError> {
        loop {
            match self.lines.decode(&mut self.inbuf) {
                LineEvent::Line(line) => return Ok(Input::Line(line)),
                LineEvent::TooLong => return Ok(Input::TooLong),
                LineEvent::NeedMore => {}
            }
            self.flush().await?;
            let in_transaction = matches!(self.state, State::Mail(..));
            if !in_transaction && self.shutdown.is_cancelled() {
                return Ok(Input::Shutdown);
            }
            let timeout = self.config.command_timeout;
            let shutdown = self.shutdown.clone();
            let read = tokio::select! {
                r = self.fill(timeout, false) => r?,
                _ = shutdown.cancelled(), if !in_transaction => return Ok(Input::Shutdown),
            };
            match read {
                None => return Ok(Input::TimedOut),
                Some(false) => return Ok(Input::Closed),
                Some(true) => {}
            }
        }
    }

    /// What policy needs to know about this session.
    fn session_info(&self, helo: &str) -> SessionInfo {
        SessionInfo {
            client_ip: self.client_ip.to_string(),
            helo: helo.to_string(),
            auth_identity: self.auth.clone().unwrap_or_default(),
            listener: self.config.kind.name().to_string(),
        }
    }

    /// Drops any open transaction (RSET, EHLO, end of DATA).
    fn reset_transaction(&mut self) {
        self.state = match std::mem::replace(&mut self.state, State::Fresh) {
            State::Mail(g, _) | State::Ready(g) => State::Ready(g),
            State::Fresh => State::Fresh,
        };
    }
}

/// `503 5.5.1` with a sentence.
fn bad_sequence(text: &'static str) -> Reply {
    Reply::new(503, EnhancedCode::new(5, 5, 1), text)
}

/// `451 4.3.0` for any trouble behind the session.
fn temporary_failure(what: &str) -> Reply {
    Reply::new(
        451,
        EnhancedCode::new(4, 3, 0),
        format!("Temporary failure: {what} unavailable, try again later"),
    )
}

/// Turns a policy refusal into a reply, guarding against a malformed verdict.
fn verdict_reply(verdict: Verdict) -> Reply {
    let code = u16::try_from(verdict.code)
        .ok()
        .filter(|c| (400..600).contains(c));
    let enhanced = EnhancedCode::parse(&verdict.enhanced);
    match (code, enhanced) {
        (Some(code), Some(enh)) if u16::from(enh.class) == code / 100 => {
            Reply::new(code, enh, verdict.text)
        }
        _ => temporary_failure("policy service"),
    }
}
