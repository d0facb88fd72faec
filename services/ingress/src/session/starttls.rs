//! STARTTLS (RFC 3207).

use mailflow_smtp::{EnhancedCode, Reply};

use super::{Backend, Flow, Session};

impl<S, B> Session<S, B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    B: Backend,
{
    /// Accepts STARTTLS; the caller performs the handshake.
    pub(super) fn starttls(&mut self) -> Flow {
        if self.tls.is_some() {
            return self.refuse(Reply::new(
                503,
                EnhancedCode::new(5, 5, 1),
                "Error: TLS already active",
            ));
        }
        if !self.config.starttls {
            return self.not_implemented();
        }
        self.reply(Reply::new(
            220,
            EnhancedCode::new(2, 0, 0),
            "Ready to start TLS",
        ));
        // Anything the client pipelined after STARTTLS arrived in plaintext and must not be
        // taken as if it came over TLS (the STARTTLS command injection attack, CVE-2011-0411).
        self.inbuf.clear();
        Flow::StartTls
    }
}
