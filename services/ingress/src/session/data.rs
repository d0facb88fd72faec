//! DATA (RFC 5321 §4.1.1.4): read the body, prepend Received, queue durably, then answer.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use mailflow_proto::v1::{
    AcceptedMessage, Body, BodyType, DsnNotify, DsnReturn, MailFrom, Recipient,
};
use mailflow_smtp::params::{self, MailParams, RcptParams};
use mailflow_smtp::{DataDecoder, DataEvent, DataProblem, EnhancedCode, Mailbox, Reply};
use tokio::time::Instant;

use super::body::Incoming;
use super::{
    Backend, Chunks, Flow, Greeting, Session, SessionError, State, Transaction, bad_sequence,
    temporary_failure,
};
use crate::received::{self, Trace};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Receives the body and queues the message.
    pub(super) async fn data(&mut self) -> Result<Flow, SessionError> {
        match &self.state {
            State::Mail(_, tx) if !matches!(tx.chunks, Chunks::None) => {
                return Ok(self.refuse(bad_sequence("Error: DATA after BDAT")));
            }
            State::Mail(_, tx) if !tx.rcpts.is_empty() => {}
            State::Mail(..) => return Ok(self.refuse(bad_sequence("Error: need RCPT command"))),
            _ => return Ok(self.refuse(bad_sequence("Error: need MAIL command"))),
        }
        // 3xx has no enhanced status code class (RFC 3463 defines 2, 4 and 5).
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
        self.flush().await?;
        let mut incoming = self.incoming();
        let mut decoder = DataDecoder::new(self.config.max_message_size, self.config.line_endings);
        let mut rate = RateGuard::new();
        let body = loop {
            let before = self.inbuf.len();
            let event = decoder.decode(&mut self.inbuf);
            rate.count(before - self.inbuf.len());
            match event {
                DataEvent::Done(result) => break result,
                DataEvent::NeedMore => {
                    incoming.absorb(&self.backend, decoder.body()).await;
                    if let Some(flow) = self.fill_data(&rate).await? {
                        incoming.abort().await;
                        return Ok(flow);
                    }
                }
            }
        };
        Ok(self.complete(incoming, body).await)
    }

    /// A body for the open transaction: its queue id and Received header are fixed now.
    pub(super) fn incoming(&self) -> Incoming<B::Spool> {
        let State::Mail(greeting, tx) = &self.state else {
            unreachable!("only called in a transaction");
        };
        let queue_id = ulid::Ulid::generate().to_string();
        tx.span.record("queue_id", queue_id.as_str());
        let at = SystemTime::now();
        let single_rcpt = (tx.rcpts.len() == 1).then(|| tx.rcpts[0].0.to_string());
        let header = received::header(&Trace {
            helo: &greeting.name,
            client_ip: self.client_ip,
            hostname: &self.config.hostname,
            protocol: &received::protocol(
                greeting.extended,
                tx.params.smtputf8,
                self.tls.is_some(),
                self.auth.is_some(),
            ),
            tls: self.tls.as_ref(),
            queue_id: &queue_id,
            recipient: single_rcpt.as_deref(),
            at,
        });
        Incoming::new(queue_id, at, Bytes::from(header))
    }

    /// Ends the transaction with the body's fate: queued, or refused. `rest` is the content
    /// the receiver holds that `incoming` has not absorbed.
    pub(super) async fn complete(
        &mut self,
        incoming: Incoming<B::Spool>,
        rest: Result<BytesMut, DataProblem>,
    ) -> Flow {
        let State::Mail(greeting, tx) = std::mem::replace(&mut self.state, State::Fresh) else {
            unreachable!("only called in a transaction");
        };
        self.state = State::Ready(greeting.clone());
        let (queue_id, at) = (incoming.queue_id.clone(), incoming.at);
        let reply = match rest {
            Err(problem) => {
                incoming.abort().await;
                problem_reply(problem)
            }
            Ok(rest) => match incoming.finish(&self.backend, rest).await {
                Ok(body) => self.enqueue(&greeting, tx, queue_id, at, body).await,
                Err(e) => {
                    tracing::warn!(error = %e, "message body not stored");
                    temporary_failure("queue")
                }
            },
        };
        metrics::counter!("mailflow_messages_total", "code" => reply.code.to_string()).increment(1);
        self.answer(reply)
    }

    /// Reads more message data; `Some(flow)` when the session must end instead (the client
    /// left, went silent, or has sent too slowly so far).
    pub(super) async fn fill_data(
        &mut self,
        rate: &RateGuard,
    ) -> Result<Option<Flow>, SessionError> {
        if let Some(flow) = self.check_rate(rate) {
            return Ok(Some(flow));
        }
        match self.fill(self.config.data_timeout, true).await? {
            // The client went away: the transaction is void, nothing was accepted.
            Some(false) => return Ok(Some(Flow::Close)),
            None => {
                let text = format!("{} Error: timeout exceeded", self.config.hostname);
                self.reply(Reply::new(421, EnhancedCode::new(4, 4, 2), text));
                return Ok(Some(Flow::Close));
            }
            Some(true) => {}
        }
        Ok(None)
    }

    /// Ends the session when the message data so far came in below the minimum rate.
    pub(super) fn check_rate(&mut self, rate: &RateGuard) -> Option<Flow> {
        if !rate.too_slow(self.config.min_data_rate) {
            return None;
        }
        let text = format!("{} Error: data rate too low", self.config.hostname);
        self.reply(Reply::new(421, EnhancedCode::new(4, 4, 2), text));
        Some(Flow::Close)
    }

    async fn enqueue(
        &mut self,
        greeting: &Greeting,
        tx: Box<Transaction<B::Spool>>,
        queue_id: String,
        at: SystemTime,
        body: Body,
    ) -> Reply {
        let size = body.size;
        let message = AcceptedMessage {
            queue_id: queue_id.clone(),
            mail_from: Some(mail_from(&tx)),
            recipients: tx.rcpts.iter().map(|(m, p)| recipient(m, p)).collect(),
            client_ip: self.client_ip.to_string(),
            helo: greeting.name.clone(),
            tls: self.tls.clone(),
            auth_identity: self.auth.clone().unwrap_or_default(),
            received_at: Some(prost_types::Timestamp::from(at)),
            body: Some(body),
            listener: self.config.kind.name().to_string(),
            spf: tx.spf.clone(),
            released: false,
        };
        match self.backend.enqueue(message).await {
            Ok(()) => {
                let to: Vec<String> = tx.rcpts.iter().map(|(m, _)| m.to_string()).collect();
                tracing::info!(
                    queue_id = %queue_id,
                    from = %tx.from.address(),
                    to = %to.join(","),
                    nrcpt = tx.rcpts.len(),
                    size,
                    client = %self.client_ip,
                    tls = %self.tls.as_ref().map_or("", |t| t.version.as_str()),
                    auth = %self.auth.as_deref().unwrap_or(""),
                    status = "accepted",
                    "accepted"
                );
                Reply::new(
                    250,
                    EnhancedCode::new(2, 0, 0),
                    format!("Ok: queued as {queue_id}"),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "message not queued");
                temporary_failure("queue")
            }
        }
    }
}

/// The refusal for a body that cannot be queued.
pub(super) fn problem_reply(problem: DataProblem) -> Reply {
    match problem {
        DataProblem::TooBig => Reply::new(
            552,
            EnhancedCode::new(5, 3, 4),
            "Message size exceeds fixed limit",
        ),
        DataProblem::BareLineEnding => Reply::new(
            550,
            EnhancedCode::new(5, 5, 2),
            "Message refused: bare CR or LF in message text (RFC 5321 section 2.3.8)",
        ),
    }
}

/// The minimum data rate (a defence against clients that hold a session open by trickling
/// data just fast enough to beat the per-read timeout). It is judged only after a grace
/// period, so a slow start or a pause is not punished. It counts the octets of message data
/// taken from the input. For BDAT it spans every chunk of the transaction, where Postfix's
/// `smtpd_min_data_rate` judges each request alone: judged per chunk, a client could hold a
/// transaction open indefinitely with tiny chunks, each fast, and long pauses between them.
/// A client sending chunks back to back is judged as for DATA.
#[derive(Debug, Clone, Copy)]
pub(super) struct RateGuard {
    /// When the message data started.
    started: Instant,
    /// Octets of message data so far.
    received: u64,
}

/// The grace period before the rate is judged.
const RATE_GRACE: Duration = Duration::from_secs(30);

impl RateGuard {
    /// Starts measuring now.
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            received: 0,
        }
    }

    /// A guard that started at `started` (tests look back in time with it).
    #[cfg(test)]
    pub(super) fn started_at(started: Instant) -> Self {
        Self {
            started,
            received: 0,
        }
    }

    /// Counts `n` octets of message data.
    pub(super) fn count(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// True when the average is below `min_rate` octets per second after the grace period.
    pub(super) fn too_slow(&self, min_rate: u64) -> bool {
        let elapsed = self.started.elapsed();
        elapsed > RATE_GRACE && self.received < min_rate.saturating_mul(elapsed.as_secs())
    }
}

fn mail_from<P>(tx: &Transaction<P>) -> MailFrom {
    let MailParams {
        size,
        body,
        smtputf8,
        ret,
        envid,
        requiretls,
    } = &tx.params;
    MailFrom {
        address: tx.from.address(),
        body: match body {
            None => BodyType::Unspecified,
            Some(params::BodyType::SevenBit) => BodyType::SevenBit,
            Some(params::BodyType::EightBitMime) => BodyType::EightBitMime,
        } as i32,
        smtputf8: *smtputf8,
        declared_size: size.unwrap_or(0),
        dsn_ret: match ret {
            None => DsnReturn::Unspecified,
            Some(params::DsnReturn::Full) => DsnReturn::Full,
            Some(params::DsnReturn::Headers) => DsnReturn::Headers,
        } as i32,
        dsn_envid: envid.clone().unwrap_or_default(),
        requiretls: *requiretls,
    }
}

fn recipient(mailbox: &Mailbox, params: &RcptParams) -> Recipient {
    let mut notify = Vec::new();
    if let Some(n) = params.notify {
        for (set, value) in [
            (n.never, DsnNotify::Never),
            (n.success, DsnNotify::Success),
            (n.failure, DsnNotify::Failure),
            (n.delay, DsnNotify::Delay),
        ] {
            if set {
                notify.push(value as i32);
            }
        }
    }
    Recipient {
        address: mailbox.to_string(),
        dsn_notify: notify,
        dsn_orcpt: params.orcpt.clone().unwrap_or_default(),
    }
}
