//! Command-line framing with a hard bound on memory.
//!
//! A client may send a line of any length without a line ending. The decoder never keeps
//! more than `max_len` octets of one line: past that it discards input up to the next LF
//! and reports [`LineEvent::TooLong`] once, so the session answers `500 5.5.2` and goes on.

use bytes::{Buf, Bytes, BytesMut};

/// What the decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its CRLF (or bare LF).
    Line(Bytes),
    /// A line longer than the limit ended; its content was discarded.
    TooLong,
    /// The buffer holds no complete line yet.
    NeedMore,
}

/// Frames lines out of an input buffer.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    /// The longest line accepted, excluding the line ending.
    max_len: usize,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
}

impl LineDecoder {
    /// A decoder that accepts lines of up to `max_len` octets before the line ending.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            discarding: false,
        }
    }

    /// Takes the next line out of `buf`, consuming it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> LineEvent {
        match memchr::memchr(b'\n', buf) {
            Some(lf) => {
                let mut line = buf.split_to(lf + 1).freeze();
                if std::mem::take(&mut self.discarding) {
                    return LineEvent::TooLong;
                }
                line.truncate(lf);
                if line.last() == Some(&b'\r') {
                    line.truncate(lf - 1);
                }
                if line.len() > self.max_len {
                    LineEvent::TooLong
                } else {
                    LineEvent::Line(line)
                }
            }
            None => {
                // One extra octet for a CR that may precede the LF still to come.
                if buf.len() > self.max_len + 1 {
                    self.discarding = true;
                    buf.advance(buf.len());
                }
                LineEvent::NeedMore
            }
        }
    }

    /// True while the decoder is skipping an over-long line.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut LineDecoder, input: &[u8]) -> Vec<LineEvent> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf) {
                LineEvent::NeedMore => return out,
                ev => out.push(ev),
            }
        }
    }

    #[test]
    fn splits_crlf_and_bare_lf_lines() {
        let mut dec = LineDecoder::new(512);
        let evs = decode_all(&mut dec, b"EHLO a\r\nNOOP\nQUIT\r\n");
        assert_eq!(
            evs,
            vec![
                LineEvent::Line(Bytes::from_static(b"EHLO a")),
                LineEvent::Line(Bytes::from_static(b"NOOP")),
                LineEvent::Line(Bytes::from_static(b"QUIT")),
            ]
        );
    }

    #[test]
    fn partial_line_waits_for_more() {
        let mut dec = LineDecoder::new(512);
        let mut buf = BytesMut::from(&b"EHLO exa"[..]);
        assert_eq!(dec.decode(&mut buf), LineEvent::NeedMore);
        buf.extend_from_slice(b"mple\r\n");
        assert_eq!(
            dec.decode(&mut buf),
            LineEvent::Line(Bytes::from_static(b"EHLO example"))
        );
    }

    #[test]
    fn exactly_max_len_is_accepted() {
        let mut dec = LineDecoder::new(8);
        let evs = decode_all(&mut dec, b"12345678\r\n123456789\r\nok\r\n");
        assert_eq!(
            evs,
            vec![
                LineEvent::Line(Bytes::from_static(b"12345678")),
                LineEvent::TooLong,
                LineEvent::Line(Bytes::from_static(b"ok")),
            ]
        );
    }

    #[test]
    fn endless_line_keeps_memory_bounded() {
        let mut dec = LineDecoder::new(512);
        let mut buf = BytesMut::new();
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'a'; 10_000]);
            assert_eq!(dec.decode(&mut buf), LineEvent::NeedMore);
            assert!(buf.len() <= 513, "buffer grew to {}", buf.len());
        }
        buf.extend_from_slice(b"tail\r\nNOOP\r\n");
        assert_eq!(dec.decode(&mut buf), LineEvent::TooLong);
        assert_eq!(
            dec.decode(&mut buf),
            LineEvent::Line(Bytes::from_static(b"NOOP"))
        );
    }
}
