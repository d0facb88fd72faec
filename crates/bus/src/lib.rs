//! The bus: mailflow's streams, buckets and object store on NATS JetStream, and the few
//! operations every stage needs (publish and wait for the acknowledgement, store and load a
//! body, decode a payload).
//!
//! | name | kind | subjects |
//! |---|---|---|
//! | `MAIL_IN` | stream, work queue | `mail.in` |
//! | `MAIL_OUT` | stream, work queue | `mail.out.<shard>` |
//! | `MAIL_EVENTS` | stream, limits by age | `mail.events.<queue id>` |
//! | `mail-status` | KV | queue id |
//! | `directory` | KV | `domain.<d>`, `user.<d>.<local>` |
//! | `mail-bodies` | object store | queue id |

#![forbid(unsafe_code)]

mod body;
mod connect;
mod consume;
mod kv;
mod topology;

pub use body::{BodyStore, Spool, load_body};
pub use connect::{Bus, BusError, Outgoing};
pub use consume::{ConsumerSpec, consume, keep_alive};
pub use kv::{compare_and_set, key_token};
pub use topology::{Topology, names};

use prost::Message;

/// Decodes a protobuf bus payload.
pub fn decode<M: Message + Default>(payload: &[u8]) -> Result<M, BusError> {
    M::decode(payload).map_err(BusError::Decode)
}
