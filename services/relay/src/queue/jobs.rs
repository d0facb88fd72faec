//! Finding what waits in a work-queue stream: the delivery jobs of a message or a domain
//! (`MAIL_RETRY`, or `MAIL_OUT` before their attempt), to move them on (retry now) or take
//! them out (cancel), and the accepted messages not routed yet (`MAIL_IN`). A work-queue
//! stream allows no second consumer over the same subjects, so the messages are read by
//! sequence; operators' commands are rare, and their scans keep only what they need.

use std::ops::RangeInclusive;

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use mailflow_bus::{Bus, BusError, names};
use mailflow_proto::v1::DeliveryJob;
use prost::Message;

/// One waiting message (a delivery job unless said otherwise).
pub struct Waiting<T = DeliveryJob> {
    /// Its sequence in the stream.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// The payload.
    pub job: T,
}

fn storage(op: &'static str, e: impl std::fmt::Display) -> BusError {
    BusError::Storage {
        op,
        name: "delivery jobs".into(),
        reason: e.to_string(),
    }
}

/// The last sequence of `stream` now: the end of a scan that must not chase messages
/// published while it runs (a job moved by retry-now and parked again).
pub async fn last_sequence(stream: &mut Stream) -> Result<u64, BusError> {
    let info = stream.info().await.map_err(|e| storage("info", e))?;
    Ok(info.state.last_sequence)
}

/// The messages waiting in `stream` with sequences in `range`, as `pick` makes them (it
/// drops the ones it returns `None` for), at most `limit` of them; and the sequence to go
/// on from when there may be more. Each message is read and decoded in turn, so what is
/// kept is only what `pick` keeps (a listing keeps no bodies).
pub async fn find<T: Message + Default, U>(
    stream: &mut Stream,
    range: RangeInclusive<u64>,
    limit: usize,
    pick: impl Fn(Waiting<T>) -> Option<U>,
) -> Result<(Vec<U>, Option<u64>), BusError> {
    let state = stream
        .info()
        .await
        .map_err(|e| storage("info", e))?
        .state
        .clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok((out, None));
    }
    let (from, until) = range.into_inner();
    for sequence in from.max(state.first_sequence)..=until.min(state.last_sequence) {
        if out.len() == limit {
            return Ok((out, Some(sequence)));
        }
        let msg = match stream.get_raw_message(sequence).await {
            Ok(msg) => msg,
            // Gaps (acknowledged or deleted jobs) are skipped; any other failure means the
            // answer would be incomplete.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(storage("get", e)),
        };
        let Ok(job) = T::decode(msg.payload.clone()) else {
            continue;
        };
        out.extend(pick(Waiting {
            sequence,
            subject: msg.subject.to_string(),
            job,
        }));
    }
    Ok((out, None))
}

/// Every message waiting in `stream` that `pick` keeps (see [`find`]).
pub async fn find_all<T: Message + Default, U>(
    stream: &mut Stream,
    pick: impl Fn(Waiting<T>) -> Option<U>,
) -> Result<Vec<U>, BusError> {
    find(stream, 0..=u64::MAX, usize::MAX, pick)
        .await
        .map(|(all, _)| all)
}

/// Takes a waiting job out of `stream`; false when it was already gone (delivered or
/// moved meanwhile).
pub async fn remove<T>(stream: &Stream, waiting: &Waiting<T>) -> Result<bool, BusError> {
    match stream.delete_message(waiting.sequence).await {
        Ok(deleted) => Ok(deleted),
        Err(e) if e.to_string().contains("no message found") => Ok(false),
        Err(e) => Err(storage("delete", e)),
    }
}

/// Puts a job waiting in `MAIL_RETRY` back on its delivery subject now, then removes it
/// from the retry stream. It is published with the `Nats-Msg-Id` the tier's mover would
/// give it, so a job the mover moves at the same moment is published once.
pub async fn move_now(bus: &Bus, retry: &Stream, waiting: &Waiting) -> Result<bool, BusError> {
    bus.publish(
        names::out_of_retry(&waiting.subject),
        &crate::retry::out_id(&waiting.job),
        Bytes::from(waiting.job.encode_to_vec()),
    )
    .await?;
    remove(retry, waiting).await
}
