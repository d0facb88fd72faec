//! Transports: how mail for a domain leaves (`mx`, `smtp:[host]:port`, `lmtp:host:port`,
//! `maildir:path`), as written in `[relay.transports]` and in the directory.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// How mail for one domain is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// To the domain's mail exchangers (RFC 5321 §5.1): the default for remote domains.
    Mx,
    /// To one SMTP server, without an MX lookup (`smtp:[host]:port`, the brackets optional;
    /// port 25 when left out). The relay's smarthost credentials, when configured, are used
    /// with it (over TLS only).
    Smtp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// To an LMTP server (RFC 2033), for example Dovecot (`lmtp:host:port`, port 24 when
    /// left out).
    Lmtp {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Into Maildirs under this directory (`<path>/<domain>/<user>/`): the default for local
    /// domains, under `relay.maildir_root`.
    Maildir(PathBuf),
}

/// Why a transport does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid transport {text:?}: {reason} (expected mx, smtp:[host]:port, lmtp:host:port or maildir:/path)"
)]
pub struct TransportError {
    /// What was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// `host:port`, `[host]:port`, `[ipv6]:port`, or a host alone (`default` port).
fn host_port(text: &str, default: u16) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed [")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("junk after ]")?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (text, None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err("no host");
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("bad port")?,
    };
    Ok((host.to_string(), port))
}

impl FromStr for Transport {
    type Err = TransportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| TransportError {
            text: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("mx") {
            return Ok(Transport::Mx);
        }
        let (kind, rest) = trimmed.split_once(':').ok_or_else(|| err("no kind"))?;
        match kind.to_ascii_lowercase().as_str() {
            "smtp" => host_port(rest, 25)
                .map(|(host, port)| Transport::Smtp { host, port })
                .map_err(err),
            "lmtp" => host_port(rest, 24)
                .map(|(host, port)| Transport::Lmtp { host, port })
                .map_err(err),
            "maildir" if rest.starts_with('/') => Ok(Transport::Maildir(PathBuf::from(rest))),
            "maildir" => Err(err("the Maildir root must be an absolute path")),
            _ => Err(err("unknown kind")),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Mx => f.write_str("mx"),
            Transport::Smtp { host, port } => write!(f, "smtp:[{host}]:{port}"),
            Transport::Lmtp { host, port } => write!(f, "lmtp:[{host}]:{port}"),
            Transport::Maildir(path) => write!(f, "maildir:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for Transport {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Transport {
    /// The address to connect to, for the SMTP and LMTP transports.
    pub fn endpoint(&self) -> Option<String> {
        match self {
            Transport::Smtp { host, port } | Transport::Lmtp { host, port } => {
                Some(if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                })
            }
            Transport::Mx | Transport::Maildir(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Transport, &'static str> {
        text.parse::<Transport>().map_err(|e| e.reason)
    }

    #[test]
    fn every_kind_parses_and_prints_back() {
        assert_eq!(parse("mx"), Ok(Transport::Mx));
        let smtp = parse("smtp:[relay.example.com]:587").unwrap();
        assert_eq!(
            smtp,
            Transport::Smtp {
                host: "relay.example.com".into(),
                port: 587
            }
        );
        assert_eq!(smtp.endpoint().unwrap(), "relay.example.com:587");
        assert_eq!(parse(&smtp.to_string()), Ok(smtp));
        assert_eq!(
            parse("smtp:mail.example.com"),
            Ok(Transport::Smtp {
                host: "mail.example.com".into(),
                port: 25
            })
        );
        let lmtp = parse("LMTP:127.0.0.1:2424").unwrap();
        assert_eq!(lmtp.endpoint().unwrap(), "127.0.0.1:2424");
        assert_eq!(parse("lmtp:[::1]").unwrap().endpoint().unwrap(), "[::1]:24");
        assert_eq!(
            parse("maildir:/var/mail"),
            Ok(Transport::Maildir("/var/mail".into()))
        );
    }

    #[test]
    fn bad_transports_say_why() {
        assert_eq!(parse("smtp:"), Err("no host"));
        assert_eq!(parse("smtp:host:0"), Err("bad port"));
        assert_eq!(parse("smtp:host:x"), Err("bad port"));
        assert_eq!(parse("smtp:[host"), Err("unclosed ["));
        assert_eq!(parse("smtp:[host]x"), Err("junk after ]"));
        assert_eq!(
            parse("maildir:relative"),
            Err("the Maildir root must be an absolute path")
        );
        assert_eq!(parse("uucp:host"), Err("unknown kind"));
        assert_eq!(parse("nonsense"), Err("no kind"));
        let message = "ftp:x".parse::<Transport>().unwrap_err().to_string();
        assert!(message.contains("expected mx, smtp:[host]:port"));
    }
}
