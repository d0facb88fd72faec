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
        let text = if extended {
            format!(
                "{host}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES\nSMTPUTF8\nDSN",
                self.config.max_message_size
            )
        } else {
            host.clone()
        };
        self.reply(Reply::plain(250, text));
        Flow::Continue
    }
}
