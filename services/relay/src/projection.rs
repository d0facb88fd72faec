//! The Queue service's view of every message, for listing and counting without touching
//! NATS per request: each replica follows KV `mail-status` (the records as routed) and
//! `MAIL_EVENTS` (every recipient's events) from the start and keeps, per message, its
//! envelope and each recipient's current state in memory (a few hundred octets per
//! message). The retention of both (30 days) is the history's, and messages past it are
//! forgotten here too.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream;
use futures::StreamExt;
use mailflow_proto::v1::{
    DeliveryEvent, MessageState, MessageStatus, MessageSummary, RecipientState, RecipientSummary,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

/// One recipient as the projection keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recipient {
    /// The address.
    address: String,
    /// Its domain, lower case.
    domain: String,
    /// The current state.
    state: RecipientState,
    /// Bounced because the queue lifetime ran out (a 4.x.x reply, Action: failed).
    expired: bool,
    /// The state came from an event (a later record must not undo it).
    from_event: bool,
}

/// One message.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// The envelope sender, empty for `<>`.
    sender: String,
    /// When it was received, in nanoseconds since the epoch (the list order).
    received: i128,
    /// Its size.
    size: u64,
    /// Its Message-ID.
    message_id: String,
    /// The recipients, by index.
    recipients: Vec<Recipient>,
}

/// Everything the projection holds.
#[derive(Default)]
struct Inner {
    /// Messages by queue id.
    messages: HashMap<String, Entry>,
    /// (newest first, queue id), for paging.
    order: BTreeSet<(Reverse<i128>, String)>,
    /// The same order per recipient domain, so that a list by domain walks only its own
    /// messages.
    by_domain: HashMap<String, BTreeSet<(Reverse<i128>, String)>>,
    /// Queue ids by Message-ID and by ENVID.
    by_message_id: HashMap<String, String>,
    by_envid: HashMap<String, String>,
}

/// Filters of a list, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any recipient in this state.
    pub state: Option<MessageState>,
    /// The sender, lower case (`""` for `<>`).
    pub sender: Option<String>,
    /// A recipient, lower case.
    pub recipient: Option<String>,
    /// A recipient domain, lower case.
    pub domain: Option<String>,
    /// Received at or after (nanoseconds).
    pub since: Option<i128>,
    /// Received before (nanoseconds).
    pub until: Option<i128>,
}

/// What a recipient counts as for the state filter.
fn message_state(r: &Recipient) -> MessageState {
    match r.state {
        RecipientState::Queued | RecipientState::Unspecified => MessageState::Queued,
        RecipientState::Deferred => MessageState::Deferred,
        RecipientState::Delivered => MessageState::Delivered,
        RecipientState::Bounced if r.expired => MessageState::Expired,
        RecipientState::Bounced => MessageState::Bounced,
        RecipientState::Quarantined => MessageState::Quarantined,
        RecipientState::Discarded => MessageState::Discarded,
        RecipientState::Accepted => MessageState::Accepted,
    }
}

/// Nanoseconds since the epoch of a protobuf timestamp.
pub fn nanos(t: Option<prost_types::Timestamp>) -> i128 {
    t.map_or(0, |t| {
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
    })
}

/// The protobuf timestamp of nanoseconds since the epoch.
pub fn timestamp(n: i128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(n.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
        nanos: i32::try_from(n.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        self.since.is_none_or(|s| e.received >= s)
            && self.until.is_none_or(|u| e.received < u)
            && self
                .sender
                .as_ref()
                .is_none_or(|s| e.sender.eq_ignore_ascii_case(s))
            && self.recipient.as_ref().is_none_or(|a| {
                e.recipients
                    .iter()
                    .any(|r| r.address.eq_ignore_ascii_case(a))
            })
            && self
                .domain
                .as_ref()
                .is_none_or(|d| e.recipients.iter().any(|r| &r.domain == d))
            && self
                .state
                .is_none_or(|s| e.recipients.iter().any(|r| message_state(r) == s))
    }
}

/// One waiting domain's counts, for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainCounts {
    /// Queued recipients.
    pub queued: u64,
    /// Deferred recipients.
    pub deferred: u64,
    /// The oldest waiting message (nanoseconds).
    pub oldest: i128,
}

/// The counts of a summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// (recipients, messages) by recipient state.
    pub states: HashMap<i32, (u64, u64)>,
    /// Waiting recipients by domain.
    pub domains: HashMap<String, DomainCounts>,
    /// The oldest message with a waiting recipient (nanoseconds), if any.
    pub oldest: Option<i128>,
    /// Messages known.
    pub messages: u64,
}

/// The projection, shared by the Queue service's requests.
#[derive(Default)]
pub struct Projection {
    /// The data.
    inner: RwLock<Inner>,
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_ascii_lowercase())
}

impl Projection {
    /// Applies a status record (created at routing, replaced on release from quarantine).
    pub fn record(&self, status: &MessageStatus) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let received = nanos(status.received_at);
        let previous = inner.messages.remove(&status.queue_id);
        let mut recipients: Vec<Recipient> = status
            .recipients
            .iter()
            .map(|r| Recipient {
                address: r.address.clone(),
                domain: domain_of(&r.address),
                state: r.state(),
                expired: false,
                from_event: false,
            })
            .collect();
        if let Some(previous) = &previous {
            let key = (Reverse(previous.received), status.queue_id.clone());
            inner.order.remove(&key);
            for r in &previous.recipients {
                if let Some(set) = inner.by_domain.get_mut(&r.domain) {
                    set.remove(&key);
                }
            }
            // Events seen before this record (or before a replacement) still hold.
            for (i, old) in previous.recipients.iter().enumerate() {
                if old.from_event {
                    match recipients.get_mut(i) {
                        Some(r) => {
                            r.state = old.state;
                            r.expired = old.expired;
                            r.from_event = true;
                        }
                        None => recipients.push(old.clone()),
                    }
                }
            }
        }
        if !status.message_id.is_empty() {
            inner
                .by_message_id
                .insert(status.message_id.clone(), status.queue_id.clone());
        }
        if !status.envid.is_empty() {
            inner
                .by_envid
                .insert(status.envid.clone(), status.queue_id.clone());
        }
        let key = (Reverse(received), status.queue_id.clone());
        for r in &recipients {
            inner
                .by_domain
                .entry(r.domain.clone())
                .or_default()
                .insert(key.clone());
        }
        inner.order.insert(key);
        inner.messages.insert(
            status.queue_id.clone(),
            Entry {
                sender: status.sender.clone(),
                received,
                size: status.size,
                message_id: status.message_id.clone(),
                recipients,
            },
        );
    }

    /// Applies one event to recipient `index`.
    pub fn event(&self, index: usize, event: &DeliveryEvent) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let entry = inner.messages.entry(event.queue_id.clone()).or_default();
        while entry.recipients.len() <= index {
            entry.recipients.push(Recipient {
                address: String::new(),
                domain: String::new(),
                state: RecipientState::Unspecified,
                expired: false,
                from_event: false,
            });
        }
        let r = &mut entry.recipients[index];
        if r.address.is_empty() {
            r.address = event.recipient.clone();
            r.domain = domain_of(&event.recipient);
        }
        r.state = event.state();
        r.expired = event.state() == RecipientState::Bounced
            && event
                .reply
                .as_ref()
                .is_some_and(|reply| reply.enhanced.starts_with('4'));
        r.from_event = true;
    }

    /// The queue id of the message with this Message-ID or ENVID.
    pub fn find(&self, message_id: &str, envid: &str) -> Option<String> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if !message_id.is_empty() {
            let id = message_id.trim_matches(|c: char| c == '<' || c == '>');
            return inner.by_message_id.get(id).cloned();
        }
        inner.by_envid.get(envid).cloned()
    }

    /// A page of messages matching `filter`, newest first, starting after `after` (the
    /// last item of the previous page); and the cursor of the next page.
    pub fn list(
        &self,
        filter: &Filter,
        after: Option<(i128, String)>,
        limit: usize,
    ) -> (Vec<MessageSummary>, Option<(i128, String)>) {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        // Walked lazily: a page costs the entries up to its last match, not the whole set;
        // a list by domain walks that domain's messages only.
        let empty = BTreeSet::new();
        let order = match &filter.domain {
            Some(domain) => inner.by_domain.get(domain).unwrap_or(&empty),
            None => &inner.order,
        };
        let range: Box<dyn Iterator<Item = &(Reverse<i128>, String)>> = match &after {
            Some((received, id)) => Box::new(order.range((
                std::ops::Bound::Excluded((Reverse(*received), id.clone())),
                std::ops::Bound::Unbounded,
            ))),
            None => Box::new(order.iter()),
        };
        let mut out = Vec::with_capacity(limit.min(64));
        let mut last = None;
        for (Reverse(received), id) in range {
            let Some(e) = inner.messages.get(id) else {
                continue;
            };
            if !filter.matches(e) {
                continue;
            }
            if out.len() == limit {
                return (out, last);
            }
            last = Some((*received, id.clone()));
            out.push(MessageSummary {
                queue_id: id.clone(),
                sender: e.sender.clone(),
                received_at: Some(timestamp(e.received)),
                size: e.size,
                message_id: e.message_id.clone(),
                recipients: e
                    .recipients
                    .iter()
                    .map(|r| RecipientSummary {
                        address: r.address.clone(),
                        state: r.state as i32,
                    })
                    .collect(),
            });
        }
        (out, None)
    }

    /// Counts by state and by waiting domain.
    pub fn counts(&self) -> Counts {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut counts = Counts {
            messages: inner.messages.len() as u64,
            ..Counts::default()
        };
        for e in inner.messages.values() {
            let mut seen = Vec::new();
            for r in &e.recipients {
                let entry = counts.states.entry(r.state as i32).or_default();
                entry.0 += 1;
                if !seen.contains(&r.state) {
                    seen.push(r.state);
                    entry.1 += 1;
                }
                let waiting = matches!(r.state, RecipientState::Queued | RecipientState::Deferred);
                if waiting {
                    let d = counts.domains.entry(r.domain.clone()).or_default();
                    if r.state == RecipientState::Queued {
                        d.queued += 1;
                    } else {
                        d.deferred += 1;
                    }
                    if d.oldest == 0 || e.received < d.oldest {
                        d.oldest = e.received;
                    }
                    if counts.oldest.is_none_or(|o| e.received < o) {
                        counts.oldest = Some(e.received);
                    }
                }
            }
        }
        counts
    }

    /// Forgets the messages received before `cutoff` (nanoseconds since the epoch).
    pub fn forget_before(&self, cutoff: i128) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let Inner {
            messages,
            order,
            by_domain,
            by_message_id,
            by_envid,
        } = &mut *inner;
        let old: Vec<(Reverse<i128>, String)> = order
            .range((Reverse(cutoff), String::new())..)
            .cloned()
            .collect();
        for key in &old {
            order.remove(key);
            if let Some(entry) = messages.remove(&key.1) {
                for r in &entry.recipients {
                    if let Some(set) = by_domain.get_mut(&r.domain) {
                        set.remove(key);
                        if set.is_empty() {
                            by_domain.remove(&r.domain);
                        }
                    }
                }
            }
        }
        if !old.is_empty() {
            by_message_id.retain(|_, id| messages.contains_key(id));
            by_envid.retain(|_, id| messages.contains_key(id));
        }
    }

    /// Follows KV `mail-status` and `MAIL_EVENTS` from their start until `shutdown`,
    /// starting again after an interruption, and forgets messages older than `retention`
    /// as their records and events expire (an expiry sends no word to a watcher).
    pub async fn follow(
        &self,
        status: kv::Store,
        events: stream::Stream,
        retention: Duration,
        shutdown: CancellationToken,
    ) {
        let records = async {
            while !shutdown.is_cancelled() {
                if let Err(e) = self.follow_records(&status).await {
                    tracing::warn!(error = %e, "status watch interrupted; following again");
                }
                pause(&shutdown).await;
            }
        };
        let timeline = async {
            while !shutdown.is_cancelled() {
                if let Err(e) = self.follow_events(&events).await {
                    tracing::warn!(error = %e, "event feed interrupted; following again");
                }
                pause(&shutdown).await;
            }
        };
        let forgetting = async {
            let mut every = tokio::time::interval(FORGET_EVERY);
            loop {
                every.tick().await;
                let now = std::time::SystemTime::now();
                let cutoff = nanos(Some(prost_types::Timestamp::from(
                    now.checked_sub(retention).unwrap_or(std::time::UNIX_EPOCH),
                )));
                self.forget_before(cutoff);
            }
        };
        tokio::select! {
            _ = async { tokio::join!(records, timeline, forgetting) } => {}
            _ = shutdown.cancelled() => {}
        }
    }

    async fn follow_records(&self, status: &kv::Store) -> Result<(), String> {
        let mut entries = status
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| e.to_string())?;
            if entry.operation != Operation::Put {
                continue;
            }
            match MessageStatus::decode(entry.value) {
                Ok(record) => self.record(&record),
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable status record"),
            }
        }
        Err("watch ended".into())
    }

    async fn follow_events(&self, events: &stream::Stream) -> Result<(), String> {
        let consumer = events
            .create_consumer(OrderedConfig {
                filter_subject: "mail.events.>".into(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| e.to_string())?;
            let index = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|i| i.parse::<usize>().ok());
            match (index, DeliveryEvent::decode(msg.payload.clone())) {
                (Some(index), Ok(event)) => self.event(index, &event),
                _ => tracing::warn!(subject = %msg.subject, "undecodable event"),
            }
        }
        Err("event feed ended".into())
    }
}

/// How often messages past the retention are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(600);

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::{RecipientStatus, RemoteReply};

    fn status(id: &str, secs: i64, sender: &str, rcpts: &[&str]) -> MessageStatus {
        MessageStatus {
            queue_id: id.into(),
            sender: sender.into(),
            received_at: Some(prost_types::Timestamp {
                seconds: secs,
                nanos: 0,
            }),
            recipients: rcpts
                .iter()
                .map(|a| RecipientStatus {
                    address: a.to_string(),
                    state: RecipientState::Queued as i32,
                    ..Default::default()
                })
                .collect(),
            message_id: format!("{id}@test"),
            ..Default::default()
        }
    }

    fn event(id: &str, state: RecipientState, enhanced: &str) -> DeliveryEvent {
        DeliveryEvent {
            queue_id: id.into(),
            state: state as i32,
            reply: Some(RemoteReply {
                enhanced: enhanced.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ids(p: &Projection, f: &Filter) -> Vec<String> {
        p.list(f, None, 100)
            .0
            .into_iter()
            .map(|m| m.queue_id)
            .collect()
    }

    #[test]
    fn messages_past_the_retention_are_forgotten() {
        let p = Projection::default();
        p.record(&status("A", 10, "x@s.test", &["a@one.test"]));
        p.record(&status("B", 20, "y@s.test", &["b@two.test"]));
        p.record(&status("C", 30, "z@s.test", &["c@one.test"]));
        p.forget_before(nanos(Some(prost_types::Timestamp {
            seconds: 25,
            nanos: 0,
        })));
        assert_eq!(ids(&p, &Filter::default()), ["C"]);
        let one = Filter {
            domain: Some("one.test".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&p, &one), ["C"]);
        assert_eq!(p.find("A@test", ""), None);
        assert_eq!(p.find("C@test", ""), Some("C".into()));
        let inner = p.inner.read().unwrap();
        assert_eq!(inner.messages.len(), 1);
        assert!(!inner.by_domain.contains_key("two.test"));
    }

    #[test]
    fn lists_newest_first_with_filters_and_pages() {
        let p = Projection::default();
        p.record(&status("A", 10, "x@s.test", &["a@one.test", "b@two.test"]));
        p.record(&status("B", 20, "y@s.test", &["c@one.test"]));
        p.record(&status("C", 30, "", &["d@three.test"]));
        p.event(1, &event("A", RecipientState::Deferred, "4.4.1"));
        p.event(0, &event("B", RecipientState::Delivered, "2.0.0"));
        p.event(0, &event("C", RecipientState::Bounced, "4.2.0"));
        assert_eq!(ids(&p, &Filter::default()), ["C", "B", "A"]);
        let f = |state| Filter {
            state: Some(state),
            ..Filter::default()
        };
        assert_eq!(ids(&p, &f(MessageState::Deferred)), ["A"]);
        assert_eq!(ids(&p, &f(MessageState::Queued)), ["A"]);
        assert_eq!(ids(&p, &f(MessageState::Delivered)), ["B"]);
        assert_eq!(ids(&p, &f(MessageState::Expired)), ["C"]);
        assert!(ids(&p, &f(MessageState::Bounced)).is_empty());
        let by_domain = Filter {
            domain: Some("one.test".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&p, &by_domain), ["B", "A"]);
        let null_sender = Filter {
            sender: Some(String::new()),
            ..Filter::default()
        };
        assert_eq!(ids(&p, &null_sender), ["C"]);
        let window = Filter {
            since: Some(15_000_000_000),
            until: Some(30_000_000_000),
            ..Filter::default()
        };
        assert_eq!(ids(&p, &window), ["B"]);
        let (first, next) = p.list(&Filter::default(), None, 2);
        assert_eq!(first.len(), 2);
        let (rest, end) = p.list(&Filter::default(), next, 2);
        assert_eq!(rest[0].queue_id, "A");
        assert!(end.is_none());
        assert_eq!(p.find("<B@test>", ""), Some("B".to_string()));
    }

    #[test]
    fn events_before_their_record_are_kept_and_counts_add_up() {
        let p = Projection::default();
        p.event(0, &event("A", RecipientState::Delivered, "2.0.0"));
        p.record(&status("A", 10, "x@s.test", &["a@one.test", "b@two.test"]));
        p.record(&status("B", 5, "x@s.test", &["c@two.test"]));
        let c = p.counts();
        assert_eq!(c.messages, 2);
        assert_eq!(c.states[&(RecipientState::Delivered as i32)], (1, 1));
        assert_eq!(c.states[&(RecipientState::Queued as i32)], (2, 2));
        assert_eq!(c.domains["two.test"].queued, 2);
        assert_eq!(c.domains["two.test"].oldest, 5_000_000_000);
        assert!(!c.domains.contains_key("one.test"));
        assert_eq!(c.oldest, Some(5_000_000_000));
    }
}
