//! RCPT TO (RFC 5321 §4.1.1.3): the recipient limit, then the policy service's verdict.

use mailflow_proto::v1::{CheckRecipientRequest, verdict::Action};
use mailflow_smtp::params::RcptParams;
use mailflow_smtp::{EnhancedCode, ForwardPath, Mailbox, Reply};

use super::{
    Backend, Chunks, Flow, Session, State, bad_sequence, temporary_failure, verdict_reply,
};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Adds a recipient if policy accepts it.
    pub(super) async fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Flow {
        // `<Postmaster>` is ours (RFC 5321 §4.5.1): like Postfix, which appends
        // `$myorigin`, it is postmaster at our host name, and the directory says where that
        // goes (a user, an alias or the domain's catch-all).
        let to = match to {
            ForwardPath::Mailbox(m) => m,
            ForwardPath::Postmaster => Mailbox {
                local: "postmaster".into(),
                domain: self.config.hostname.to_ascii_lowercase(),
            },
        };
        let State::Mail(greeting, tx) = &self.state else {
            return self.refuse(bad_sequence("Error: need MAIL command"));
        };
        // The envelope is fixed once content has started: a recipient added between chunks
        // would get a copy whose Received field names only the earlier ones.
        if !matches!(tx.chunks, Chunks::None) {
            return self.refuse(bad_sequence("Error: RCPT after BDAT"));
        }
        if tx.rcpts.len() >= self.config.max_recipients {
            // Not an error (RFC 5321 §4.5.3.1.10): the client sends the rest in another
            // transaction. Counting it would close a session that pipelined many recipients
            // before it could send the message to those accepted (Postfix counts such
            // replies only past `smtpd_recipient_overshoot_limit`).
            self.reply(Reply::new(
                452,
                EnhancedCode::new(4, 5, 3),
                "Error: too many recipients",
            ));
            return Flow::Continue;
        }
        if !to.is_ascii() && !tx.params.smtputf8 {
            return self.refuse(Reply::new(
                553,
                EnhancedCode::new(5, 6, 7),
                "Error: SMTPUTF8 is required for a UTF-8 recipient address",
            ));
        }
        let request = CheckRecipientRequest {
            session: Some(self.session_info(&greeting.name)),
            sender: tx.from.address(),
            recipient: to.to_string(),
        };
        let verdict = match self.backend.check_recipient(request).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, recipient = %to, "recipient check failed");
                return self.refuse(temporary_failure("policy service"));
            }
        };
        match verdict.action() {
            Action::Accept => {
                if let State::Mail(_, tx) = &mut self.state {
                    tx.rcpts.push((to, params));
                }
                self.reply(Reply::new(250, EnhancedCode::new(2, 1, 5), "Ok"));
                Flow::Continue
            }
            Action::Reject | Action::Tempfail => self.refuse(verdict_reply(verdict)),
            Action::Unspecified => self.refuse(temporary_failure("policy service")),
        }
    }
}
