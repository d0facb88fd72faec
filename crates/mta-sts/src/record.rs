//! The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1): `v=STSv1; id=<1-32 alphanumerics>;`.

/// Why a TXT record is not an MTA-STS record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// It does not start with `v=STSv1` (it is some other TXT record).
    #[error("not an MTA-STS record")]
    NotSts,
    /// It has no valid `id`.
    #[error("MTA-STS record without a valid id")]
    BadId,
}

/// The policy id of an MTA-STS record. Fields are `key=value` separated by `;` with
/// optional spaces; the version must come first; unknown fields are ignored (§3.1).
pub fn record_id(txt: &str) -> Result<&str, RecordError> {
    let mut fields = txt
        .split(';')
        .map(|f| f.trim_matches([' ', '\t']))
        .filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(RecordError::NotSts);
    }
    let id = fields
        .find_map(|f| f.strip_prefix("id="))
        .ok_or(RecordError::BadId)?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(RecordError::BadId);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        assert_eq!(
            record_id("v=STSv1; id=20160831085700Z;"),
            Ok("20160831085700Z")
        );
        assert_eq!(record_id("v=STSv1;id=abc"), Ok("abc"));
        assert_eq!(record_id("v=STSv1; ext=1; id=x1 "), Ok("x1"));
        assert_eq!(record_id("v=spf1 -all"), Err(RecordError::NotSts));
        assert_eq!(record_id("id=1; v=STSv1"), Err(RecordError::NotSts));
        assert_eq!(record_id("v=STSv1;"), Err(RecordError::BadId));
        assert_eq!(record_id("v=STSv1; id=has-dash"), Err(RecordError::BadId));
        assert_eq!(
            record_id(&format!("v=STSv1; id={}", "a".repeat(33))),
            Err(RecordError::BadId)
        );
        assert_eq!(record_id(""), Err(RecordError::NotSts));
    }
}
