//! DNS for mailflow, on hickory-resolver (which caches answers by their TTL): where a
//! domain's mail goes (MX, implicit MX, null MX), and whether a client is on a blocklist. The relay uses it to deliver; the policy
//! service to refuse mail that could never be delivered or answered.

#![forbid(unsafe_code)]

pub mod mx;

pub use mx::{MxResolver, ResolveError, ResolverSetupError, Target, reversed};
