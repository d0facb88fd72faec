//! The header section of a message (RFC 5322 §2.2): its fields as they are on the wire,
//! folded lines included. Pure functions over octets, for the policy's scan stage (its
//! checks, and removing forged fields).

use std::ops::Range;

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field name as written (compare it case-insensitively).
    pub name: &'a str,
    /// The octets after the colon, folding and the final CRLF included.
    pub raw_value: &'a [u8],
    /// Where the whole field (name to final CRLF) lies in the message.
    pub span: Range<usize>,
}

impl Field<'_> {
    /// The value unfolded (RFC 5322 §2.2.3) and trimmed; octets that are not UTF-8 are
    /// replaced.
    pub fn value(&self) -> String {
        let text = String::from_utf8_lossy(self.raw_value);
        let mut out = String::with_capacity(text.len());
        for piece in text.split("\r\n") {
            out.push_str(piece);
        }
        out.trim().to_string()
    }

    /// True when the name is `name`, ignoring case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The length of the header section: up to and including the empty line that ends it, or
/// the whole message when there is none.
pub fn section_len(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |at| at + 4)
}

/// The fields of the header section in order. A line that is neither a field nor a
/// continuation (no colon, or a name that is not UTF-8) is skipped, as mail-parser (which
/// the verification and attachment checks use) and lenient mail readers skip it: if it
/// ended the section here, a forged or filtered field after it would escape the scan and
/// still reach the reader.
pub fn fields(message: &[u8]) -> Vec<Field<'_>> {
    let section = &message[..section_len(message)];
    let mut out = Vec::new();
    let mut at = 0;
    while at < section.len() {
        let rest = &section[at..];
        if rest.starts_with(b"\r\n") {
            break;
        }
        let end = field_end(rest);
        let field = &rest[..end];
        let name = memchr::memchr(b':', field)
            .and_then(|colon| Some((std::str::from_utf8(&field[..colon]).ok()?, colon)));
        if let Some((name, colon)) = name {
            out.push(Field {
                name: name.trim_end(),
                raw_value: &field[colon + 1..],
                span: at..at + end,
            });
        }
        at += end;
    }
    out
}

/// The length of the field starting `rest`: through the CRLF of its last line, continuation
/// lines (starting with space or tab) included.
fn field_end(rest: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match memchr::memmem::find(&rest[at..], b"\r\n") {
            Some(i) => {
                at += i + 2;
                if !matches!(rest.get(at), Some(b' ' | b'\t')) {
                    return at;
                }
            }
            None => return rest.len(),
        }
    }
}

/// `message` without the fields `drop` selects; `None` when it selects none.
pub fn without<'a>(message: &'a [u8], drop: impl Fn(&Field<'a>) -> bool) -> Option<Vec<u8>> {
    let dropped: Vec<Range<usize>> = fields(message)
        .iter()
        .filter(|f| drop(f))
        .map(|f| f.span.clone())
        .collect();
    if dropped.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(message.len());
    let mut at = 0;
    for span in dropped {
        out.extend_from_slice(&message[at..span.start]);
        at = span.end;
    }
    out.extend_from_slice(&message[at..]);
    Some(out)
}

/// The authentication service identifier of an `Authentication-Results` value (RFC 8601
/// §2.2): the first value after any comments and white space, a token or a quoted string
/// (unquoted here). Read as a verifier would, so that a forged field naming our identifier
/// behind a comment or in quotes is recognised as ours and removed (§5).
pub fn authserv_id(value: &str) -> String {
    let rest = skip_cfws(value);
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut id = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => id.extend(chars.next()),
                '"' => return id,
                c => id.push(c),
            }
        }
        // Never closed: not a quoted string.
        return String::new();
    }
    rest.split(|c: char| c == ';' || c == '(' || c == '"' || c.is_whitespace())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `text` after leading white space and comments (nested, with quoted pairs: RFC 5322
/// §3.2.2); an unclosed comment swallows the rest.
fn skip_cfws(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if !text.starts_with('(') {
            return text;
        }
        let mut depth = 0usize;
        let mut escaped = false;
        let mut end = text.len();
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        text = &text[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Received: from a\r\n\tby b; Sat, 28 Nov 2026\r\nSubject: Hello\r\n  world\r\nAuthentication-Results: mx.test; spf=pass\r\nFrom: x@y\r\n\r\nbody: not a header\r\n";

    #[test]
    fn fields_keep_folding_and_spans() {
        let f = fields(MESSAGE);
        let names: Vec<&str> = f.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            ["Received", "Subject", "Authentication-Results", "From"]
        );
        assert_eq!(f[0].value(), "from a\tby b; Sat, 28 Nov 2026");
        assert_eq!(f[1].value(), "Hello  world");
        assert_eq!(
            &MESSAGE[f[1].span.clone()],
            b"Subject: Hello\r\n  world\r\n".as_slice()
        );
        assert!(f[2].is("authentication-results"));
        assert_eq!(
            section_len(MESSAGE),
            MESSAGE.len() - b"body: not a header\r\n".len()
        );
    }

    #[test]
    fn edge_cases_are_read_safely() {
        assert!(fields(b"").is_empty());
        assert!(fields(b"\r\nbody").is_empty());
        assert_eq!(section_len(b"\r\nbody"), 2);
        // No blank line: the whole message is the header section.
        let f = fields(b"A: 1\r\nB: 2");
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].value(), "2");
        // A line without a colon, or with a name that is not UTF-8, is skipped: the fields
        // after it are still found, and can be removed.
        let junk = b"A: 1\r\ngarbage\r\n\xff: x\r\nAuthentication-Results: mx.test; dmarc=pass\r\n\r\nbody\r\n";
        let names: Vec<&str> = fields(junk).iter().map(|f| f.name).collect();
        assert_eq!(names, ["A", "Authentication-Results"]);
        assert_eq!(
            without(junk, |f| f.is("Authentication-Results")).unwrap(),
            b"A: 1\r\ngarbage\r\n\xff: x\r\n\r\nbody\r\n"
        );
        // Invalid UTF-8 in a value is replaced, not refused.
        assert_eq!(fields(b"A: \xff\r\n\r\n")[0].value(), "\u{fffd}");
        // A bare LF inside a value is not a line end (the ingress refuses it by default).
        assert_eq!(fields(b"A: x\ny\r\n\r\n")[0].value(), "x\ny");
    }

    #[test]
    fn removing_fields_leaves_the_rest_untouched() {
        let out = without(MESSAGE, |f| f.is("Authentication-Results")).unwrap();
        assert_eq!(
            out,
            b"Received: from a\r\n\tby b; Sat, 28 Nov 2026\r\nSubject: Hello\r\n  world\r\nFrom: x@y\r\n\r\nbody: not a header\r\n"
        );
        assert_eq!(without(MESSAGE, |f| f.is("X-None")), None);
    }

    #[test]
    fn authserv_ids() {
        assert_eq!(authserv_id(" mx.test; spf=pass"), "mx.test");
        assert_eq!(authserv_id("mx.test 1; none"), "mx.test");
        assert_eq!(authserv_id("mx.test (comment); dkim=pass"), "mx.test");
        assert_eq!(authserv_id(""), "");
        // Comments before the identifier, and a quoted identifier (RFC 8601 §2.2).
        assert_eq!(authserv_id("(x) mx.test; dkim=pass"), "mx.test");
        assert_eq!(
            authserv_id(" (a (nested) \\) one)\t mx.test; none"),
            "mx.test"
        );
        assert_eq!(authserv_id("\"mx.test\"; dmarc=pass"), "mx.test");
        assert_eq!(authserv_id("\"mx\\.test\" 1; none"), "mx.test");
        assert_eq!(authserv_id("\"mx.test; none"), "");
        assert_eq!(authserv_id("(never closed mx.test; none"), "");
    }
}
