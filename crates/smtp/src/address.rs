//! Forward and reverse paths (RFC 5321 §4.1.2), with RFC 6531 UTF-8 where allowed.

use std::fmt;

/// A mailbox: `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part as written by the client (a quoted string keeps its quotes).
    pub local: String,
    /// The domain, lower-cased; an address literal keeps its brackets.
    pub domain: String,
}

impl Mailbox {
    /// True when both parts are ASCII (no SMTPUTF8 needed).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// True when the local part is a quoted string.
    pub fn is_quoted(&self) -> bool {
        self.local.starts_with('"')
    }

    /// The local part without quotes it does not need: `"a.b"` is the mailbox `a.b` (RFC
    /// 5321 §4.1.2: a quoted string whose content is a dot-string means that dot-string).
    /// A local part that needs its quotes is returned as written.
    pub fn plain_local(&self) -> std::borrow::Cow<'_, str> {
        let Some(inner) = self
            .local
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix('"'))
        else {
            return self.local.as_str().into();
        };
        let mut unquoted = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            unquoted.extend(if c == '\\' { chars.next() } else { Some(c) });
        }
        if is_dot_string(&unquoted) {
            unquoted.into()
        } else {
            self.local.as_str().into()
        }
    }

    /// True when the domain is an address literal such as `[192.0.2.1]`.
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// A reverse or forward path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `<>`, the null reverse path of bounces.
    Null,
    /// A mailbox. A source route, if the client gave one, has been dropped (RFC 5321 §C).
    Mailbox(Mailbox),
}

impl Path {
    /// The address as text; empty for the null path.
    pub fn address(&self) -> String {
        match self {
            Path::Null => String::new(),
            Path::Mailbox(m) => m.to_string(),
        }
    }
}

/// The forward path of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// A mailbox.
    Mailbox(Mailbox),
    /// `<Postmaster>` without a domain, which every server must accept (RFC 5321 §4.5.1):
    /// its own postmaster.
    Postmaster,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The text is not a path.
    #[error("syntax error in address")]
    Syntax,
    /// The local part exceeds 64 octets or the domain 255 (RFC 5321 §4.5.3.1).
    #[error("address too long")]
    TooLong,
    /// The path is empty where a mailbox is required.
    #[error("empty address")]
    Empty,
}

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;

/// Splits `<path> params` into the parsed path and the parameter text.
///
/// UTF-8 (RFC 6531) is parsed here; the session decides whether the client was entitled to
/// it. Like Postfix, a path without angle brackets is accepted.
pub fn parse_path(input: &str) -> Result<(Path, &str), PathError> {
    let input = input.trim_start();
    let (inner, rest) = if let Some(stripped) = input.strip_prefix('<') {
        let end = find_closing_bracket(stripped).ok_or(PathError::Syntax)?;
        (&stripped[..end], &stripped[end + 1..])
    } else {
        match input.find(' ') {
            Some(sp) => (&input[..sp], &input[sp..]),
            None => (input, ""),
        }
    };
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(PathError::Syntax);
    }
    if inner.is_empty() {
        return if input.starts_with('<') {
            Ok((Path::Null, rest.trim_start()))
        } else {
            Err(PathError::Empty)
        };
    }
    let mailbox_text = strip_source_route(inner)?;
    Ok((
        Path::Mailbox(parse_mailbox(mailbox_text)?),
        rest.trim_start(),
    ))
}

/// Finds the `>` that closes the path, skipping quoted strings.
fn find_closing_bracket(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// Drops an `@a,@b:` source route, checking that it is well formed.
fn strip_source_route(inner: &str) -> Result<&str, PathError> {
    if !inner.starts_with('@') {
        return Ok(inner);
    }
    let colon = inner.find(':').ok_or(PathError::Syntax)?;
    for hop in inner[..colon].split(',') {
        let domain = hop.strip_prefix('@').ok_or(PathError::Syntax)?;
        if !is_domain(domain) {
            return Err(PathError::Syntax);
        }
    }
    Ok(&inner[colon + 1..])
}

/// Parses `local@domain`.
pub fn parse_mailbox(text: &str) -> Result<Mailbox, PathError> {
    let at = if text.starts_with('"') {
        let close = quoted_string_end(text).ok_or(PathError::Syntax)?;
        if text.as_bytes().get(close + 1) != Some(&b'@') {
            return Err(PathError::Syntax);
        }
        close + 1
    } else {
        let at = text.rfind('@').ok_or(PathError::Syntax)?;
        if !is_dot_string(&text[..at]) {
            return Err(PathError::Syntax);
        }
        at
    };
    let (local, domain) = (&text[..at], &text[at + 1..]);
    if local.len() > MAX_LOCAL + 2 * usize::from(local.starts_with('"'))
        || domain.len() > MAX_DOMAIN
    {
        return Err(PathError::TooLong);
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err(PathError::Syntax);
    }
    Ok(Mailbox {
        local: local.to_string(),
        domain: domain.to_lowercase(),
    })
}

/// Index of the closing quote of a quoted string starting at 0.
fn quoted_string_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        if escaped {
            if !(' '..='~').contains(&c) {
                return None;
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => return Some(i),
            c if c.is_ascii_control() => return None,
            _ => {}
        }
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A host name: labels of letters, digits and hyphens (or UTF-8 U-labels), not starting or
/// ending with a hyphen.
pub fn is_domain(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    inner.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(input: &str) -> Mailbox {
        match parse_path(input).unwrap().0 {
            Path::Mailbox(m) => m,
            Path::Null => panic!("null path"),
        }
    }

    #[test]
    fn parses_plain_null_and_params() {
        let (path, rest) = parse_path("<User@Example.TEST> SIZE=10 BODY=8BITMIME").unwrap();
        assert_eq!(path.address(), "User@example.test");
        assert_eq!(rest, "SIZE=10 BODY=8BITMIME");
        assert_eq!(parse_path("<>").unwrap(), (Path::Null, ""));
        assert_eq!(parse_path("<> SIZE=5").unwrap(), (Path::Null, "SIZE=5"));
    }

    #[test]
    fn accepts_missing_brackets_like_postfix() {
        assert_eq!(mailbox("a@b.test").to_string(), "a@b.test");
    }

    #[test]
    fn drops_source_route() {
        let m = mailbox("<@relay.one,@relay.two:user@final.test>");
        assert_eq!(m.to_string(), "user@final.test");
        assert_eq!(parse_path("<@bad domain:u@d.test>"), Err(PathError::Syntax));
    }

    #[test]
    fn quoted_local_part_keeps_quotes_and_at_sign() {
        let m = mailbox(r#"<"a@b\"c"@example.test>"#);
        assert_eq!(m.local, r#""a@b\"c""#);
        assert!(m.is_quoted());
        assert_eq!(m.domain, "example.test");
        // Quotes that are needed stay; needless ones go.
        assert_eq!(m.plain_local(), r#""a@b\"c""#);
        assert_eq!(mailbox(r#"<"a.b"@x.test>"#).plain_local(), "a.b");
        assert_eq!(mailbox(r#"<"\a"@x.test>"#).plain_local(), "a");
        assert_eq!(mailbox(r#"<"a b"@x.test>"#).plain_local(), r#""a b""#);
        assert_eq!(mailbox("<plain@x.test>").plain_local(), "plain");
    }

    #[test]
    fn address_literals() {
        assert!(mailbox("<u@[192.0.2.1]>").is_address_literal());
        assert!(mailbox("<u@[IPv6:2001:db8::1]>").is_address_literal());
        assert_eq!(parse_path("<u@[300.1.1.1]>"), Err(PathError::Syntax));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "<user>",
            "<@x.test>",
            "<a..b@x.test>",
            "<.a@x.test>",
            "<a@-x.test>",
            "<a@x..test>",
            "<a b@x.test>",
            "<a@x.test",
            "<a@x.test>junk",
            "<\"unterminated@x.test>",
        ] {
            assert!(parse_path(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(parse_path(""), Err(PathError::Empty));
    }

    #[test]
    fn length_limits() {
        let long_local = format!("<{}@x.test>", "a".repeat(65));
        assert_eq!(parse_path(&long_local), Err(PathError::TooLong));
        let ok_local = format!("<{}@x.test>", "a".repeat(64));
        assert!(parse_path(&ok_local).is_ok());
    }

    #[test]
    fn utf8_addresses_are_recognised() {
        let m = mailbox("<jöran@exämple.test>");
        assert!(!m.is_ascii());
    }
}
