//! Retries without head-of-line blocking. A deferred job leaves `MAIL_OUT` for the stream
//! `MAIL_RETRY`, on the subject of its delay tier (`retry_delays`: the first retry waits the
//! first delay, and so on, the last repeating). Every job of a tier waits the same time, so
//! a tier is first in, first due: one mover per tier takes its jobs in order, waits until
//! the head is due, and publishes it back to `MAIL_OUT`. Deferred jobs therefore hold no
//! place among the relay consumer's unacknowledged messages (`MaxAckPending`), and a
//! destination with thousands of deferred messages slows no other.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use mailflow_bus::{Bus, BusError, ConsumerSpec, consume, names};
use mailflow_proto::v1::DeliveryJob;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// The tier of a job whose attempt number `attempt` was just deferred.
pub fn tier(attempt: u32, tiers: usize) -> usize {
    (attempt as usize)
        .saturating_sub(1)
        .min(tiers.saturating_sub(1))
}

/// Parks a deferred job (attempt `attempt`, received on `out_subject` as message
/// `out_sequence` of `MAIL_OUT`) in its retry tier. The `Nats-Msg-Id` names that message,
/// not the attempt: if the acknowledgement on `MAIL_OUT` is lost, the redelivered job is
/// tried again under a new attempt number, and parking it again must not start a second
/// retry chain.
pub async fn park(
    bus: &Bus,
    job: &DeliveryJob,
    attempt: u32,
    (out_subject, out_sequence): (&str, u64),
    tiers: usize,
) -> Result<(), BusError> {
    let mut parked = job.clone();
    parked.attempts_before = attempt;
    bus.publish(
        names::retry(tier(attempt, tiers), out_subject),
        &format!("{}.retry.{out_sequence}", job.job_id),
        Bytes::from(parked.encode_to_vec()),
    )
    .await
}

/// Holds a job whose domain is suspended: back to the first tier without an attempt, to
/// come round again after the first retry delay (or at once when the domain is resumed).
pub async fn hold(bus: &Bus, job: &DeliveryJob, out_subject: &str) -> Result<(), BusError> {
    let mut held = job.clone();
    held.held += 1;
    bus.publish(
        names::retry(0, out_subject),
        &format!("{}.hold.{}.{}", job.job_id, job.attempts_before, held.held),
        Bytes::from(held.encode_to_vec()),
    )
    .await
}

/// The `Nats-Msg-Id` of a job on its way back from `MAIL_RETRY` to `MAIL_OUT`: the mover
/// and an operator's retry-now use the same, so that a job moved by both is published once.
pub fn out_id(job: &DeliveryJob) -> String {
    format!("{}.out.{}.{}", job.job_id, job.attempts_before, job.held)
}

/// How long the job published at `published` still has to wait in a tier of `delay`.
pub fn remaining(published: SystemTime, delay: Duration, now: SystemTime) -> Duration {
    (published + delay)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

/// Moves the jobs of tier `index` (delay `delay`) back to `MAIL_OUT` when due, until
/// `shutdown`.
pub async fn mover(bus: Bus, index: usize, delay: Duration, shutdown: CancellationToken) {
    let spec = ConsumerSpec {
        stream: names::MAIL_RETRY,
        durable: names::retry_consumer(index),
        filter: Some(names::retry_filter(index)),
        ack_wait: ACK_WAIT,
        max_ack_pending: 64,
        // One at a time: the tier is in due order.
        concurrency: 1,
    };
    let bus_ref = &bus;
    let stop = &shutdown;
    consume(&bus, spec, &shutdown, |msg| {
        move_when_due(bus_ref, msg, delay, stop)
    })
    .await;
}

/// The tiers from `configured` on that still hold jobs (parked under a longer
/// `retry_delays`); none when NATS cannot say (they are looked for at the next start).
pub async fn stray_tiers(bus: &Bus, configured: usize) -> Vec<usize> {
    use futures::StreamExt;
    let Ok(stream) = bus.js.get_stream(names::MAIL_RETRY).await else {
        return Vec::new();
    };
    let Ok(subjects) = stream.info_with_subjects("mail.retry.>").await else {
        return Vec::new();
    };
    let mut tiers: Vec<usize> = subjects
        .filter_map(|s| async move { s.ok() })
        .filter_map(|(subject, _)| async move {
            let tier = subject.strip_prefix("mail.retry.")?.split('.').next()?;
            tier.parse::<usize>().ok()
        })
        .filter(|&tier| std::future::ready(tier >= configured))
        .collect()
        .await;
    tiers.sort_unstable();
    tiers.dedup();
    tiers
}

/// False only when message `sequence` is known to be gone from `MAIL_RETRY`; when NATS
/// cannot say, the job is moved (a duplicate is allowed, a loss never).
async fn still_parked(bus: &Bus, sequence: u64) -> bool {
    // A handle without the stream's info: the one request made is the message lookup.
    let Ok(stream) = bus.js.get_stream_no_info(names::MAIL_RETRY).await else {
        return true;
    };
    match stream.get_raw_message(sequence).await {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            jetstream::stream::RawMessageErrorKind::NoMessageFound
        ),
    }
}

/// How long a waiting job may go without a progress report.
const ACK_WAIT: Duration = Duration::from_secs(60);

async fn move_when_due(
    bus: &Bus,
    msg: jetstream::Message,
    delay: Duration,
    stop: &CancellationToken,
) {
    let published = msg
        .info()
        .map(|i| SystemTime::from(i.published))
        .unwrap_or_else(|_| SystemTime::now());
    loop {
        let wait = remaining(published, delay, SystemTime::now());
        if wait.is_zero() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.min(ACK_WAIT / 3)) => {}
            // Handed back to be redelivered when due, to this or another replica.
            _ = stop.cancelled() => {
                let wait = remaining(published, delay, SystemTime::now());
                let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
                return;
            }
        }
        let _ = msg.ack_with(AckKind::Progress).await;
    }
    // An operator's retry-now or cancel removes a waiting job from the stream while this
    // mover may hold it; gone, it is not moved (long tiers outlast the duplicate window,
    // so publishing it anyway would deliver it twice, or a cancelled one after all).
    if let Ok(info) = msg.info()
        && !still_parked(bus, info.stream_sequence).await
    {
        let _ = msg.ack().await;
        return;
    }
    let moved = match DeliveryJob::decode(msg.payload.clone()) {
        Ok(job) => {
            bus.publish(
                names::out_of_retry(&msg.subject),
                &out_id(&job),
                msg.payload.clone(),
            )
            .await
        }
        Err(e) => {
            tracing::error!(error = %e, subject = %msg.subject, "undecodable job on MAIL_RETRY; terminated");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    match moved {
        Ok(()) => {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "retry ack failed; the job may be moved twice (deduplicated)");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "job not moved back for its retry; trying again soon");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_follow_the_attempts_and_the_last_repeats() {
        assert_eq!(tier(1, 5), 0);
        assert_eq!(tier(2, 5), 1);
        assert_eq!(tier(5, 5), 4);
        assert_eq!(tier(40, 5), 4);
        assert_eq!(tier(3, 1), 0);
    }

    #[test]
    fn a_job_waits_out_the_rest_of_its_delay() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let d = Duration::from_secs(300);
        assert_eq!(remaining(t0, d, t0), d);
        assert_eq!(
            remaining(t0, d, t0 + Duration::from_secs(100)),
            Duration::from_secs(200)
        );
        assert_eq!(
            remaining(t0, d, t0 + Duration::from_secs(900)),
            Duration::ZERO
        );
    }
}
