//! Encoding a body for DATA: CRLF line endings and dot-stuffing (RFC 5321 §4.5.2).

/// Appends `body` to `out` ready to send after `354`, including the final `.<CRLF>`.
///
/// Every bare CR or LF becomes CRLF, a line starting with `.` gets a second one, and a
/// missing final line ending is added, so the peer can never see a premature end marker.
/// The body is copied in runs between the places that need a change, not line by line.
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    encode_piece(
        Piece {
            octets: body,
            starts_line: true,
        },
        out,
    );
    end(body, out);
}

/// A piece of a body, encoded on its own by [`encode_piece`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Its octets.
    pub octets: &'a [u8],
    /// Whether it starts a line (the body's start, or just after a line ending), where a
    /// `.` is doubled.
    pub starts_line: bool,
}

/// The body in pieces of `size` octets (one more where a cut would part a CRLF pair; the
/// last is what is left; an empty body is one empty piece), so that a large body is
/// encoded and sent a piece at a time instead of whole: [`encode_piece`] of each in turn,
/// then [`end`], gives what [`encode`] gives.
pub fn pieces(body: &[u8], size: usize) -> impl Iterator<Item = Piece<'_>> {
    let size = size.max(1);
    let (mut start, mut first) = (0, true);
    std::iter::from_fn(move || {
        if start >= body.len() && !first {
            return None;
        }
        first = false;
        let mut cut = (start + size).min(body.len());
        // A CR and its LF stay together: apart, each would look bare.
        if cut > start && body[cut - 1] == b'\r' && body.get(cut) == Some(&b'\n') {
            cut += 1;
        }
        let starts_line = start == 0 || matches!(body[start - 1], b'\r' | b'\n');
        let piece = Piece {
            octets: &body[start..cut],
            starts_line,
        };
        start = cut;
        Some(piece)
    })
}

/// Appends one piece of a body to `out`, line endings made CRLF and dots stuffed (no end
/// marker: that is [`end`]).
pub fn encode_piece(piece: Piece<'_>, out: &mut Vec<u8>) {
    let body = piece.octets;
    if piece.starts_line && body.first() == Some(&b'.') {
        out.push(b'.');
    }
    // The start of the piece not copied yet, and where to look for the next line ending.
    let (mut run, mut scan) = (0, 0);
    while let Some(found) = memchr::memchr2(b'\r', b'\n', &body[scan..]) {
        let at = scan + found;
        // A CRLF pair counts once; a bare CR or LF becomes CRLF.
        let crlf = body[at] == b'\r' && body.get(at + 1) == Some(&b'\n');
        let next = at + 1 + usize::from(crlf);
        if !crlf {
            out.extend_from_slice(&body[run..at]);
            out.extend_from_slice(b"\r\n");
            run = next;
        }
        if body.get(next) == Some(&b'.') {
            out.extend_from_slice(&body[run..next]);
            out.push(b'.');
            run = next;
        }
        scan = next;
    }
    out.extend_from_slice(&body[run..]);
}

/// Appends the end of data after a body's encoded pieces: a line ending if the body does
/// not end with one, and `.<CRLF>`.
pub fn end(body: &[u8], out: &mut Vec<u8>) {
    if !matches!(body.last(), None | Some(b'\r' | b'\n')) {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DataDecoder, DataEvent, LineEndings};
    use bytes::BytesMut;

    fn enc(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(body, &mut out);
        out
    }

    #[test]
    fn stuffs_and_terminates() {
        assert_eq!(enc(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(enc(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(enc(b""), b".\r\n");
        assert_eq!(enc(b"no newline"), b"no newline\r\n.\r\n");
    }

    #[test]
    fn never_emits_bare_cr_or_lf() {
        let out = enc(b"a\nb\rc\r\r\n.\n");
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\n..\r\n.\r\n");
    }

    #[test]
    fn dots_are_stuffed_only_at_line_starts() {
        assert_eq!(
            enc(b"a.b\r\n.\r\n..\r\nx."),
            b"a.b\r\n..\r\n...\r\nx.\r\n.\r\n"
        );
        assert_eq!(enc(b"\r\n\r\n.a"), b"\r\n\r\n..a\r\n.\r\n");
        assert_eq!(enc(b"a\r"), b"a\r\n.\r\n");
    }

    #[test]
    fn agrees_with_the_octet_by_octet_rules() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 20) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| b"a.\r\n"[(seed >> (8 + 2 * i)) as usize % 4])
                .collect();
            let mut expected = Vec::new();
            let (mut at_line_start, mut i) = (true, 0);
            while let Some(&c) = body.get(i) {
                if at_line_start && c == b'.' {
                    expected.push(b'.');
                }
                at_line_start = matches!(c, b'\r' | b'\n');
                if at_line_start {
                    expected.extend_from_slice(b"\r\n");
                    i += usize::from(c == b'\r' && body.get(i + 1) == Some(&b'\n'));
                } else {
                    expected.push(c);
                }
                i += 1;
            }
            if !at_line_start {
                expected.extend_from_slice(b"\r\n");
            }
            expected.extend_from_slice(b".\r\n");
            assert_eq!(enc(&body), expected, "{body:?}");
        }
    }

    /// Pieces of every size, encoded one after the other, give the whole body's encoding,
    /// also where a cut falls between a CR and its LF, before a dot or inside a line.
    #[test]
    fn pieces_encode_as_the_whole_body() {
        let bodies: [&[u8]; 6] = [
            b"",
            b"a\r\n.b\r\n..c\r\n.\r\nd",
            b"\r\n\r\n\r\n.",
            b"x\ry\nz\r\r\n\n.\r.\n.",
            b".",
            b"no line ending at all",
        ];
        for body in bodies {
            for size in 1..=body.len() + 2 {
                let mut out = Vec::new();
                let mut joined = Vec::new();
                for piece in pieces(body, size) {
                    assert!(piece.octets.len() >= size.min(body.len() - joined.len()));
                    joined.extend_from_slice(piece.octets);
                    encode_piece(piece, &mut out);
                }
                assert_eq!(joined, body, "the pieces are the body, in order");
                end(body, &mut out);
                assert_eq!(out, enc(body), "{body:?} in pieces of {size}");
            }
        }
        let empty: Vec<_> = pieces(b"", 4).collect();
        assert_eq!(
            empty,
            [Piece {
                octets: b"",
                starts_line: true
            }]
        );
        let cut: Vec<_> = pieces(b"ab\r\ncd", 3).map(|p| p.octets).collect();
        assert_eq!(cut, [&b"ab\r\n"[..], b"cd"], "a CRLF pair is never parted");
    }

    #[test]
    fn decoder_inverts_encoder() {
        let body = b"From: a\r\n\r\n.line\r\n..two\r\nend\r\n";
        let mut buf = BytesMut::from(&enc(body)[..]);
        let mut dec = DataDecoder::new(1 << 20, LineEndings::Reject);
        assert_eq!(
            dec.decode(&mut buf),
            DataEvent::Done(Ok(BytesMut::from(&body[..])))
        );
    }
}
