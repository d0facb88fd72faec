//! The BDAT body (RFC 3030 CHUNKING): chunks of exact sizes, no dot-stuffing and no end
//! marker, so smuggling by line endings is impossible by construction; bare CR or LF is
//! still refused (or normalised) so that what is queued is the same whichever way it came.

use bytes::BytesMut;

use crate::data::{BodyBuffer, DataProblem, LineEndings};

/// Accumulates the chunks of one message.
#[derive(Debug)]
pub struct BdatBody {
    /// The body so far.
    buffer: BodyBuffer,
    /// The last octet fed was a CR whose LF may still come in the next chunk.
    pending_cr: bool,
}

impl BdatBody {
    /// An empty body of at most `max_size` octets.
    pub fn new(max_size: usize, endings: LineEndings) -> Self {
        Self {
            buffer: BodyBuffer::new(max_size, endings),
            pending_cr: false,
        }
    }

    /// Adds chunk content (any slice of a chunk: chunks may arrive in pieces).
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            match (self.pending_cr, b) {
                (true, b'\n') => self.pending_cr = false,
                (true, _) => {
                    // The CR before this octet was bare.
                    self.buffer.append(&bytes[start..i]);
                    self.bare(b"\n");
                    start = i;
                    self.pending_cr = b == b'\r';
                }
                (false, b'\r') => self.pending_cr = true,
                (false, b'\n') => {
                    self.buffer.append(&bytes[start..i]);
                    self.bare(b"\r\n");
                    start = i + 1;
                }
                (false, _) => {}
            }
        }
        self.buffer.append(&bytes[start..]);
    }

    /// The content not yet taken after the LAST chunk, or why the message is refused.
    pub fn finish(mut self) -> Result<BytesMut, DataProblem> {
        if self.pending_cr {
            self.bare(b"\n");
        }
        self.buffer.finish()
    }

    /// The body received so far (its `len` is the total for the `250` of each chunk).
    pub fn body(&mut self) -> &mut BodyBuffer {
        &mut self.buffer
    }

    /// A bare CR or LF: `fix` completes it to CRLF when normalising (after a refusal the
    /// buffer drops it).
    fn bare(&mut self, fix: &[u8]) {
        self.buffer.bare();
        self.buffer.append(fix);
    }
}

/// Parses the arguments of `BDAT <size> [LAST]`.
pub fn parse_args(args: &str) -> Option<(u64, bool)> {
    let mut words = args.split_ascii_whitespace();
    let size = words.next()?;
    if !size.bytes().all(|b| b.is_ascii_digit()) || size.len() > 19 {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&[u8]], endings: LineEndings) -> Result<BytesMut, DataProblem> {
        let mut b = BdatBody::new(1000, endings);
        for c in chunks {
            b.feed(c);
        }
        b.finish()
    }

    #[test]
    fn crlf_split_across_chunks_is_fine() {
        let got = body(&[b"a\r", b"\nb\r\n"], LineEndings::Reject).unwrap();
        assert_eq!(&got[..], b"a\r\nb\r\n");
    }

    #[test]
    fn dots_and_end_markers_are_plain_content() {
        let got = body(&[b"x\r\n.\r\nMAIL FROM:<e@x>\r\n"], LineEndings::Reject).unwrap();
        assert_eq!(&got[..], b"x\r\n.\r\nMAIL FROM:<e@x>\r\n");
    }

    #[test]
    fn bare_endings_refused_or_normalised() {
        for bad in [&b"a\nb"[..], b"a\rb", b"a\r", b"\n", b"a\r\r\n"] {
            assert_eq!(
                body(&[bad], LineEndings::Reject),
                Err(DataProblem::BareLineEnding),
                "{bad:?}"
            );
        }
        assert_eq!(
            &body(&[b"a\nb\rc\r"], LineEndings::Normalize).unwrap()[..],
            b"a\r\nb\r\nc\r\n"
        );
        assert_eq!(
            &body(&[b"a\r", b"\rb"], LineEndings::Normalize).unwrap()[..],
            b"a\r\n\r\nb"
        );
    }

    #[test]
    fn size_limit() {
        let mut b = BdatBody::new(4, LineEndings::Reject);
        b.feed(b"abc");
        b.feed(b"de");
        assert_eq!(b.finish(), Err(DataProblem::TooBig));
    }

    #[test]
    fn args() {
        assert_eq!(parse_args("100"), Some((100, false)));
        assert_eq!(parse_args("0 LAST"), Some((0, true)));
        assert_eq!(parse_args("5 last"), Some((5, true)));
        for bad in [
            "",
            "x",
            "-1",
            "10 FIRST",
            "10 LAST extra",
            "99999999999999999999",
        ] {
            assert_eq!(parse_args(bad), None, "{bad}");
        }
    }
}
