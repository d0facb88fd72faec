//! MAIL FROM (RFC 5321 §4.1.1.2) with SIZE, BODY, SMTPUTF8, RET and ENVID.

use mailflow_smtp::params::MailParams;
use mailflow_smtp::{EnhancedCode, Path, Reply};

use super::{Backend, Flow, Session, State, Transaction, bad_sequence};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Opens a transaction.
    pub(super) fn mail(&mut self, from: Path, params: MailParams) -> Flow {
        let greeting = match &self.state {
            State::Fresh => return self.refuse(bad_sequence("Error: send HELO/EHLO first")),
            State::Mail(..) => return self.refuse(bad_sequence("Error: nested MAIL command")),
            State::Ready(g) => g.clone(),
        };
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
        self.state = State::Mail(
            greeting,
            Transaction {
                from,
                params,
                rcpts: Vec::new(),
            },
        );
        self.reply(Reply::new(250, EnhancedCode::new(2, 1, 0), "Ok"));
        Flow::Continue
    }
}
