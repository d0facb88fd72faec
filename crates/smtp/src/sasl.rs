//! SASL for SMTP AUTH (RFC 4954): the PLAIN (RFC 4616) and LOGIN mechanisms, sans-IO.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A supported mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN`: one message `authzid NUL authcid NUL password`.
    Plain,
    /// `LOGIN`: the user name, then the password, each in answer to a prompt.
    Login,
}

impl Mechanism {
    /// Parses a mechanism name, case-insensitively.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    /// The name as advertised.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// Credentials extracted from an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (the user name).
    pub username: String,
    /// The password.
    pub password: String,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4).
    #[error("authentication cancelled")]
    Cancelled,
    /// Not base64, not UTF-8, or not the mechanism's format.
    #[error("malformed authentication data")]
    Malformed,
    /// PLAIN with an authorization identity other than the user.
    #[error("authorization identity differs from the user")]
    AuthzidMismatch,
}

/// Decodes one client response line (base64, or `*` to cancel).
pub fn decode_response(line: &str) -> Result<String, SaslError> {
    let line = line.trim();
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    // RFC 4954: "=" stands for an empty initial response.
    if line == "=" {
        return Ok(String::new());
    }
    let bytes = STANDARD.decode(line).map_err(|_| SaslError::Malformed)?;
    String::from_utf8(bytes).map_err(|_| SaslError::Malformed)
}

/// Parses a decoded PLAIN message.
pub fn parse_plain(message: &str) -> Result<Credentials, SaslError> {
    let mut parts = message.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        username: authcid.to_string(),
        password: password.to_string(),
    })
}

/// Encodes a server challenge for a `334` reply.
pub fn encode_challenge(text: &str) -> String {
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        let line = STANDARD.encode("\0demo@example.test\0demo");
        let msg = decode_response(&line).unwrap();
        assert_eq!(
            parse_plain(&msg).unwrap(),
            Credentials {
                username: "demo@example.test".into(),
                password: "demo".into()
            }
        );
        let same = STANDARD.encode("demo@example.test\0demo@example.test\0pw");
        assert!(parse_plain(&decode_response(&same).unwrap()).is_ok());
        let other = STANDARD.encode("boss@example.test\0demo@example.test\0pw");
        assert_eq!(
            parse_plain(&decode_response(&other).unwrap()),
            Err(SaslError::AuthzidMismatch)
        );
    }

    #[test]
    fn malformed_and_cancelled() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("%%%"), Err(SaslError::Malformed));
        assert_eq!(decode_response("="), Ok(String::new()));
        assert_eq!(parse_plain("no separators"), Err(SaslError::Malformed));
        assert_eq!(parse_plain("\0user\0"), Err(SaslError::Malformed));
        assert_eq!(parse_plain("a\0b\0c\0d"), Err(SaslError::Malformed));
    }

    #[test]
    fn mechanisms() {
        assert_eq!(Mechanism::parse("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::parse("LOGIN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::parse("CRAM-MD5"), None);
        assert_eq!(encode_challenge("Username:"), "VXNlcm5hbWU6");
    }
}
