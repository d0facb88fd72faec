//! SMTP replies: the typed [`Reply`] a server sends, and [`ReplyDecoder`] for the client side.

use std::borrow::Cow;
use std::fmt;

use bytes::BytesMut;

/// An enhanced status code (RFC 3463), e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject, e.g. 1 for addressing.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class.subject.detail`; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Self::new(class, subject, detail))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A reply a server sends: a code, an enhanced status code and a human sentence.
///
/// Text containing `\n` is sent as a multi-line reply, one line per part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code; omitted only for the greeting and EHLO lines.
    pub enhanced: Option<EnhancedCode>,
    /// The human-readable text.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, QUIT per RFC 2034 §3).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// True for 2xx and 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form (CRLF terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            out.extend_from_slice(format!("{}{sep}", self.code).as_bytes());
            if let Some(enh) = self.enhanced {
                out.extend_from_slice(format!("{enh} ").as_bytes());
            }
            out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(enh) => write!(f, "{} {} {}", self.code, enh, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// A reply as received by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, when the first line carried one.
    pub enhanced: Option<EnhancedCode>,
    /// Each line's text, without code and separator.
    pub lines: Vec<String>,
}

impl ServerReply {
    /// The text of every line joined with a space, as recorded in status records.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

/// Why a server's reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The line does not start with a three-digit code and a separator.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// The lines of a multi-line reply disagree on the code.
    #[error("reply code changed within a multi-line reply ({first} then {then})")]
    CodeChanged {
        /// The code of the first line.
        first: u16,
        /// The code of the offending line.
        then: u16,
    },
    /// The reply exceeds the line or line-count bound.
    #[error("reply too long")]
    TooLong,
}

/// Longest reply line a client accepts (RFC 5321 §4.5.3.1.5 says 512; peers exceed it).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply (EHLO replies are the longest in practice).
const MAX_REPLY_LINES: usize = 128;

/// Decodes (possibly multi-line) replies from a byte buffer.
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    /// Lines of a multi-line reply read so far.
    pending: Vec<String>,
    /// The code of the first pending line.
    code: u16,
    /// The enhanced code of the first pending line.
    enhanced: Option<EnhancedCode>,
}

impl ReplyDecoder {
    /// Takes one complete reply out of `buf`; `Ok(None)` when more input is needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<ServerReply>, ReplyError> {
        loop {
            let Some(lf) = memchr::memchr(b'\n', buf) else {
                if buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::TooLong);
                }
                return Ok(None);
            };
            if lf > MAX_REPLY_LINE || self.pending.len() >= MAX_REPLY_LINES {
                return Err(ReplyError::TooLong);
            }
            let raw = buf.split_to(lf + 1);
            let line = String::from_utf8_lossy(&raw[..lf]);
            let line = line.trim_end_matches('\r');
            let (code, last, text) = parse_reply_line(line)?;
            if self.pending.is_empty() {
                self.code = code;
                let first_word = text.split(' ').next().unwrap_or("");
                self.enhanced =
                    EnhancedCode::parse(first_word).filter(|e| u16::from(e.class) == code / 100);
            } else if code != self.code {
                return Err(ReplyError::CodeChanged {
                    first: self.code,
                    then: code,
                });
            }
            let text = match self.enhanced {
                Some(enh) => {
                    let prefix = enh.to_string();
                    text.strip_prefix(prefix.as_str())
                        .map(|t| t.trim_start().to_string())
                        .unwrap_or_else(|| text.to_string())
                }
                None => text.to_string(),
            };
            self.pending.push(text);
            if last {
                return Ok(Some(ServerReply {
                    code: self.code,
                    enhanced: self.enhanced.take(),
                    lines: std::mem::take(&mut self.pending),
                }));
            }
        }
    }
}

fn parse_reply_line(line: &str) -> Result<(u16, bool, &str), ReplyError> {
    let malformed = || ReplyError::Malformed(line.chars().take(80).collect());
    let bytes = line.as_bytes();
    if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let code: u16 = line[..3].parse().map_err(|_| malformed())?;
    if !(200..600).contains(&code) {
        return Err(malformed());
    }
    match bytes.get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_single_and_multi_line_replies() {
        let mut out = Vec::new();
        Reply::new(550, EnhancedCode::new(5, 1, 1), "User unknown").write_to(&mut out);
        Reply::plain(250, "mx.example\nPIPELINING\nSIZE 100").write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "550 5.1.1 User unknown\r\n250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
    }

    #[test]
    fn decodes_multi_line_reply_with_enhanced_code() {
        let mut dec = ReplyDecoder::default();
        let mut buf =
            BytesMut::from(&b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n"[..]);
        let reply = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.enhanced, Some(EnhancedCode::new(2, 0, 0)));
        assert_eq!(reply.lines, vec!["first", "second", "third"]);
        assert!(buf.is_empty());
    }

    #[test]
    fn decoder_waits_for_the_last_line() {
        let mut dec = ReplyDecoder::default();
        let mut buf = BytesMut::from(&b"220-hello\r\n"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"220 there\r\n");
        let reply = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(reply.lines, vec!["hello", "there"]);
        assert_eq!(reply.enhanced, None);
    }

    #[test]
    fn rejects_garbage_and_code_changes() {
        let mut dec = ReplyDecoder::default();
        let mut buf = BytesMut::from(&b"hello\r\n"[..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(ReplyError::Malformed(_))
        ));
        let mut dec = ReplyDecoder::default();
        let mut buf = BytesMut::from(&b"250-a\r\n251 b\r\n"[..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(ReplyError::CodeChanged { .. })
        ));
    }

    #[test]
    fn enhanced_code_must_match_class() {
        let mut dec = ReplyDecoder::default();
        let mut buf = BytesMut::from(&b"550 2.0.0 odd\r\n"[..]);
        let reply = dec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.text(), "2.0.0 odd");
    }
}
