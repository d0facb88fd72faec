//! Key-value helpers shared by every stage: opening a bucket, and read-modify-write with
//! compare-and-set.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;

use crate::connect::{Bus, BusError};
use crate::topology::setup;

impl Bus {
    /// Opens the bucket, creating it (with `history` and `max_age`) when it is missing.
    pub async fn open_kv(
        &self,
        bucket: &str,
        history: i64,
        max_age: Duration,
    ) -> Result<kv::Store, BusError> {
        if let Ok(store) = self.js.get_key_value(bucket).await {
            return Ok(store);
        }
        self.js
            .create_key_value(kv::Config {
                bucket: bucket.into(),
                history,
                max_age,
                storage: StorageType::File,
                num_replicas: self.replicas(),
                ..Default::default()
            })
            .await
            .map_err(|e| setup(bucket, e))
    }
}

/// Read-modify-write of one key. `change` gets the current value (`None` when the key is
/// missing or deleted) and returns the new one, or `None` to delete the key; when another
/// writer got there first the value is read again and `change` called again, at most
/// `attempts` times in all.
pub async fn compare_and_set<F>(
    store: &kv::Store,
    key: &str,
    attempts: usize,
    mut change: F,
) -> Result<(), BusError>
where
    F: FnMut(Option<Bytes>) -> Result<Option<Bytes>, BusError>,
{
    let err = |op: &'static str, reason: String| BusError::Storage {
        op,
        name: key.to_string(),
        reason,
    };
    for _ in 0..attempts {
        let (value, revision) = live(store, key).await.map_err(|e| err("get", e))?;
        let written =
            match (change(value)?, revision) {
                (Some(value), Some(rev)) => store
                    .update(key, value, rev)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                (Some(value), None) => store.create(key, value).await.map(|_| ()).map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
                (None, None) => return Ok(()),
                (None, Some(rev)) => match store.delete_expect_revision(key, Some(rev)).await {
                    Ok(()) => Ok(()),
                    // The delete error does not say why; a changed revision means a conflict.
                    Err(e) => {
                        let (_, now) = live(store, key).await.map_err(|e| err("get", e))?;
                        Err((now != Some(rev), e.to_string()))
                    }
                },
            };
        match written {
            Ok(()) => return Ok(()),
            // Another writer got there first: read again.
            Err((true, _)) => continue,
            Err((false, reason)) => return Err(err("update", reason)),
        }
    }
    Err(err("update", "too much contention".into()))
}

/// The live value of `key` and its revision, `(None, None)` when missing or deleted.
async fn live(store: &kv::Store, key: &str) -> Result<(Option<Bytes>, Option<u64>), String> {
    match store.entry(key).await.map_err(|e| e.to_string())? {
        Some(e) if e.operation == kv::Operation::Put => Ok((Some(e.value), Some(e.revision))),
        _ => Ok((None, None)),
    }
}

/// One token of a KV key: lower case, every octet outside `[A-Za-z0-9_-]` written as
/// `=XX` (NATS keys allow few characters, and the dot separates tokens).
pub fn key_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.to_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}
