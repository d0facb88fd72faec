//! SMTP commands (RFC 5321 §4.1): parsing one command line into a typed [`Command`].

use crate::address::{self, ForwardPath, Path, PathError};
use crate::params::{MailParams, ParamError, RcptParams};
use crate::reply::{EnhancedCode, Reply};

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail {
        /// The reverse path.
        from: Path,
        /// Its parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> [params]`.
    Rcpt {
        /// The forward path.
        to: ForwardPath,
        /// Its parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy,
    /// `HELP [string]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954), raw arguments.
    Auth(String),
    /// `BDAT size [LAST]` (RFC 3030), raw arguments.
    Bdat(String),
}

/// Why a command line was refused; [`CommandError::reply`] gives the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The line holds NUL, other controls or invalid UTF-8.
    #[error("invalid characters in command")]
    BadEncoding,
    /// The verb is unknown.
    #[error("command not recognized")]
    Unrecognized,
    /// The verb is known but not implemented (EXPN, TURN, ...).
    #[error("command not implemented")]
    NotImplemented,
    /// The arguments do not match the verb's syntax; holds the expected syntax.
    #[error("syntax: {0}")]
    Syntax(&'static str),
    /// The address does not parse; `sender` tells MAIL from RCPT.
    #[error("bad address: {error}")]
    Address {
        /// What was wrong.
        error: PathError,
        /// True for MAIL FROM.
        sender: bool,
    },
    /// An ESMTP parameter was refused.
    #[error(transparent)]
    Param(#[from] ParamError),
}

impl CommandError {
    /// The SMTP reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::BadEncoding => Reply::new(
                501,
                EnhancedCode::new(5, 5, 2),
                "Invalid characters in command",
            ),
            CommandError::Unrecognized => Reply::new(
                500,
                EnhancedCode::new(5, 5, 2),
                "Error: command not recognized",
            ),
            CommandError::NotImplemented => Reply::new(
                502,
                EnhancedCode::new(5, 5, 1),
                "Error: command not implemented",
            ),
            CommandError::Syntax(usage) => {
                Reply::new(501, EnhancedCode::new(5, 5, 4), format!("Syntax: {usage}"))
            }
            CommandError::Address { error, sender } => {
                let who = if *sender { "sender" } else { "recipient" };
                let (code, enh) = match error {
                    PathError::TooLong => (501, EnhancedCode::new(5, 1, 3)),
                    PathError::Syntax | PathError::Empty => (501, EnhancedCode::new(5, 1, 3)),
                };
                let detail = match error {
                    PathError::TooLong => "address too long",
                    _ => "address syntax",
                };
                Reply::new(code, enh, format!("Bad {who} {detail}"))
            }
            CommandError::Param(ParamError::Unsupported(p)) => Reply::new(
                555,
                EnhancedCode::new(5, 5, 4),
                format!("Unsupported option: {p}"),
            ),
            CommandError::Param(e) => Reply::new(
                501,
                EnhancedCode::new(5, 5, 4),
                format!("Bad parameter: {e}"),
            ),
        }
    }
}

impl Command {
    /// Parses one command line (without its CRLF).
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let line = std::str::from_utf8(line).map_err(|_| CommandError::BadEncoding)?;
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(CommandError::BadEncoding);
        }
        let line = line.trim_end_matches([' ', '\t']);
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim_start()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => domain_arg(args, "EHLO hostname").map(Command::Ehlo),
            "HELO" => domain_arg(args, "HELO hostname").map(Command::Helo),
            "MAIL" => {
                let rest = strip_keyword(args, "FROM:")
                    .ok_or(CommandError::Syntax("MAIL FROM:<address>"))?;
                let (from, params) =
                    address::parse_path(rest).map_err(|error| CommandError::Address {
                        error,
                        sender: true,
                    })?;
                Ok(Command::Mail {
                    from,
                    params: MailParams::parse(params)?,
                })
            }
            "RCPT" => {
                let rest =
                    strip_keyword(args, "TO:").ok_or(CommandError::Syntax("RCPT TO:<address>"))?;
                // RFC 5321 §4.1.1.3: "<Postmaster>", any case, names the server's own.
                let trimmed = rest.trim_start();
                if trimmed.len() >= 12
                    && trimmed.is_char_boundary(12)
                    && trimmed[..12].eq_ignore_ascii_case("<postmaster>")
                    && (trimmed.len() == 12 || trimmed[12..].starts_with(' '))
                {
                    return Ok(Command::Rcpt {
                        to: ForwardPath::Postmaster,
                        params: RcptParams::parse(trimmed[12..].trim_start())?,
                    });
                }
                let (to, params) =
                    address::parse_path(rest).map_err(|error| CommandError::Address {
                        error,
                        sender: false,
                    })?;
                let Path::Mailbox(to) = to else {
                    return Err(CommandError::Address {
                        error: PathError::Empty,
                        sender: false,
                    });
                };
                Ok(Command::Rcpt {
                    to: ForwardPath::Mailbox(to),
                    params: RcptParams::parse(params)?,
                })
            }
            "DATA" => no_args(args, "DATA", Command::Data),
            "RSET" => no_args(args, "RSET", Command::Rset),
            "QUIT" => no_args(args, "QUIT", Command::Quit),
            "STARTTLS" => no_args(args, "STARTTLS", Command::StartTls),
            "NOOP" => Ok(Command::Noop),
            "HELP" => Ok(Command::Help),
            "VRFY" if args.is_empty() => Err(CommandError::Syntax("VRFY address")),
            "VRFY" => Ok(Command::Vrfy),
            "AUTH" => Ok(Command::Auth(args.to_string())),
            "BDAT" => Ok(Command::Bdat(args.to_string())),
            "EXPN" | "TURN" | "ETRN" | "SEND" | "SOML" | "SAML" => {
                Err(CommandError::NotImplemented)
            }
            _ => Err(CommandError::Unrecognized),
        }
    }
}

fn domain_arg(args: &str, usage: &'static str) -> Result<String, CommandError> {
    let arg = args.split_ascii_whitespace().next().unwrap_or("");
    if arg.is_empty() {
        return Err(CommandError::Syntax(usage));
    }
    Ok(arg.to_string())
}

fn no_args(args: &str, usage: &'static str, cmd: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(usage))
    }
}

/// Strips `FROM:` / `TO:` case-insensitively, tolerating spaces after the colon as Postfix does.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    #[test]
    fn simple_verbs_case_insensitive() {
        assert_eq!(
            parse("ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(parse("HELO x"), Ok(Command::Helo("x".into())));
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse("quit"), Ok(Command::Quit));
        assert_eq!(parse("RSET"), Ok(Command::Rset));
    }

    #[test]
    fn mail_and_rcpt() {
        let Ok(Command::Mail { from, params }) = parse("MAIL FROM:<a@b.test> SIZE=12") else {
            panic!("mail did not parse");
        };
        assert_eq!(from.address(), "a@b.test");
        assert_eq!(params.size, Some(12));
        assert!(matches!(
            parse("mail from: <>"),
            Ok(Command::Mail {
                from: Path::Null,
                ..
            })
        ));
        let Ok(Command::Rcpt {
            to: ForwardPath::Mailbox(to),
            ..
        }) = parse("RCPT TO:<u@d.test> NOTIFY=NEVER")
        else {
            panic!("rcpt did not parse");
        };
        assert_eq!(to.to_string(), "u@d.test");
    }

    #[test]
    fn postmaster_without_a_domain_is_a_forward_path() {
        for line in [
            "RCPT TO:<Postmaster>",
            "rcpt to:<POSTMASTER>",
            "RCPT TO: <postmaster> NOTIFY=NEVER",
        ] {
            assert!(
                matches!(
                    parse(line),
                    Ok(Command::Rcpt {
                        to: ForwardPath::Postmaster,
                        ..
                    })
                ),
                "{line}"
            );
        }
        assert!(matches!(
            parse("RCPT TO:<postmaster@d.test>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Mailbox(_),
                ..
            })
        ));
        assert_eq!(
            parse("RCPT TO:<postmasterx>").unwrap_err().reply().code,
            501
        );
        assert_eq!(
            parse("RCPT TO:<postmaster>x").unwrap_err().reply().code,
            501
        );
    }

    #[test]
    fn errors_map_to_replies() {
        assert_eq!(parse("EHLO").unwrap_err().reply().code, 501);
        assert_eq!(parse("FOO").unwrap_err().reply().code, 500);
        assert_eq!(parse("EXPN list").unwrap_err().reply().code, 502);
        assert_eq!(parse("MAIL <a@b.test>").unwrap_err().reply().code, 501);
        assert_eq!(parse("RCPT TO:<>").unwrap_err().reply().code, 501);
        assert_eq!(
            parse("MAIL FROM:<a@b.test> XFOO").unwrap_err().reply().code,
            555
        );
        assert_eq!(parse("DATA now").unwrap_err().reply().code, 501);
        let reply = parse("MAIL FROM:<bad address@x>").unwrap_err().reply();
        assert_eq!(
            (reply.code, reply.enhanced.unwrap().to_string()),
            (501, "5.1.3".into())
        );
    }

    #[test]
    fn nul_and_invalid_utf8_are_refused() {
        assert_eq!(Command::parse(b"NOOP \0"), Err(CommandError::BadEncoding));
        assert_eq!(
            Command::parse(b"HELO \xff\xfe"),
            Err(CommandError::BadEncoding)
        );
        assert_eq!(Command::parse(b"NOOP \0").unwrap_err().reply().code, 501);
    }
}
