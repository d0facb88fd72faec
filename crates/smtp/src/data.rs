//! The DATA body decoder (RFC 5321 §4.1.1.4, §4.5.2).
//!
//! Only `<CRLF>.<CRLF>` ends the body. A bare CR or bare LF is either refused (the default:
//! the session answers `550 5.5.2` after the end marker, so nothing that another server would
//! read differently is ever queued) or rewritten as CRLF. Past the size limit the content is
//! discarded while the decoder still looks for the end marker, so memory stays bounded.

use bytes::{Buf, BytesMut};

/// What to do with a bare CR or LF in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEndings {
    /// Refuse the message (SMTP smuggling defence).
    #[default]
    Reject,
    /// Replace each bare CR or LF with CRLF.
    Normalize,
}

/// Why a completed body cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// The body holds a bare CR or LF and [`LineEndings::Reject`] is in force.
    BareLineEnding,
    /// The body exceeds the size limit.
    TooBig,
}

/// The decoder's progress.
#[derive(Debug, PartialEq, Eq)]
pub enum DataEvent {
    /// The input so far was consumed; more is needed.
    NeedMore,
    /// The end marker was consumed; the body is complete. The content is what was not
    /// [taken](BodyBuffer::take) before.
    Done(Result<BytesMut, DataProblem>),
}

/// The buffer a body starts with.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// A message body being received, DATA or BDAT: bounded in size, and remembering the first
/// reason to refuse it. Once there is one, further content is dropped.
///
/// The caller may [`take`](BodyBuffer::take) the content received so far at any time (to
/// stream a large body to storage while it arrives); the size limit counts every octet
/// received, taken or not.
#[derive(Debug)]
pub struct BodyBuffer {
    /// The content received and not yet taken (CRLF line endings).
    body: BytesMut,
    /// Octets received in all, taken or not.
    total: usize,
    /// The most octets the whole body may have.
    max_size: usize,
    /// Bare CR/LF policy.
    endings: LineEndings,
    /// The first reason to refuse the body, if any.
    problem: Option<DataProblem>,
}

impl BodyBuffer {
    /// An empty body of at most `max_size` octets.
    pub(crate) fn new(max_size: usize, endings: LineEndings) -> Self {
        Self {
            // Most messages fit: no reallocation while a typical body arrives.
            body: BytesMut::with_capacity(INITIAL_CAPACITY.min(max_size)),
            total: 0,
            max_size,
            endings,
            problem: None,
        }
    }

    /// Appends content, or records that the body is too big.
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        if self.problem.is_some() {
            return;
        }
        if self.total + bytes.len() > self.max_size {
            self.problem = Some(DataProblem::TooBig);
            self.body = BytesMut::new();
            return;
        }
        self.total += bytes.len();
        self.body.extend_from_slice(bytes);
    }

    /// Notes a bare CR or LF: a refusal under [`LineEndings::Reject`]; when normalising, the
    /// caller appends the CRLF that replaces it.
    pub(crate) fn bare(&mut self) {
        if self.endings == LineEndings::Reject && self.problem.is_none() {
            self.problem = Some(DataProblem::BareLineEnding);
            self.body = BytesMut::new();
        }
    }

    /// Octets received in all.
    pub fn len(&self) -> usize {
        self.total
    }

    /// True before any content.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Octets received and not yet taken.
    pub fn buffered(&self) -> usize {
        self.body.len()
    }

    /// Takes the content received since the last call.
    pub fn take(&mut self) -> BytesMut {
        self.body.split()
    }

    /// True once the body is sure to be refused (nothing more is kept).
    pub fn refused(&self) -> bool {
        self.problem.is_some()
    }

    /// The content not yet taken, or why the body is refused.
    pub(crate) fn finish(&mut self) -> Result<BytesMut, DataProblem> {
        match self.problem {
            Some(p) => Err(p),
            None => Ok(std::mem::take(&mut self.body)),
        }
    }
}

/// Decodes one DATA body.
#[derive(Debug)]
pub struct DataDecoder {
    /// The decoded body (dot-unstuffed, CRLF line endings).
    buffer: BodyBuffer,
    /// True when the next octet starts a line.
    at_line_start: bool,
}

impl DataDecoder {
    /// A decoder for a body of at most `max_size` octets.
    pub fn new(max_size: usize, endings: LineEndings) -> Self {
        Self {
            buffer: BodyBuffer::new(max_size, endings),
            at_line_start: true,
        }
    }

    /// Consumes as much of `buf` as possible. Lines are read in place and `buf` advanced
    /// once at the end (splitting each line off would cost a reference count per line).
    pub fn decode(&mut self, buf: &mut BytesMut) -> DataEvent {
        let (consumed, event) = self.decode_slice(buf);
        buf.advance(consumed);
        event
    }

    /// Decodes from `input`; returns how much of it was consumed, and what happened.
    fn decode_slice(&mut self, input: &[u8]) -> (usize, DataEvent) {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if self.at_line_start && rest.first() == Some(&b'.') {
                match rest.get(1..3) {
                    Some(b"\r\n") => return (pos + 3, DataEvent::Done(self.buffer.finish())),
                    // Not enough to tell ".\r\n" from a stuffed dot.
                    None if rest.get(1).is_none_or(|&b| b == b'\r') => {
                        return (pos, DataEvent::NeedMore);
                    }
                    // RFC 5321 §4.5.2: drop the first dot of a line.
                    _ => pos += 1,
                }
            }
            let rest = &input[pos..];
            match memchr::memchr(b'\n', rest) {
                Some(lf) => {
                    let (content, crlf) = match rest[..=lf].strip_suffix(b"\r\n") {
                        Some(content) => (content, true),
                        None => (&rest[..lf], false),
                    };
                    if !crlf {
                        self.buffer.bare();
                    }
                    self.append_content(content);
                    self.buffer.append(b"\r\n");
                    // Only a real CRLF starts a line that can end the data or be dot-stuffed:
                    // after a bare LF (normalised), ".\r\n" is content, never the end.
                    self.at_line_start = crlf;
                    pos += lf + 1;
                }
                None => {
                    // Keep a trailing CR: it may be the first half of CRLF.
                    let keep = usize::from(rest.last() == Some(&b'\r'));
                    let take = rest.len().saturating_sub(keep);
                    if take > 0 {
                        self.append_content(&rest[..take]);
                        self.at_line_start = false;
                    }
                    return (pos + take, DataEvent::NeedMore);
                }
            }
        }
    }

    /// The body received so far.
    pub fn body(&mut self) -> &mut BodyBuffer {
        &mut self.buffer
    }

    /// Appends line content, handling bare CRs inside it.
    fn append_content(&mut self, content: &[u8]) {
        let mut rest = content;
        while let Some(cr) = memchr::memchr(b'\r', rest) {
            self.buffer.append(&rest[..cr]);
            self.buffer.bare();
            self.buffer.append(b"\r\n");
            rest = &rest[cr + 1..];
        }
        self.buffer.append(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        input: &[u8],
        endings: LineEndings,
        max: usize,
    ) -> (Result<BytesMut, DataProblem>, BytesMut) {
        let mut dec = DataDecoder::new(max, endings);
        let mut buf = BytesMut::from(input);
        match dec.decode(&mut buf) {
            DataEvent::Done(r) => (r, buf),
            DataEvent::NeedMore => panic!("decoder wants more after {input:?}"),
        }
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf_and_keeps_the_rest() {
        let (body, rest) = run(
            b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n",
            LineEndings::Reject,
            1000,
        );
        assert_eq!(&body.unwrap()[..], b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(&rest[..], b"QUIT\r\n");
    }

    #[test]
    fn empty_body() {
        let (body, _) = run(b".\r\n", LineEndings::Reject, 1000);
        assert!(body.unwrap().is_empty());
    }

    #[test]
    fn unstuffs_leading_dots() {
        let (body, _) = run(b"..hidden\r\n.x\r\n...\r\n.\r\n", LineEndings::Reject, 1000);
        assert_eq!(&body.unwrap()[..], b".hidden\r\nx\r\n..\r\n");
    }

    #[test]
    fn bare_lf_dot_does_not_end_data_and_is_refused() {
        let mut dec = DataDecoder::new(1000, LineEndings::Reject);
        let mut buf = BytesMut::from(&b"a\n.\nMAIL FROM:<evil@x>\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), DataEvent::NeedMore);
        buf.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            dec.decode(&mut buf),
            DataEvent::Done(Err(DataProblem::BareLineEnding))
        );
    }

    #[test]
    fn smuggling_with_bare_cr_is_refused() {
        let (body, _) = run(b"a\r.\r\nb\r\n.\r\n", LineEndings::Reject, 1000);
        assert_eq!(body, Err(DataProblem::BareLineEnding));
    }

    #[test]
    fn a_bare_lf_before_the_dot_never_ends_the_data_even_when_normalising() {
        let mut dec = DataDecoder::new(1000, LineEndings::Normalize);
        let mut buf = BytesMut::from(&b"hi\n.\r\nMAIL FROM:<e@x>\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), DataEvent::NeedMore);
        buf.extend_from_slice(b".\r\n");
        let DataEvent::Done(Ok(body)) = dec.decode(&mut buf) else {
            panic!("not done");
        };
        assert_eq!(&body[..], b"hi\r\n.\r\nMAIL FROM:<e@x>\r\n");
    }

    #[test]
    fn normalizes_when_configured() {
        let (body, _) = run(b"a\nb\rc\r\n.\r\n", LineEndings::Normalize, 1000);
        assert_eq!(&body.unwrap()[..], b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn split_at_every_position_gives_the_same_body() {
        let input = b"line one\r\n..dot\r\n.\r\n";
        for split in 0..input.len() {
            let mut dec = DataDecoder::new(1000, LineEndings::Reject);
            let mut buf = BytesMut::from(&input[..split]);
            let first = dec.decode(&mut buf);
            assert_eq!(first, DataEvent::NeedMore, "split at {split}");
            buf.extend_from_slice(&input[split..]);
            match dec.decode(&mut buf) {
                DataEvent::Done(Ok(body)) => assert_eq!(&body[..], b"line one\r\n.dot\r\n"),
                other => panic!("split at {split}: {other:?}"),
            }
        }
    }

    #[test]
    fn oversize_is_discarded_until_the_end_marker() {
        let mut dec = DataDecoder::new(10, LineEndings::Reject);
        let mut buf = BytesMut::new();
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 1000]);
            assert_eq!(dec.decode(&mut buf), DataEvent::NeedMore);
            assert!(dec.buffer.buffered() <= 10);
        }
        buf.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            dec.decode(&mut buf),
            DataEvent::Done(Err(DataProblem::TooBig))
        );
    }

    #[test]
    fn content_taken_along_the_way_adds_up_to_the_body_and_counts_toward_the_limit() {
        let input = b"line one\r\n..dot\r\nline three\r\n.\r\n";
        for split in 0..input.len() {
            let mut dec = DataDecoder::new(1000, LineEndings::Reject);
            let mut buf = BytesMut::from(&input[..split]);
            assert_eq!(dec.decode(&mut buf), DataEvent::NeedMore);
            let mut body = dec.body().take();
            buf.extend_from_slice(&input[split..]);
            match dec.decode(&mut buf) {
                DataEvent::Done(Ok(rest)) => body.extend_from_slice(&rest),
                other => panic!("split at {split}: {other:?}"),
            }
            assert_eq!(&body[..], b"line one\r\n.dot\r\nline three\r\n");
        }
        let mut dec = DataDecoder::new(15, LineEndings::Reject);
        let mut buf = BytesMut::from(&b"0123456789\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), DataEvent::NeedMore);
        assert_eq!(dec.body().take().len(), 12);
        assert!(!dec.body().refused());
        buf.extend_from_slice(b"0123456789\r\n.\r\n");
        assert_eq!(
            dec.decode(&mut buf),
            DataEvent::Done(Err(DataProblem::TooBig))
        );
    }

    #[test]
    fn a_refused_body_keeps_nothing() {
        let mut dec = DataDecoder::new(1000, LineEndings::Reject);
        let mut buf = BytesMut::from(&b"good line\r\nbad\nmore\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), DataEvent::NeedMore);
        assert!(dec.body().refused());
        assert_eq!(dec.body().buffered(), 0);
        assert_eq!(dec.body().len(), 11, "only what came before the refusal");
    }
}
