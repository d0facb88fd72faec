//! `[policy.scan]`: what the scan stage checks in every accepted message, and what it does
//! when a check fails.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// What happens to a message a content rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Hold it for an operator (`mailctl quarantine`); nobody is told. The safe choice
    /// for mail from outside, whose sender may be forged.
    #[default]
    Quarantine,
    /// Refuse it: every recipient fails with `550 5.7.1` and the sender gets a delivery
    /// status notification.
    Reject,
}

/// A regular expression, compiled when the configuration is read so that a bad one is
/// reported with the other configuration problems.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        regex::Regex::new(&text)
            .map(Pattern)
            .map_err(serde::de::Error::custom)
    }
}

/// One header rule, like a Postfix `header_checks` line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// The header field name, case-insensitive (`Subject`).
    pub header: String,
    /// Matched against the unfolded value of every field of that name.
    pub pattern: Pattern,
    /// What a match does.
    #[serde(default)]
    pub action: RuleAction,
}

/// `[policy.scan]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScanConfig {
    /// Verify SPF, DKIM, DMARC and ARC on mail from outside (unauthenticated clients not
    /// in `relay_networks`) and record the results in an `Authentication-Results` header.
    pub verify: bool,
    /// Quarantine mail from outside that fails DMARC for a domain whose policy is
    /// `p=reject`. It is held, never bounced: the sender is probably forged.
    pub dmarc_reject_quarantine: bool,
    /// More `Received` headers than this means a mail loop (RFC 5321 §6.3): quarantine.
    pub max_received: usize,
    /// The largest header section, in octets; 0 means no limit. Past it `content_action`.
    pub max_header_size: usize,
    /// Attachment file name extensions refused (case-insensitive, without the dot), for
    /// example `["exe", "scr"]`; a match gets `content_action`.
    pub blocked_extensions: Vec<String>,
    /// What `max_header_size` and `blocked_extensions` do.
    pub content_action: RuleAction,
    /// Header rules, checked in order; the first match decides.
    pub header_rules: Vec<HeaderRule>,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            verify: true,
            dmarc_reject_quarantine: true,
            max_received: 50,
            max_header_size: 256 * 1024,
            blocked_extensions: [
                "bat", "cmd", "com", "cpl", "exe", "hta", "jar", "js", "jse", "lnk", "msi", "pif",
                "ps1", "scr", "vbe", "vbs", "wsf",
            ]
            .map(String::from)
            .to_vec(),
            content_action: RuleAction::Quarantine,
            header_rules: Vec::new(),
        }
    }
}
