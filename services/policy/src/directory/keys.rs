//! KV keys of the directory bucket.
//!
//! Keys are `domain.<domain>`, `user.<domain>.<local part>`, `alias.<domain>.<local part>`,
//! `catchall.<domain>` and `dkim.<domain>`, lower-cased, with every octet outside `[A-Za-z0-9_-]` written as
//! `=XX` (NATS keys allow only a few characters, and the dot separates tokens).

use mailflow_bus::key_token as token;

/// What one key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A local domain.
    Domain(String),
    /// A user: (domain, local part).
    User(String, String),
    /// An alias: (domain, local part); an empty local part is the domain's catch-all.
    Alias(String, String),
    /// The DKIM signing key of a domain.
    Dkim(String),
}

impl Key {
    /// The KV key.
    pub fn encode(&self) -> String {
        match self {
            Key::Domain(d) => format!("domain.{}", token(d)),
            Key::User(d, l) => format!("user.{}.{}", token(d), token(l)),
            Key::Alias(d, l) if l.is_empty() => format!("catchall.{}", token(d)),
            Key::Alias(d, l) => format!("alias.{}.{}", token(d), token(l)),
            Key::Dkim(d) => format!("dkim.{}", token(d)),
        }
    }

    /// Reads a KV key; `None` for keys this version does not know.
    pub fn decode(key: &str) -> Option<Key> {
        let (kind, rest) = key.split_once('.')?;
        let pair = || {
            let (d, l) = rest.split_once('.')?;
            Some((untoken(d), untoken(l)))
        };
        match kind {
            "domain" => Some(Key::Domain(untoken(rest))),
            "catchall" => Some(Key::Alias(untoken(rest), String::new())),
            "dkim" => Some(Key::Dkim(untoken(rest))),
            "user" => pair().map(|(d, l)| Key::User(d, l)),
            "alias" => pair().map(|(d, l)| Key::Alias(d, l)),
            _ => None,
        }
    }
}

/// Decodes one key token.
fn untoken(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_nats_tokens_and_decode_back() {
        assert_eq!(
            Key::Domain("Example.TEST".into()).encode(),
            "domain.example=2Etest"
        );
        let user = Key::User("example.test".into(), "first.last+tag".into());
        assert_eq!(user.encode(), "user.example=2Etest.first=2Elast=2Btag");
        assert_eq!(Key::decode(&user.encode()), Some(user));
        let quoted = Key::Alias("x.test".into(), "\"a b\"".into());
        let key = quoted.encode();
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b))
        );
        assert_eq!(Key::decode(&key), Some(quoted));
        assert_eq!(untoken(&token("Jöran@x")), "jöran@x");
    }

    #[test]
    fn catch_all_has_its_own_key() {
        let all = Key::Alias("x.test".into(), String::new());
        assert_eq!(all.encode(), "catchall.x=2Etest");
        assert_eq!(Key::decode("catchall.x=2Etest"), Some(all));
        // A local part spelled like a marker is still an ordinary alias.
        let star = Key::Alias("x.test".into(), "*".into());
        assert_eq!(Key::decode(&star.encode()), Some(star));
        assert_eq!(Key::decode("other.thing"), None);
        let dkim = Key::Dkim("X.test".into());
        assert_eq!(dkim.encode(), "dkim.x=2Etest");
        assert_eq!(
            Key::decode("dkim.x=2Etest"),
            Some(Key::Dkim("x.test".into()))
        );
        assert_eq!(Key::decode("user.onlydomain"), None);
    }
}
