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
    ///
    /// Content is appended in runs between the places that need attention (a stuffed dot,
    /// a bare CR or LF, the end of the input), not line by line: most bodies are one run.
    fn decode_slice(&mut self, input: &[u8]) -> (usize, DataEvent) {
        let mut scan = 0;
        if self.at_line_start {
            match line_start(input, 0) {
                LineStart::End(consumed) => {
                    return (consumed, DataEvent::Done(self.buffer.finish()));
                }
                LineStart::Undecided => return (0, DataEvent::NeedMore),
                LineStart::Content(from) => scan = from,
            }
        }
        // The start of the content not appended yet.
        let mut run = scan;
        while let Some(found) = memchr::memchr2(b'\r', b'\n', &input[scan..]) {
            let at = scan + found;
            match (input[at], input.get(at + 1)) {
                (b'\r', Some(b'\n')) => {
                    // Only a real CRLF starts a line that can end the data or be
                    // dot-stuffed: after a bare LF (normalised), ".\r\n" is content.
                    let next = at + 2;
                    match line_start(input, next) {
                        LineStart::End(consumed) => {
                            self.buffer.append(&input[run..next]);
                            return (consumed, DataEvent::Done(self.buffer.finish()));
                        }
                        LineStart::Undecided => {
                            self.buffer.append(&input[run..next]);
                            self.at_line_start = true;
                            return (next, DataEvent::NeedMore);
                        }
                        LineStart::Content(from) => {
                            if from != next {
                                // RFC 5321 §4.5.2: drop the first dot of a line.
                                self.buffer.append(&input[run..next]);
                                run = from;
                            }
                            scan = from;
                        }
                    }
                }
                (b'\r', None) => {
                    // Keep a trailing CR: it may be the first half of CRLF.
                    self.buffer.append(&input[run..at]);
                    self.at_line_start = false;
                    return (at, DataEvent::NeedMore);
                }
                _ => {
                    // A bare CR or LF: refused, or replaced by CRLF.
                    self.buffer.append(&input[run..at]);
                    self.buffer.bare();
                    self.buffer.append(b"\r\n");
                    run = at + 1;
                    scan = run;
                }
            }
        }
        self.buffer.append(&input[run..]);
        self.at_line_start = false;
        (input.len(), DataEvent::NeedMore)
    }

    /// The body received so far.
    pub fn body(&mut self) -> &mut BodyBuffer {
        &mut self.buffer
    }
}

/// How the line starting at some offset of the input begins.
enum LineStart {
    /// It is the end marker `.<CRLF>`, which ends before this offset.
    End(usize),
    /// Too little input to tell.
    Undecided,
    /// It is content, from this offset (past a stuffed dot).
    Content(usize),
}

/// Looks at the line starting at `at` of `input`.
fn line_start(input: &[u8], at: usize) -> LineStart {
    let rest = &input[at..];
    match rest {
        [] => LineStart::Undecided,
        [b'.', b'\r', b'\n', ..] => LineStart::End(at + 3),
        // Not enough to tell ".\r\n" from a stuffed dot.
        [b'.'] | [b'.', b'\r'] => LineStart::Undecided,
        [b'.', ..] => LineStart::Content(at + 1),
        _ => LineStart::Content(at),
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

    /// The decoding rules applied one octet at a time to a whole input: what the end
    /// marker completes (the body or why it is refused, and the octets consumed), or `None`
    /// when the input does not end the data.
    fn reference(
        input: &[u8],
        endings: LineEndings,
    ) -> Option<(Result<Vec<u8>, DataProblem>, usize)> {
        let (mut out, mut refused, mut at_line_start, mut i) = (Vec::new(), false, true, 0);
        loop {
            if at_line_start {
                if input[i..].starts_with(b".\r\n") {
                    let body = if refused {
                        Err(DataProblem::BareLineEnding)
                    } else {
                        Ok(out)
                    };
                    return Some((body, i + 3));
                }
                if input.get(i) == Some(&b'.') {
                    i += 1;
                }
            }
            at_line_start = false;
            match (input.get(i), input.get(i + 1)) {
                (None, _) | (Some(b'\r'), None) => return None,
                (Some(b'\r'), Some(b'\n')) => {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                    at_line_start = true;
                }
                (Some(b'\r' | b'\n'), _) => {
                    refused |= endings == LineEndings::Reject;
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                (Some(&c), _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
    }

    #[test]
    fn agrees_with_the_octet_by_octet_rules_however_the_input_is_split() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let input: Vec<u8> = (0..len).map(|_| b"a.\r\n"[(next() % 4) as usize]).collect();
            let splits = [(next() as usize) % (len + 1), (next() as usize) % (len + 1)];
            let (first, second) = (splits[0].min(splits[1]), splits[0].max(splits[1]));
            for endings in [LineEndings::Reject, LineEndings::Normalize] {
                let mut dec = DataDecoder::new(1000, endings);
                let (mut buf, mut taken, mut fed) = (BytesMut::new(), Vec::new(), 0);
                let mut got = None;
                for piece in [&input[..first], &input[first..second], &input[second..]] {
                    buf.extend_from_slice(piece);
                    fed += piece.len();
                    match dec.decode(&mut buf) {
                        DataEvent::Done(r) => {
                            let body = r.map(|rest| [&taken[..], &rest[..]].concat());
                            got = Some((body, fed - buf.len()));
                            break;
                        }
                        DataEvent::NeedMore => taken.extend_from_slice(&dec.body().take()),
                    }
                }
                assert_eq!(
                    got,
                    reference(&input, endings),
                    "{input:?} split at {first}, {second}"
                );
            }
        }
    }

    #[test]
    fn a_refused_body_keeps_nothing() {
        let mut dec = DataDecoder::new(1000, LineEndings::Reject);
        let mut buf = BytesMut::from(&b"good line\r\nbad\nmore\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), DataEvent::NeedMore);
        assert!(dec.body().refused());
        assert_eq!(dec.body().buffered(), 0);
        assert_eq!(
            dec.body().len(),
            14,
            "only what came before the bare line ending"
        );
    }
}
