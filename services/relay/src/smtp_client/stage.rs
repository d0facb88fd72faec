//! The steps of a client session, named when a connection is lost: the failure's text
//! says what the client was doing, and the step tells a server that never answered (a
//! dead host) from one that went away later (one message's failure).

use std::fmt;

/// What the client was doing when it wrote or waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the server's first words (220).
    Greeting,
    /// EHLO.
    Ehlo,
    /// LHLO (RFC 2033).
    Lhlo,
    /// HELO, after EHLO was refused.
    Helo,
    /// STARTTLS (RFC 3207).
    StartTls,
    /// AUTH PLAIN (RFC 4954).
    Auth,
    /// MAIL FROM (with RCPT and DATA in the same write when pipelining).
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA.
    Data,
    /// Writing the dot-stuffed content and its final dot.
    Body,
    /// Waiting for the reply to the end of data.
    EndOfData,
    /// Waiting for one recipient's reply to the end of data (LMTP).
    RecipientEndOfData,
    /// Ending the empty message of a server that said 354 with no recipient accepted.
    EmptyMessage,
    /// RSET.
    Reset,
    /// QUIT.
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "reading the greeting",
            Stage::Ehlo => "EHLO",
            Stage::Lhlo => "LHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Body => "sending message body",
            Stage::EndOfData => "waiting for the end of data reply",
            Stage::RecipientEndOfData => "waiting for a recipient's end of data reply",
            Stage::EmptyMessage => "ending an empty message",
            Stage::Reset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}
