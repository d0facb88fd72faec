//! xtext (RFC 3461 §4): the encoding of ENVID= and ORCPT= values.

/// Why an xtext value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid xtext")]
pub struct XtextError;

/// Decodes `+XX` hex escapes; every other octet must be printable ASCII other than `+` and `=`.
pub fn decode(input: &str) -> Result<String, XtextError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(XtextError)?;
                let hex = std::str::from_utf8(hex).map_err(|_| XtextError)?;
                if !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                {
                    return Err(XtextError);
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| XtextError)?);
                i += 3;
            }
            b'!'..=b'~' if bytes[i] != b'=' => {
                out.push(bytes[i]);
                i += 1;
            }
            _ => return Err(XtextError),
        }
    }
    String::from_utf8(out).map_err(|_| XtextError)
}

/// Encodes a value as xtext, escaping `+`, `=` and anything outside printable ASCII.
pub fn encode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let raw = "rfc822;a+b=c@example.test";
        let enc = encode(raw);
        assert_eq!(enc, "rfc822;a+2Bb+3Dc@example.test");
        assert_eq!(decode(&enc).unwrap(), raw);
    }

    #[test]
    fn rejects_bad_escapes() {
        assert_eq!(decode("a+2"), Err(XtextError));
        assert_eq!(decode("a+zz"), Err(XtextError));
        assert_eq!(decode("a=b"), Err(XtextError));
        assert_eq!(decode("a b"), Err(XtextError));
        assert_eq!(decode("a+2b"), Err(XtextError));
    }
}
