//! Sans-IO SMTP: the pieces of RFC 5321 that both sides of a conversation need, with no
//! sockets and no runtime.
//!
//! - [`line`] frames command lines out of a byte buffer with a hard length bound;
//! - [`command`] parses one command line into a typed [`Command`];
//! - [`address`] parses forward and reverse paths;
//! - [`data`] decodes a DATA body (dot-unstuffing, end marker, bare CR/LF, size bound);
//! - [`bdat`] accumulates a BDAT (CHUNKING) body under the same rules;
//! - [`reply`] formats server replies and parses them on the client side;
//! - [`dot`] encodes a body for transmission (CRLF normalisation and dot-stuffing);
//! - [`sasl`] decodes AUTH PLAIN and LOGIN exchanges.
//!
//! Everything here takes bytes and returns values, so it is unit-tested and fuzzed
//! directly; the services own the I/O.

#![forbid(unsafe_code)]

pub mod address;
pub mod bdat;
pub mod command;
pub mod data;
pub mod dot;
pub mod header;
pub mod line;
pub mod params;
pub mod reply;
pub mod sasl;
pub mod xtext;

pub use address::{ForwardPath, Mailbox, Path, PathError};
pub use command::{Command, CommandError};
pub use data::{BodyBuffer, DataDecoder, DataEvent, DataProblem, LineEndings};
pub use line::{LineDecoder, LineEvent};
pub use reply::{EnhancedCode, Reply, ReplyDecoder, ReplyError, ServerReply};
