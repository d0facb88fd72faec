//! Sender authentication of mail from outside, with mail-auth over our hickory resolver:
//! SPF (RFC 7208), DKIM (RFC 6376), ARC (RFC 8617) and DMARC (RFC 7489), summed up in an
//! `Authentication-Results` header field (RFC 8601).

use std::net::IpAddr;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator, SpfOutput,
    SpfResult,
};

/// The envelope facts SPF and DMARC judge.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// Its EHLO name.
    pub helo: &'a str,
    /// The reverse path, empty for `<>`.
    pub mail_from: &'a str,
}

impl Envelope<'_> {
    /// The domain SPF checks: the reverse path's, or the EHLO name's for `<>` (RFC 7208
    /// §2.4).
    fn spf_domain(&self) -> &str {
        self.mail_from
            .rsplit_once('@')
            .map_or(self.helo, |(_, domain)| domain)
    }
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The `Authentication-Results` field, CRLF included.
    pub header: String,
    /// Set when DMARC failed for a domain whose policy is `p=reject`: that domain.
    pub dmarc_reject: Option<String>,
}

/// The DKIM signatures verified in one message, and the malformed ones reported: RFC 6376
/// §6.1 lets a verifier limit the signatures it tries. Each costs a DNS lookup and a clause
/// in `Authentication-Results`, so a message with thousands of them would otherwise hold
/// a route handler for as long as the lookups take and grow a header field larger than a
/// bus message may be.
const MAX_DKIM_SIGNATURES: usize = 10;

/// Keeps the first [`MAX_DKIM_SIGNATURES`] DKIM signatures of `parsed`, and as many of the
/// malformed ones.
fn limit_dkim(parsed: &mut AuthenticatedMessage<'_>) {
    parsed.dkim_headers.truncate(MAX_DKIM_SIGNATURES);
    let mut malformed = 0;
    parsed.errors.retain(|h| {
        if !matches!(h.header, mail_auth::Error::Dkim(_)) {
            return true;
        }
        malformed += 1;
        malformed <= MAX_DKIM_SIGNATURES
    });
}

/// The SPF result of the MAIL FROM identity (the EHLO identity for `<>`).
pub async fn spf(
    authenticator: &MessageAuthenticator,
    hostname: &str,
    envelope: Envelope<'_>,
) -> SpfOutput {
    let sender = if envelope.mail_from.is_empty() {
        format!("postmaster@{}", envelope.helo)
    } else {
        envelope.mail_from.to_string()
    };
    authenticator
        .verify_spf(SpfParameters::verify_mail_from(
            envelope.ip,
            envelope.helo,
            hostname,
            &sender,
        ))
        .await
}

/// The lower-case RFC 7208 §2.6 name of an SPF result, as recorded with a message.
pub fn spf_name(result: SpfResult) -> String {
    result.to_string().to_lowercase()
}

/// Verifies `message`. `recorded_spf` is the result the session computed (empty when it
/// did not): SPF is only evaluated again without it.
pub async fn verify(
    authenticator: &MessageAuthenticator,
    hostname: &str,
    message: &[u8],
    envelope: Envelope<'_>,
    recorded_spf: &str,
) -> Verified {
    let spf_output = match SpfResult::try_from(recorded_spf) {
        Ok(result) => SpfOutput::new(envelope.spf_domain().to_string()).with_result(result),
        Err(()) => spf(authenticator, hostname, envelope).await,
    };
    let Some(mut parsed) = AuthenticatedMessage::parse(message) else {
        // Not a message mail-auth can read (no header section): SPF is all there is.
        let header = AuthenticationResults::new(hostname)
            .with_spf_mailfrom_result(&spf_output, envelope.ip, envelope.mail_from, envelope.helo)
            .to_header();
        return Verified {
            header,
            dmarc_reject: None,
        };
    };
    limit_dkim(&mut parsed);
    let dkim = authenticator.verify_dkim(&parsed).await;
    let arc = authenticator.verify_arc(&parsed).await;
    let dmarc = authenticator
        .verify_dmarc(DmarcParameters::new(
            &parsed,
            &dkim,
            envelope.spf_domain(),
            &spf_output,
        ))
        .await;
    let header_from = parsed.from.first().map_or("", String::as_str);
    let header = AuthenticationResults::new(hostname)
        .with_dkim_results(&dkim, header_from)
        .with_spf_mailfrom_result(&spf_output, envelope.ip, envelope.mail_from, envelope.helo)
        .with_arc_result(&arc, envelope.ip)
        .with_dmarc_result(&dmarc)
        .to_header();
    let dmarc_reject = (matches!(dmarc.result(), DmarcResult::Fail(_))
        && dmarc.policy() == Policy::Reject)
        .then(|| dmarc.domain().to_string());
    Verified {
        header,
        dmarc_reject,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dkim_errors(parsed: &AuthenticatedMessage<'_>) -> usize {
        parsed
            .errors
            .iter()
            .filter(|h| matches!(h.header, mail_auth::Error::Dkim(_)))
            .count()
    }

    #[test]
    fn at_most_ten_dkim_signatures_and_ten_malformed_ones_are_looked_at() {
        let mut message = Vec::new();
        for i in 0..30 {
            message.extend_from_slice(
                format!("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==; d=d{i}.test; s=s; h=From:Subject; t=1\r\n")
                    .as_bytes(),
            );
        }
        // Signatures of a version mail-auth does not know: each would be reported neutral.
        for _ in 0..30 {
            message.extend_from_slice(b"DKIM-Signature: v=2; d=x.test; s=s\r\n");
        }
        message.extend_from_slice(b"From: a@b.test\r\nSubject: many\r\n\r\nbody\r\n");
        let mut parsed = AuthenticatedMessage::parse(&message).unwrap();
        assert_eq!(parsed.dkim_headers.len(), 30);
        assert_eq!(dkim_errors(&parsed), 30);
        limit_dkim(&mut parsed);
        assert_eq!(parsed.dkim_headers.len(), MAX_DKIM_SIGNATURES);
        assert_eq!(dkim_errors(&parsed), MAX_DKIM_SIGNATURES);
    }
}
