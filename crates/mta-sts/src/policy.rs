//! The policy file (RFC 8461 §3.2) and the MX names it allows (§4.1).

use std::time::Duration;

/// The longest `max_age` honoured (§3.2: 31557600 seconds, about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What the domain asks senders to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to a listed MX over TLS with a valid certificate; otherwise defer.
    Enforce,
    /// Deliver anyway, and report failures (TLSRPT).
    Testing,
    /// No policy (used to withdraw one).
    None,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: Mode,
    /// The allowed MX names: exact names or `*.` wildcards, lower case, no final dot.
    pub mx: Vec<String>,
    /// How long the policy may be cached.
    pub max_age: Duration,
}

/// Why a policy file is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `version` is missing or not `STSv1`.
    #[error("policy version is not STSv1")]
    Version,
    /// `mode` is missing or unknown.
    #[error("policy mode is missing or unknown")]
    Mode,
    /// `max_age` is missing or not a number.
    #[error("policy max_age is missing or invalid")]
    MaxAge,
    /// A mode other than `none` without any `mx`.
    #[error("policy lists no mx")]
    NoMx,
}

/// A host name as compared: lower case, without the root's dot.
fn normal(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl Policy {
    /// Parses a policy file: `key: value` lines ending in CRLF or LF (§3.2). Unknown keys
    /// are ignored; `max_age` is capped at [`MAX_AGE_LIMIT`].
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim_matches([' ', '\t', '\r']);
            match key.trim() {
                "version" => version = Some(value == "STSv1"),
                "mode" => {
                    mode = match value {
                        "enforce" => Some(Mode::Enforce),
                        "testing" => Some(Mode::Testing),
                        "none" => Some(Mode::None),
                        _ => return Err(PolicyError::Mode),
                    }
                }
                "max_age" => {
                    let secs: u64 = value.parse().map_err(|_| PolicyError::MaxAge)?;
                    max_age = Some(Duration::from_secs(secs.min(MAX_AGE_LIMIT)));
                }
                "mx" if !value.is_empty() => mx.push(normal(value)),
                _ => {}
            }
        }
        if version != Some(true) {
            return Err(PolicyError::Version);
        }
        let mode = mode.ok_or(PolicyError::Mode)?;
        let max_age = max_age.ok_or(PolicyError::MaxAge)?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx);
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// True when `host` (an MX name) is allowed: equal to a listed name, or one label
    /// below a `*.` pattern (`*.example.com` allows `mx.example.com`, not
    /// `a.b.example.com` nor `example.com`).
    pub fn allows(&self, host: &str) -> bool {
        let host = normal(host);
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com.\r\nmax_age: 604800\r\n";

    #[test]
    fn the_rfc_example_parses() {
        let p = Policy::parse(POLICY).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, Duration::from_secs(604_800));
        assert_eq!(p.mx.len(), 3);
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.example.com."));
        assert!(p.allows("backupmx.example.com"));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("a.b.example.net"));
        assert!(!p.allows("example.net"));
        assert!(!p.allows(".example.net"));
        assert!(!p.allows("evil.example.com"));
    }

    #[test]
    fn invalid_policies_say_why() {
        assert_eq!(
            Policy::parse("mode: enforce\nmx: a\nmax_age: 1\n"),
            Err(PolicyError::Version)
        );
        assert_eq!(
            Policy::parse("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n"),
            Err(PolicyError::Version)
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n"),
            Err(PolicyError::Mode)
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: enforce\nmx: a\n"),
            Err(PolicyError::MaxAge)
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n"),
            Err(PolicyError::MaxAge)
        );
        assert_eq!(
            Policy::parse("version: STSv1\nmode: testing\nmax_age: 1\n"),
            Err(PolicyError::NoMx)
        );
        let none = Policy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n").unwrap();
        assert_eq!(none.max_age, Duration::from_secs(MAX_AGE_LIMIT));
        assert!(Policy::parse("").is_err());
    }
}
