//! Messages mailflow writes itself: delivery status notifications (RFC 3464, with the DSN
//! extension's choices of RFC 3461), wrapped as messages to queue, and the RFC 5322 date they
//! and the Received header carry. Pure functions from facts to messages; no I/O.

#![forbid(unsafe_code)]

pub mod dsn;
pub mod notice;

use std::time::SystemTime;

pub use dsn::{Action, RecipientReport, Report, ReturnContent, render, wanted};
pub use notice::{Original, notice, notify_of};

/// `Sat, 28 Nov 2026 12:00:00 +0000`: the HTTP date form with a numeric zone, as RFC 5322
/// prefers over `GMT`.
pub fn rfc5322_date(at: SystemTime) -> String {
    let http = httpdate::fmt_http_date(at);
    match http.strip_suffix(" GMT") {
        Some(head) => format!("{head} +0000"),
        None => http,
    }
}
