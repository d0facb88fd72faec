//! RSET, NOOP, QUIT, VRFY, HELP and the verbs not offered (yet) on this listener.

use mailflow_smtp::{EnhancedCode, Reply};

use super::{Backend, Flow, Session};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    pub(super) fn rset(&mut self) -> Flow {
        self.reset_transaction();
        self.ok()
    }

    pub(super) fn ok(&mut self) -> Flow {
        self.reply(Reply::new(250, EnhancedCode::new(2, 0, 0), "Ok"));
        Flow::Continue
    }

    pub(super) fn quit(&mut self) -> Flow {
        self.reply(Reply::new(221, EnhancedCode::new(2, 0, 0), "Bye"));
        Flow::Close
    }

    /// RFC 5321 §3.5.3: 252 when the server will not verify but will accept.
    pub(super) fn vrfy(&mut self) -> Flow {
        self.reply(Reply::new(
            252,
            EnhancedCode::new(2, 5, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        ));
        Flow::Continue
    }

    pub(super) fn help(&mut self) -> Flow {
        self.reply(Reply::new(
            214,
            EnhancedCode::new(2, 0, 0),
            "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
        ));
        Flow::Continue
    }

    /// STARTTLS, AUTH and BDAT are not advertised on this listener.
    pub(super) fn not_implemented(&mut self) -> Flow {
        self.refuse(Reply::new(
            502,
            EnhancedCode::new(5, 5, 1),
            "Error: command not implemented",
        ))
    }
}
