//! ESMTP parameters of MAIL FROM and RCPT TO (RFC 5321 §4.1.2 `esmtp-param`).

use crate::xtext;

/// BODY= of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME` (RFC 6152).
    EightBitMime,
}

/// RET= of MAIL FROM (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnReturn {
    /// Return the full message in a DSN.
    Full,
    /// Return only the headers.
    Headers,
}

/// The parameters of MAIL FROM this server understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE= (RFC 1870).
    pub size: Option<u64>,
    /// BODY=.
    pub body: Option<BodyType>,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// RET=.
    pub ret: Option<DsnReturn>,
    /// ENVID=, xtext-decoded.
    pub envid: Option<String>,
    /// REQUIRETLS (RFC 8689).
    pub requiretls: bool,
}

/// NOTIFY= of RCPT TO (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// NEVER was given (and nothing else).
    pub never: bool,
    /// SUCCESS.
    pub success: bool,
    /// FAILURE.
    pub failure: bool,
    /// DELAY.
    pub delay: bool,
}

impl std::fmt::Display for DsnReturn {
    /// The value as RET= writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DsnReturn::Full => "FULL",
            DsnReturn::Headers => "HDRS",
        })
    }
}

impl std::fmt::Display for Notify {
    /// The value as NOTIFY= writes it: `NEVER`, or the conditions separated by commas.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.never {
            return f.write_str("NEVER");
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let given: Vec<&str> = words
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect();
        f.write_str(&given.join(","))
    }
}

/// The parameters of RCPT TO this server understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// NOTIFY=.
    pub notify: Option<Notify>,
    /// ORCPT=, xtext-decoded, as `addr-type;address`.
    pub orcpt: Option<String>,
}

/// Why the parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The keyword is not one this server supports (`555 5.5.4`).
    #[error("unsupported parameter {0}")]
    Unsupported(String),
    /// The value is malformed (`501 5.5.4`).
    #[error("invalid value for {0}")]
    Invalid(String),
    /// The same keyword twice (`501 5.5.4`).
    #[error("duplicate parameter {0}")]
    Duplicate(String),
}

/// Splits `KEY[=VALUE] ...` into pairs, the keyword upper-cased.
fn split(params: &str) -> impl Iterator<Item = (String, Option<&str>)> {
    params
        .split_ascii_whitespace()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (p.to_ascii_uppercase(), None),
        })
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), ParamError> {
    if slot.replace(value).is_some() {
        return Err(ParamError::Duplicate(name.into()));
    }
    Ok(())
}

impl MailParams {
    /// Parses the parameter text after the reverse path.
    pub fn parse(text: &str) -> Result<Self, ParamError> {
        let mut out = MailParams::default();
        for (key, value) in split(text) {
            match (key.as_str(), value) {
                ("SIZE", Some(v)) => {
                    let size = v.parse().map_err(|_| ParamError::Invalid("SIZE".into()))?;
                    set_once(&mut out.size, size, "SIZE")?;
                }
                ("BODY", Some(v)) => {
                    let body = match v.to_ascii_uppercase().as_str() {
                        "7BIT" => BodyType::SevenBit,
                        "8BITMIME" => BodyType::EightBitMime,
                        _ => return Err(ParamError::Unsupported(format!("BODY={v}"))),
                    };
                    set_once(&mut out.body, body, "BODY")?;
                }
                ("SMTPUTF8", None) => {
                    if std::mem::replace(&mut out.smtputf8, true) {
                        return Err(ParamError::Duplicate("SMTPUTF8".into()));
                    }
                }
                ("REQUIRETLS", None) => {
                    if std::mem::replace(&mut out.requiretls, true) {
                        return Err(ParamError::Duplicate("REQUIRETLS".into()));
                    }
                }
                ("RET", Some(v)) => {
                    let ret = match v.to_ascii_uppercase().as_str() {
                        "FULL" => DsnReturn::Full,
                        "HDRS" => DsnReturn::Headers,
                        _ => return Err(ParamError::Invalid("RET".into())),
                    };
                    set_once(&mut out.ret, ret, "RET")?;
                }
                ("ENVID", Some(v)) => {
                    let envid =
                        xtext::decode(v).map_err(|_| ParamError::Invalid("ENVID".into()))?;
                    // Graphic US-ASCII only (RFC 3461 §4.4): the value is copied into
                    // notifications, where a decoded CR or LF would add fields.
                    if envid.len() > 100 || !envid.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(ParamError::Invalid("ENVID".into()));
                    }
                    set_once(&mut out.envid, envid, "ENVID")?;
                }
                ("SIZE" | "BODY" | "RET" | "ENVID", None)
                | ("SMTPUTF8" | "REQUIRETLS", Some(_)) => {
                    return Err(ParamError::Invalid(key));
                }
                _ => return Err(ParamError::Unsupported(key)),
            }
        }
        Ok(out)
    }
}

impl RcptParams {
    /// Parses the parameter text after the forward path.
    pub fn parse(text: &str) -> Result<Self, ParamError> {
        let mut out = RcptParams::default();
        for (key, value) in split(text) {
            match (key.as_str(), value) {
                ("NOTIFY", Some(v)) => set_once(&mut out.notify, parse_notify(v)?, "NOTIFY")?,
                ("ORCPT", Some(v)) => {
                    let decoded =
                        xtext::decode(v).map_err(|_| ParamError::Invalid("ORCPT".into()))?;
                    let (kind, addr) = decoded
                        .split_once(';')
                        .ok_or(ParamError::Invalid("ORCPT".into()))?;
                    // No control characters: the value is copied into notifications.
                    if kind.is_empty()
                        || addr.is_empty()
                        || decoded.len() > 500
                        || decoded.chars().any(char::is_control)
                    {
                        return Err(ParamError::Invalid("ORCPT".into()));
                    }
                    set_once(&mut out.orcpt, decoded.clone(), "ORCPT")?;
                }
                ("NOTIFY" | "ORCPT", None) => return Err(ParamError::Invalid(key)),
                _ => return Err(ParamError::Unsupported(key)),
            }
        }
        Ok(out)
    }
}

fn parse_notify(value: &str) -> Result<Notify, ParamError> {
    let mut n = Notify::default();
    for word in value.split(',') {
        match word.to_ascii_uppercase().as_str() {
            "NEVER" => n.never = true,
            "SUCCESS" => n.success = true,
            "FAILURE" => n.failure = true,
            "DELAY" => n.delay = true,
            _ => return Err(ParamError::Invalid("NOTIFY".into())),
        }
    }
    // NEVER must stand alone (RFC 3461 §4.1).
    if n.never && (n.success || n.failure || n.delay) {
        return Err(ParamError::Invalid("NOTIFY".into()));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_params() {
        let p =
            MailParams::parse("size=1000 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=abc+2B1").unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(DsnReturn::Headers));
        assert_eq!(p.envid.as_deref(), Some("abc+1"));
        assert!(MailParams::parse("REQUIRETLS").unwrap().requiretls);
        assert_eq!(MailParams::parse("").unwrap(), MailParams::default());
    }

    #[test]
    fn mail_param_errors() {
        assert_eq!(
            MailParams::parse("SIZE=x"),
            Err(ParamError::Invalid("SIZE".into()))
        );
        assert_eq!(
            MailParams::parse("SIZE"),
            Err(ParamError::Invalid("SIZE".into()))
        );
        assert_eq!(
            MailParams::parse("SIZE=1 SIZE=2"),
            Err(ParamError::Duplicate("SIZE".into()))
        );
        assert_eq!(
            MailParams::parse("XFOO=1"),
            Err(ParamError::Unsupported("XFOO".into()))
        );
        assert!(matches!(
            MailParams::parse("BODY=BINARYMIME"),
            Err(ParamError::Unsupported(_))
        ));
    }

    #[test]
    fn rcpt_params() {
        let p = RcptParams::parse("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@x.test").unwrap();
        let n = p.notify.unwrap();
        assert!(n.success && n.failure && !n.delay && !n.never);
        assert_eq!(p.orcpt.as_deref(), Some("rfc822;a+b@x.test"));
        assert_eq!(
            RcptParams::parse("NOTIFY=NEVER,SUCCESS"),
            Err(ParamError::Invalid("NOTIFY".into()))
        );
        assert_eq!(
            RcptParams::parse("ORCPT=nosemicolon"),
            Err(ParamError::Invalid("ORCPT".into()))
        );
    }

    #[test]
    fn dsn_values_print_as_parsed() {
        for text in ["NEVER", "SUCCESS", "SUCCESS,FAILURE,DELAY", "FAILURE,DELAY"] {
            let notify = RcptParams::parse(&format!("NOTIFY={text}"))
                .unwrap()
                .notify
                .unwrap();
            assert_eq!(notify.to_string(), text);
        }
        assert_eq!(DsnReturn::Full.to_string(), "FULL");
        assert_eq!(DsnReturn::Headers.to_string(), "HDRS");
    }

    /// Decoded values end up in notification fields: control characters there could add
    /// fields of their own.
    #[test]
    fn decoded_values_carry_no_control_characters() {
        for envid in ["x+0D+0AAction:+20delivered", "a+20b", "a+7Fb", "a+00"] {
            assert_eq!(
                MailParams::parse(&format!("ENVID={envid}")),
                Err(ParamError::Invalid("ENVID".into())),
                "{envid}"
            );
        }
        for orcpt in ["rfc822;a@x.test+0AStatus:+205.0.0", "rfc822;a+09@x.test"] {
            assert_eq!(
                RcptParams::parse(&format!("ORCPT={orcpt}")),
                Err(ParamError::Invalid("ORCPT".into())),
                "{orcpt}"
            );
        }
        // UTF-8 addresses stay allowed (RFC 6533).
        let p = RcptParams::parse("ORCPT=utf-8;j+C3+B6rg@x.test").unwrap();
        assert_eq!(p.orcpt.as_deref(), Some("utf-8;jörg@x.test"));
    }
}
