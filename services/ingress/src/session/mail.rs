//! MAIL FROM (RFC 5321 §4.1.1.2) with SIZE, BODY, SMTPUTF8, RET and ENVID.

use mailflow_proto::v1::CheckSenderRequest;
use mailflow_smtp::params::MailParams;
use mailflow_smtp::{EnhancedCode, Path, Reply};
use tracing::Instrument;

use super::{
    Backend, Chunks, Flow, Session, State, Transaction, bad_sequence, temporary_failure,
    verdict_reply,
};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Opens a transaction.
    pub(super) async fn mail(&mut self, from: Path, params: MailParams) -> Flow {
        let greeting = match &self.state {
            State::Fresh => return self.refuse(bad_sequence("Error: send HELO/EHLO first")),
            State::Mail(..) => return self.refuse(bad_sequence("Error: nested MAIL command")),
            State::Ready(g) => g.clone(),
        };
        if self.config.kind.requires_auth() && self.auth.is_none() {
            let text = if self.tls.is_none() {
                "Must issue a STARTTLS command first"
            } else {
                "Authentication required"
            };
            return self.refuse(Reply::new(530, EnhancedCode::new(5, 7, 0), text));
        }
        if !greeting.extended && params != MailParams::default() {
            return self.refuse(Reply::new(
                555,
                EnhancedCode::new(5, 5, 4),
                "Error: MAIL parameters need EHLO",
            ));
        }
        if params
            .size
            .is_some_and(|s| s > self.config.max_message_size as u64)
        {
            return self.refuse(Reply::new(
                552,
                EnhancedCode::new(5, 3, 4),
                "Message size exceeds fixed limit",
            ));
        }
        if params.requiretls && self.tls.is_none() {
            return self.refuse(Reply::new(
                530,
                EnhancedCode::new(5, 7, 10),
                "Error: REQUIRETLS needs an encrypted session",
            ));
        }
        if let Path::Mailbox(m) = &from
            && !m.is_ascii()
            && !params.smtputf8
        {
            return self.refuse(Reply::new(
                553,
                EnhancedCode::new(5, 6, 7),
                "Error: SMTPUTF8 is required for a UTF-8 sender address",
            ));
        }
        // Policy checks the sender: an authenticated one must own the address, an
        // unauthenticated one on the MX port must have a domain that exists. The null sender
        // is always allowed (RFC 5321 §4.5.5).
        let span = tracing::info_span!("transaction", queue_id = tracing::field::Empty);
        let mut spf = String::new();
        if !matches!(from, Path::Null) {
            let request = CheckSenderRequest {
                session: Some(self.session_info(&greeting.name)),
                sender: from.address(),
            };
            match self
                .backend
                .check_sender(request)
                .instrument(span.clone())
                .await
            {
                Ok(v) if v.action() == mailflow_proto::v1::verdict::Action::Accept => spf = v.spf,
                Ok(v) => return self.refuse(verdict_reply(v)),
                Err(e) => {
                    tracing::warn!(error = %e, "sender check failed");
                    return self.refuse(temporary_failure("policy service"));
                }
            }
        }
        self.state = State::Mail(
            greeting,
            Box::new(Transaction {
                from,
                params,
                rcpts: Vec::new(),
                chunks: Chunks::None,
                spf,
                span,
            }),
        );
        self.reply(Reply::new(250, EnhancedCode::new(2, 1, 0), "Ok"));
        Flow::Continue
    }
}
