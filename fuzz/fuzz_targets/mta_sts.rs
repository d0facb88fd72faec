//! What an MTA-STS policy host or DNS may send: the TXT record, the HTTP response and the
//! policy file. Nothing panics; a parsed policy never allows a host no pattern names, and
//! its max_age stays within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailflow_mta_sts::{Policy, http, policy::MAX_AGE_LIMIT, record_id};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = record_id(&text) {
        assert!(!id.is_empty() && id.len() <= 32);
    }
    if let Ok(response) = http::parse_response(data) {
        assert!(response.body.len() <= data.len());
    }
    if let Ok(policy) = Policy::parse(&text) {
        assert!(policy.max_age.as_secs() <= MAX_AGE_LIMIT);
        for line in text.lines() {
            let _ = policy.allows(line);
        }
        if policy.mx.is_empty() {
            assert!(!policy.allows("mx.example.com"));
        }
    }
});
