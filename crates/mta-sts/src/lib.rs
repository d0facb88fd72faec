//! MTA-STS (RFC 8461) without I/O: the `_mta-sts` TXT record ([`record`]), the policy
//! file and the MX names it allows ([`policy`]), and the HTTP/1.1 response the policy is
//! fetched in ([`http`]). Every function takes octets or text and returns values, so all of
//! it is unit-tested and fuzzed; the relay does the DNS lookup, the HTTPS request and the
//! caching.

#![forbid(unsafe_code)]

pub mod http;
pub mod policy;
pub mod record;

pub use policy::{Mode, Policy, PolicyError};
pub use record::{RecordError, record_id};
