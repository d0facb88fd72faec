//! EHLO and HELO (RFC 5321 §4.1.1.1).

use mailflow_smtp::Reply;

use super::{Backend, Flow, Greeting, Session, State};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Records the greeting, resets any transaction and lists the extensions.
    pub(super) fn ehlo(&mut self, name: String, extended: bool) -> Flow {
        self.state = State::Ready(Greeting { name, extended });
        let host = &self.config.hostname;
        if !extended {
            let text = host.clone();
            self.reply(Reply::plain(250, text));
            return Flow::Continue;
        }
        let mut lines = vec![
            host.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
            "CHUNKING".into(),
        ];
        if self.config.starttls && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        // RFC 4954 §4 and RFC 8314: credentials only travel encrypted.
        if self.tls.is_some() && self.auth.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        // RFC 8689 §4: only offered over TLS.
        if self.tls.is_some() {
            lines.push("REQUIRETLS".into());
        }
        self.reply(Reply::plain(250, lines.join("\n")));
        Flow::Continue
    }
}
