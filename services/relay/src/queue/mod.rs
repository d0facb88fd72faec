//! gRPC `Queue`: where every message and each of its recipients stands (read from the
//! status records, the events and this replica's [`Projection`]), and the operator's
//! controls over delivery ([`control`]).

mod control;
mod jobs;

use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use futures::{Stream, StreamExt, TryStreamExt};
use mailflow_bus::{Bus, names};
use mailflow_proto::v1::{
    AcceptedMessage, CancelRequest, CancelResponse, DeliveryEvent, DomainRequest, DomainResponse,
    DomainSummary, GetMessageRequest, ListMessagesRequest, ListMessagesResponse, MessageState,
    MessageStatus, QueueSummaryRequest, QueueSummaryResponse, RecipientState, RecipientStatus,
    RetryRequest, RetryResponse, StateCount, WatchMessageRequest, WatchUpdate, queue_server,
    watch_update,
};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::projection::{Filter, Projection, nanos, timestamp};
use crate::status::{Current, StatusBook, is_final};
use crate::suspend::Suspensions;

/// Pages are at most this long.
const MAX_PAGE: usize = 1000;
/// The page length when none is asked for.
const DEFAULT_PAGE: usize = 50;

/// The `Queue` service.
pub struct QueueService {
    /// Status records and events.
    pub status: StatusBook,
    /// Stream `MAIL_EVENTS`, for histories and watches.
    pub events: stream::Stream,
    /// Every message, for lists and counts.
    pub projection: Arc<Projection>,
    /// Suspended domains.
    pub suspensions: Suspensions,
    /// Publishing (events, jobs, notices).
    pub bus: Bus,
    /// Our name, for notices of cancelled mail.
    pub hostname: String,
    /// Bodies, for the notices of cancelled mail.
    pub bodies: async_nats::jetstream::object_store::ObjectStore,
}

/// `INVALID_ARGUMENT` naming `field`.
fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// A valid queue id, or `INVALID_ARGUMENT` naming `field`.
fn queue_id(id: &str, field: &str) -> Result<(), Status> {
    if names::is_queue_id(id) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{id:?} is not a queue id (26 letters and digits)"),
        ))
    }
}

/// The list filter of a request, every field checked.
fn filter(req: &ListMessagesRequest) -> Result<Filter, Status> {
    let state = match req.state() {
        MessageState::Unspecified if req.state != 0 => {
            return Err(invalid("state", format!("unknown state {}", req.state)));
        }
        MessageState::Unspecified => None,
        s => Some(s),
    };
    let sender = match req.sender.trim() {
        "" => None,
        "<>" => Some(String::new()),
        s if s.contains('@') => Some(s.to_ascii_lowercase()),
        s => return Err(invalid("sender", format!("{s:?} is not an address or <>"))),
    };
    let recipient = match req.recipient.trim() {
        "" => None,
        r if r.contains('@') => Some(r.to_ascii_lowercase()),
        r => return Err(invalid("recipient", format!("{r:?} is not an address"))),
    };
    let domain = match req.recipient_domain.trim().trim_end_matches('.') {
        "" => None,
        d if !d.contains('@') && !d.contains(' ') => Some(d.to_ascii_lowercase()),
        d => {
            return Err(invalid(
                "recipient_domain",
                format!("{d:?} is not a domain"),
            ));
        }
    };
    let since = req.since.map(|t| nanos(Some(t)));
    let until = req.until.map(|t| nanos(Some(t)));
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(invalid("until", "must be later than since"));
    }
    Ok(Filter {
        state,
        sender,
        recipient,
        domain,
        since,
        until,
    })
}

/// A page token: `<received nanoseconds>.<queue id>` of the last item of a page.
fn cursor(token: &str) -> Result<Option<(i128, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token", "not a token from a previous page");
    let (received, id) = token.split_once('.').ok_or_else(bad)?;
    let received = received.parse::<i128>().map_err(|_| bad())?;
    if !names::is_queue_id(id) {
        return Err(bad());
    }
    Ok(Some((received, id.to_string())))
}

impl QueueService {
    /// Every event of `queue_id`, in order: direct gets of the next message on
    /// `mail.events.<id>.>` from one sequence to the next (no consumer per request).
    async fn history(&self, queue_id: &str) -> Result<Vec<DeliveryEvent>, Status> {
        let subject = format!("mail.events.{queue_id}.>");
        let mut out = Vec::new();
        let mut next = None;
        loop {
            match self
                .events
                .direct_get_next_for_subject(subject.as_str(), next)
                .await
            {
                Ok(msg) => {
                    out.push(DeliveryEvent::decode(msg.payload).map_err(unavailable)?);
                    next = Some(msg.sequence + 1);
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// The queue id a request names.
    fn resolve(&self, req: &GetMessageRequest) -> Result<String, Status> {
        let given = [&req.queue_id, &req.message_id, &req.envid]
            .iter()
            .filter(|f| !f.is_empty())
            .count();
        if given != 1 {
            return Err(invalid(
                "queue_id",
                "give exactly one of queue_id, message_id and envid",
            ));
        }
        if !req.queue_id.is_empty() {
            queue_id(&req.queue_id, "queue_id")?;
            return Ok(req.queue_id.clone());
        }
        self.projection
            .find(&req.message_id, &req.envid)
            .ok_or_else(|| {
                if req.message_id.is_empty() {
                    Status::not_found(format!("no message with ENVID {}", req.envid))
                } else {
                    Status::not_found(format!("no message with Message-ID {}", req.message_id))
                }
            })
    }

    /// The current status of `id`, or `NOT_FOUND`.
    async fn current(&self, id: &str) -> Result<Current, Status> {
        match self.status.get(id).await {
            Ok(Some(current)) => Ok(current),
            Ok(None) => Err(Status::not_found(format!("no message with queue id {id}"))),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Where message `id` is: routed (its record, with the latest events applied), or
    /// waiting in `MAIL_IN` to be routed; `NOT_FOUND` when it is nowhere. The record is read
    /// once more when `MAIL_IN` has no such message: one routed between the first two reads
    /// has a record by then (it is written before the message leaves `MAIL_IN`).
    async fn locate(&self, id: &str) -> Result<Located, Status> {
        match self.current(id).await {
            Err(e) if e.code() == tonic::Code::NotFound => {
                match self.accepted(Some(id)).await?.pop() {
                    Some(accepted) => Ok(Located::Accepted(accepted)),
                    None => self.current(id).await.map(Located::Routed),
                }
            }
            other => other.map(Located::Routed),
        }
    }

    /// The current status of `id` for an operator's action on it: `FAILED_PRECONDITION` while
    /// it waits in `MAIL_IN` to be routed (it has no jobs yet to act on), `NOT_FOUND` when it
    /// is nowhere.
    async fn routed(&self, id: &str) -> Result<Current, Status> {
        match self.locate(id).await? {
            Located::Routed(current) => Ok(current),
            Located::Accepted(_) => Err(Status::failed_precondition(format!(
                "message {id} is accepted and not routed yet; try again in a moment"
            ))),
        }
    }

    /// Messages the ingress accepted that are not routed yet (in `MAIL_IN`), as status
    /// records whose recipients are `accepted`; only `queue_id`'s when given.
    async fn accepted(&self, queue_id: Option<&str>) -> Result<Vec<MessageStatus>, Status> {
        let mut stream = self
            .bus
            .js
            .get_stream(names::MAIL_IN)
            .await
            .map_err(unavailable)?;
        let pick = |w: jobs::Waiting<AcceptedMessage>| {
            queue_id
                .is_none_or(|id| w.job.queue_id == id)
                .then(|| accepted_status(w.job))
        };
        jobs::find_all(&mut stream, pick).await.map_err(unavailable)
    }
}

/// Where a message is ([`QueueService::locate`]).
enum Located {
    /// Routed: its record, with the latest events applied.
    Routed(Current),
    /// Waiting in `MAIL_IN` to be routed: its status as accepted.
    Accepted(MessageStatus),
}

/// The stream `WatchMessage` answers with.
type Updates = Pin<Box<dyn Stream<Item = Result<WatchUpdate, Status>> + Send>>;

/// `status`, then the events of message `id` from `events` as they come, until every
/// recipient is final.
async fn follow(
    events: stream::Stream,
    id: String,
    status: MessageStatus,
) -> Result<Updates, Status> {
    let consumer = events
        .create_consumer(OrderedConfig {
            filter_subject: format!("mail.events.{id}.>"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let messages = consumer.messages().await.map_err(unavailable)?;
    // Final states by recipient index: the watch ends when all are final.
    let open: Vec<bool> = status
        .recipients
        .iter()
        .map(|r| !is_final(r.state()))
        .collect();
    let first = WatchUpdate {
        update: Some(watch_update::Update::Status(status)),
    };
    // The stream ends right after the event that makes every recipient final (or at
    // once when they already are), without waiting for a message that never comes.
    let done = !open.iter().any(|o| *o);
    let events = futures::stream::unfold(
        (messages, open, done),
        |(mut messages, mut open, done)| async move {
            if done {
                return None;
            }
            let item = match messages.next().await? {
                Err(e) => Err(unavailable(e)),
                Ok(msg) => {
                    let index = msg
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|i| i.parse::<usize>().ok());
                    DeliveryEvent::decode(msg.payload.clone())
                        .map_err(unavailable)
                        .inspect(|event| {
                            if let Some(slot) = index.and_then(|i| open.get_mut(i)) {
                                *slot = !is_final(event.state());
                            }
                        })
                }
            };
            let done = item.is_err() || !open.iter().any(|o| *o);
            let update = item.map(|event| WatchUpdate {
                update: Some(watch_update::Update::Event(event)),
            });
            Some((update, (messages, open, done)))
        },
    );
    let stream = futures::stream::once(async move { Ok(first) }).chain(events);
    Ok(Box::pin(stream))
}

#[tonic::async_trait]
impl queue_server::Queue for QueueService {
    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<MessageStatus>, Status> {
        let id = self.resolve(&request.into_inner())?;
        let mut status = match self.locate(&id).await? {
            Located::Routed(current) => current.status,
            Located::Accepted(accepted) => accepted,
        };
        status.history = self.history(&id).await?;
        Ok(Response::new(status))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let req = request.into_inner();
        let filter = filter(&req)?;
        let after = cursor(&req.page_token)?;
        let limit = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (messages, next) = if filter.state == Some(MessageState::Accepted) {
            let waiting = Projection::default();
            for status in self.accepted(None).await? {
                waiting.record(&status);
            }
            waiting.list(&filter, after, limit)
        } else {
            self.projection.list(&filter, after, limit)
        };
        Ok(Response::new(ListMessagesResponse {
            messages,
            next_page_token: next.map_or(String::new(), |(r, id)| format!("{r}.{id}")),
        }))
    }

    type WatchMessageStream = Updates;

    async fn watch_message(
        &self,
        request: Request<WatchMessageRequest>,
    ) -> Result<Response<Updates>, Status> {
        let id = request.into_inner().queue_id;
        queue_id(&id, "queue_id")?;
        let updates = match self.locate(&id).await? {
            Located::Routed(current) => follow(self.events.clone(), id, current.status).await?,
            // Not routed yet: what the ingress accepted first, then, once the route stage
            // has routed it, the routed status and its events. The wait has no end of its
            // own: while the policy service is down, the watch stays open (the caller may
            // end it).
            Located::Accepted(accepted) => {
                let (book, events) = (self.status.clone(), self.events.clone());
                let routed = futures::stream::once(async move {
                    let current = book.wait_routed(&id).await.map_err(unavailable)?;
                    follow(events, id, current.status).await
                })
                .try_flatten();
                let first = WatchUpdate {
                    update: Some(watch_update::Update::Status(accepted)),
                };
                Box::pin(futures::stream::once(async { Ok(first) }).chain(routed))
            }
        };
        Ok(Response::new(updates))
    }

    async fn queue_summary(
        &self,
        _request: Request<QueueSummaryRequest>,
    ) -> Result<Response<QueueSummaryResponse>, Status> {
        let counts = self.projection.counts();
        let mut states: Vec<StateCount> = counts
            .states
            .iter()
            .map(|(state, (recipients, messages))| StateCount {
                state: *state,
                recipients: *recipients,
                messages: *messages,
            })
            .collect();
        states.sort_by_key(|s| s.state);
        let mut domains: Vec<DomainSummary> = counts
            .domains
            .into_iter()
            .map(|(domain, d)| DomainSummary {
                suspended: self.suspensions.contains(&domain),
                domain,
                queued: d.queued,
                deferred: d.deferred,
                oldest: Some(timestamp(d.oldest)),
            })
            .collect();
        // A suspended domain with nothing waiting is listed too, so that it is not forgotten.
        for domain in self.suspensions.all() {
            if !domains.iter().any(|d| d.domain == domain) {
                domains.push(DomainSummary {
                    domain,
                    suspended: true,
                    ..Default::default()
                });
            }
        }
        domains.sort_by(|a, b| {
            (b.queued + b.deferred)
                .cmp(&(a.queued + a.deferred))
                .then_with(|| a.domain.cmp(&b.domain))
        });
        Ok(Response::new(QueueSummaryResponse {
            states,
            domains,
            oldest: counts.oldest.map(timestamp),
            messages: counts.messages,
        }))
    }

    async fn retry(
        &self,
        request: Request<RetryRequest>,
    ) -> Result<Response<RetryResponse>, Status> {
        let jobs = self.retry_now(request.into_inner()).await?;
        Ok(Response::new(RetryResponse { jobs }))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let recipients = self.cancel_message(request.into_inner()).await?;
        Ok(Response::new(CancelResponse { recipients }))
    }

    async fn suspend(
        &self,
        request: Request<DomainRequest>,
    ) -> Result<Response<DomainResponse>, Status> {
        let domain = control::domain(&request.into_inner().domain)?;
        self.suspensions
            .set(&domain, true)
            .await
            .map_err(unavailable)?;
        tracing::info!(%domain, "delivery suspended");
        Ok(Response::new(DomainResponse {
            domain,
            suspended: true,
            jobs: 0,
        }))
    }

    async fn resume(
        &self,
        request: Request<DomainRequest>,
    ) -> Result<Response<DomainResponse>, Status> {
        let domain = control::domain(&request.into_inner().domain)?;
        self.suspensions
            .set(&domain, false)
            .await
            .map_err(unavailable)?;
        let jobs = self
            .retry_now(RetryRequest {
                domain: domain.clone(),
                ..Default::default()
            })
            .await?;
        tracing::info!(%domain, jobs, "delivery resumed");
        Ok(Response::new(DomainResponse {
            domain,
            suspended: false,
            jobs,
        }))
    }
}

/// The status of a message still in `MAIL_IN`: every recipient `accepted`.
fn accepted_status(m: AcceptedMessage) -> MessageStatus {
    MessageStatus {
        sender: m
            .mail_from
            .as_ref()
            .map(|f| f.address.clone())
            .unwrap_or_default(),
        envid: m
            .mail_from
            .as_ref()
            .map(|f| f.dsn_envid.clone())
            .unwrap_or_default(),
        client_ip: m.client_ip,
        received_at: m.received_at,
        size: m.body.as_ref().map_or(0, |b| b.size),
        recipients: m
            .recipients
            .into_iter()
            .map(|r| RecipientStatus {
                address: r.address,
                state: RecipientState::Accepted as i32,
                updated_at: m.received_at,
                ..Default::default()
            })
            .collect(),
        queue_id: m.queue_id,
        ..Default::default()
    }
}

/// True when some recipient of `status` is not final yet.
fn pending(status: &MessageStatus) -> Vec<usize> {
    status
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| !is_final(r.state()) && r.state() != RecipientState::Quarantined)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids() {
        assert!(names::is_queue_id("01KB3X8Z4N6Q2V7W9Y0A1B2C3D"));
        assert!(!names::is_queue_id(""));
        assert!(!names::is_queue_id("01KB3X8Z4N6Q2V7W9Y0A1B2C3."));
        assert!(!names::is_queue_id("short"));
    }

    #[test]
    fn bad_filters_name_their_field() {
        let bad = |req: ListMessagesRequest, field: &str| {
            let e = filter(&req).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        };
        bad(
            ListMessagesRequest {
                state: 99,
                ..Default::default()
            },
            "state",
        );
        bad(
            ListMessagesRequest {
                sender: "nobody".into(),
                ..Default::default()
            },
            "sender",
        );
        bad(
            ListMessagesRequest {
                recipient_domain: "a@b".into(),
                ..Default::default()
            },
            "recipient_domain",
        );
        bad(
            ListMessagesRequest {
                since: Some(prost_types::Timestamp {
                    seconds: 10,
                    nanos: 0,
                }),
                until: Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "until",
        );
        let ok = filter(&ListMessagesRequest {
            sender: "<>".into(),
            recipient_domain: "Example.COM.".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.sender.as_deref(), Some(""));
        assert_eq!(ok.domain.as_deref(), Some("example.com"));
        assert!(cursor("x").is_err());
        assert!(cursor("12.notanid").is_err());
        assert_eq!(
            cursor("12.01KB3X8Z4N6Q2V7W9Y0A1B2C3D").unwrap(),
            Some((12, "01KB3X8Z4N6Q2V7W9Y0A1B2C3D".to_string()))
        );
    }
}
