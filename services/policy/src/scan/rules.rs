//! Content rules: mail loops, the header size cap, header rules and refused attachments.
//! Pure decisions over the message, tested without any service.

use mail_parser::{Message, MessageParser, MimeHeaders};
use mailflow_runtime::config::{RuleAction, ScanConfig};

use mailflow_smtp::header::Field;

/// How deep attached messages are opened to look for attachments.
const MAX_NESTING: usize = 5;

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What to do with the message.
    pub action: RuleAction,
    /// Why, for the operator and (when refused) the sender.
    pub reason: String,
}

/// More `Received` fields than `max` means the message is going round in a loop (RFC 5321
/// §6.3); it is quarantined, never bounced (the bounce would loop too).
pub fn mail_loop(fields: &[Field<'_>], max: usize) -> Option<Finding> {
    let received = fields.iter().filter(|f| f.is("Received")).count();
    (received > max).then(|| Finding {
        action: RuleAction::Quarantine,
        reason: format!("mail loop: {received} Received headers (more than {max})"),
    })
}

/// The first content rule `message` breaks, in the order: header size, header rules,
/// attachments.
pub fn check(
    message: &[u8],
    fields: &[Field<'_>],
    header_len: usize,
    config: &ScanConfig,
) -> Option<Finding> {
    if config.max_header_size > 0 && header_len > config.max_header_size {
        return Some(Finding {
            action: config.content_action,
            reason: format!(
                "header section of {header_len} octets is larger than {}",
                config.max_header_size
            ),
        });
    }
    for rule in &config.header_rules {
        if let Some(field) = fields
            .iter()
            .find(|f| f.is(&rule.header) && rule.pattern.0.is_match(&f.value()))
        {
            return Some(Finding {
                action: rule.action,
                reason: format!(
                    "header {} matches the rule {:?}",
                    field.name,
                    rule.pattern.0.as_str()
                ),
            });
        }
    }
    if config.blocked_extensions.is_empty() || !may_carry_files(fields) {
        return None;
    }
    let parsed = MessageParser::new().parse(message)?;
    let reason = match blocked_attachment(&parsed, &config.blocked_extensions, 0)? {
        Blocked::Named(name) => format!("attachment {name:?} has a refused file type"),
        Blocked::TooDeep => {
            format!("attached messages nested more than {MAX_NESTING} deep cannot be checked")
        }
    };
    Some(Finding {
        action: config.content_action,
        reason,
    })
}

/// Why the attachment check refuses a message.
enum Blocked {
    /// A file of a refused type, by name.
    Named(String),
    /// Attached messages nested deeper than it looks.
    TooDeep,
}

/// Whether the message can hold a named file: a multipart or `message/*` body, or a single
/// part whose header names a file. Most mail is a single text part; parsing it as MIME
/// would only cost (a decoded copy of the whole body) and could find nothing.
fn may_carry_files(fields: &[Field<'_>]) -> bool {
    fields.iter().any(|f| {
        (f.is("Content-Type") || f.is("Content-Disposition")) && {
            let value = f.value().trim_start().to_ascii_lowercase();
            value.starts_with("multipart/")
                || value.starts_with("message/")
                || value.contains("name")
        }
    })
}

/// The first part (in attached messages too) named as a file whose extension is in
/// `blocked`. Every part counts, whatever its type or disposition: a mail reader may offer
/// a named text part as a file as readily as an attachment.
fn blocked_attachment(message: &Message<'_>, blocked: &[String], depth: usize) -> Option<Blocked> {
    for part in &message.parts {
        if let Some(name) = part.attachment_name()
            && let Some((_, ext)) = name.trim().trim_end_matches('.').rsplit_once('.')
            && blocked.iter().any(|b| b.eq_ignore_ascii_case(ext))
        {
            return Some(Blocked::Named(name.to_string()));
        }
        if let Some(inner) = part.message() {
            if depth >= MAX_NESTING {
                return Some(Blocked::TooDeep);
            }
            if let Some(found) = blocked_attachment(inner, blocked, depth + 1) {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_runtime::config::{HeaderRule, Pattern};
    use mailflow_smtp::header::{fields, section_len};

    fn run(message: &str, config: &ScanConfig) -> Option<Finding> {
        let m = message.as_bytes();
        check(m, &fields(m), section_len(m), config)
    }

    fn with_attachment(name: &str) -> String {
        format!(
            "From: a@x.test\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n"
        )
    }

    #[test]
    fn loops_are_counted_past_the_limit() {
        let m = "Received: x\r\n".repeat(51) + "\r\nbody\r\n";
        let f = fields(m.as_bytes());
        let finding = mail_loop(&f, 50).unwrap();
        assert_eq!(finding.action, RuleAction::Quarantine);
        assert!(finding.reason.contains("51 Received"));
        assert_eq!(mail_loop(&f, 51), None);
    }

    #[test]
    fn executable_attachments_are_refused_by_default() {
        let config = ScanConfig::default();
        let finding = run(&with_attachment("invoice.PDF.exe"), &config).unwrap();
        assert_eq!(finding.action, RuleAction::Quarantine);
        assert!(finding.reason.contains("invoice.PDF.exe"));
        assert_eq!(run(&with_attachment("invoice.pdf"), &config), None);
        assert_eq!(run(&with_attachment("noextension"), &config), None);
        let none = ScanConfig {
            blocked_extensions: Vec::new(),
            ..ScanConfig::default()
        };
        assert_eq!(run(&with_attachment("x.exe"), &none), None);
    }

    #[test]
    fn only_messages_that_can_hold_files_are_parsed_for_them() {
        let plain =
            "From: a@x.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee x.exe\r\n";
        assert!(!may_carry_files(&fields(plain.as_bytes())));
        assert!(!may_carry_files(&fields(
            b"Subject: no MIME at all\r\n\r\nx.exe\r\n"
        )));
        assert!(may_carry_files(&fields(
            with_attachment("a.pdf").as_bytes()
        )));
        let single = "From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream;\r\n name=\"run.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n";
        assert!(may_carry_files(&fields(single.as_bytes())));
        let finding = run(single, &ScanConfig::default()).unwrap();
        assert!(finding.reason.contains("run.exe"), "{finding:?}");
    }

    #[test]
    fn attachments_inside_attached_messages_are_found() {
        let inner = with_attachment("tool.scr");
        let outer = format!(
            "From: b@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--o--\r\n"
        );
        let finding = run(&outer, &ScanConfig::default()).unwrap();
        assert!(finding.reason.contains("tool.scr"));
    }

    /// A named part is checked whatever its type or disposition: inline text, an
    /// alternative, or the only part of the message.
    #[test]
    fn named_text_parts_are_checked_too() {
        let config = ScanConfig::default();
        let alternative = "From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: text/html; name=\"run.hta\"\r\n\r\n<p>hi</p>\r\n--b--\r\n";
        let finding = run(alternative, &config).unwrap();
        assert!(finding.reason.contains("run.hta"), "{}", finding.reason);
        let single = "From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; name=\"start.vbs\"\r\n\r\nMsgBox 1\r\n";
        let finding = run(single, &config).unwrap();
        assert!(finding.reason.contains("start.vbs"), "{}", finding.reason);
        let harmless = "From: a@x.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\r\nhello\r\n";
        assert_eq!(run(harmless, &config), None);
    }

    /// Attached messages nested past the depth looked into are refused as unchecked.
    #[test]
    fn messages_nested_too_deep_are_not_let_through_unchecked() {
        let nested = |levels: usize| {
            let mut message = with_attachment("notes.txt");
            for level in 0..levels {
                message = format!(
                    "From: b@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o{level}\"\r\n\r\n--o{level}\r\nContent-Type: message/rfc822\r\n\r\n{message}\r\n--o{level}--\r\n"
                );
            }
            message
        };
        assert_eq!(run(&nested(MAX_NESTING), &ScanConfig::default()), None);
        let finding = run(&nested(MAX_NESTING + 1), &ScanConfig::default()).unwrap();
        assert!(finding.reason.contains("nested"), "{}", finding.reason);
    }

    #[test]
    fn header_rules_and_size() {
        let config = ScanConfig {
            header_rules: vec![HeaderRule {
                header: "subject".into(),
                pattern: Pattern(regex::Regex::new("(?i)cheap pills").unwrap()),
                action: RuleAction::Reject,
            }],
            max_header_size: 100,
            ..ScanConfig::default()
        };
        let spam = run("Subject: CHEAP\r\n pills now\r\n\r\nx\r\n", &config).unwrap();
        assert_eq!(spam.action, RuleAction::Reject);
        assert!(spam.reason.contains("Subject"));
        assert_eq!(run("Subject: hello\r\n\r\nx\r\n", &config), None);
        let big = format!("X-Pad: {}\r\n\r\nx\r\n", "a".repeat(200));
        let finding = run(&big, &config).unwrap();
        assert_eq!(finding.action, RuleAction::Quarantine);
        assert!(finding.reason.contains("larger than 100"));
    }
}
