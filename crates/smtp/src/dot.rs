//! Encoding a body for DATA: CRLF line endings and dot-stuffing (RFC 5321 §4.5.2).

/// Appends `body` to `out` ready to send after `354`, including the final `.<CRLF>`.
///
/// Every bare CR or LF becomes CRLF, a line starting with `.` gets a second one, and a
/// missing final line ending is added, so the peer can never see a premature end marker.
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut rest = body;
    let mut at_line_start = true;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        // Copy up to the next line ending in one piece, then write a CRLF for it.
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(end) => {
                out.extend_from_slice(&rest[..end]);
                out.extend_from_slice(b"\r\n");
                // A CRLF pair counts once; a bare CR or LF becomes CRLF too.
                let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
                rest = &rest[end + 1 + usize::from(crlf)..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                at_line_start = false;
            }
        }
    }
    if !at_line_start {
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
