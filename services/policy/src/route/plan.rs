//! The pure part of routing: alias expansion, the status record a routed message starts
//! with, and the split into one delivery job per destination domain.

use std::collections::{HashMap, HashSet};

use mailflow_bus::names;
use mailflow_proto::v1::{
    AcceptedMessage, DeliveryJob, JobRecipient, LocalRoute, MessageStatus, Recipient,
    RecipientState, RecipientStatus, RemoteReply, RemoteRoute, Route, route,
};

use crate::directory::{ExpandError, MAX_EXPANSION, Snapshot};

/// The domain part of an address, lower-cased.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_lowercase())
}

/// FNV-1a: a hash that stays the same across builds, so a domain keeps its shard.
fn shard_of(domain: &str, shards: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in domain.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % shards.max(1)
}

/// One final recipient of a message, after alias expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct Expanded {
    /// The recipient to deliver to, with the client's DSN parameters; ORCPT names the
    /// address the client gave when an alias changed it (RFC 3461 §4.2).
    pub recipient: Recipient,
    /// The address the client gave, when an alias changed it; empty otherwise.
    pub original: String,
    /// Why this recipient is not delivered (its alias could not be expanded, or the
    /// message was refused): the reply recorded and reported to the sender.
    pub failure: Option<RemoteReply>,
}

/// Expands every recipient of a message through the directory's aliases.
pub fn expand(directory: &Snapshot, recipients: &[Recipient]) -> Vec<Expanded> {
    let mut out: Vec<Expanded> = Vec::with_capacity(recipients.len());
    // The mailboxes already given a copy.
    let mut reached: HashSet<String> = HashSet::new();
    for rcpt in recipients {
        let finals = directory
            .expand(&rcpt.address)
            .map_err(|failure| expansion_reply(&failure))
            .and_then(|finals| new_mailboxes(directory, &reached, finals));
        let finals = match finals {
            Ok(finals) => finals,
            Err(reply) => {
                out.push(Expanded {
                    recipient: rcpt.clone(),
                    original: String::new(),
                    failure: Some(reply),
                });
                continue;
            }
        };
        for (address, key) in finals {
            if !reached.insert(key) {
                continue;
            }
            let changed = address != rcpt.address;
            let mut recipient = rcpt.clone();
            if changed && recipient.dsn_orcpt.is_empty() {
                recipient.dsn_orcpt = format!("rfc822;{}", rcpt.address);
            }
            // An alias or catch-all may name a local address that is no mailbox (a typo, a
            // user removed since): refused, as the RCPT check refuses it from a client.
            let failure = directory
                .unknown_local(&address)
                .then(|| unknown_user_reply(&address));
            recipient.address = address;
            out.push(Expanded {
                recipient,
                original: if changed {
                    rcpt.address.clone()
                } else {
                    String::new()
                },
                failure,
            });
        }
    }
    out
}

/// The addresses of `finals` whose mailboxes no earlier recipient reached (two recipients
/// that reach the same mailbox get one copy, as in Postfix), each with its mailbox key; or
/// the refusal when they would take the message past the cap, which holds for the whole
/// message too: its status record and jobs must fit in a bus message, however many
/// recipients each reach many mailboxes.
fn new_mailboxes(
    directory: &Snapshot,
    reached: &HashSet<String>,
    finals: Vec<String>,
) -> Result<Vec<(String, String)>, RemoteReply> {
    let new: Vec<(String, String)> = finals
        .into_iter()
        .map(|address| {
            let key = directory.mailbox_key(&address);
            (address, key)
        })
        .filter(|(_, key)| !reached.contains(key))
        .collect();
    if reached.len() + new.len() > MAX_EXPANSION {
        return Err(RemoteReply {
            code: 550,
            enhanced: "5.2.4".into(),
            text: format!("the message would reach more than {MAX_EXPANSION} mailboxes"),
        });
    }
    Ok(new)
}

/// Splits the deliverable recipients into jobs (subject, job), one per destination domain,
/// in the order the domains first appear. A job recipient's index is its position in
/// `recipients`, which is also its position in the status record.
pub fn split(
    msg: &AcceptedMessage,
    recipients: &[Expanded],
    local_domains: &HashMap<String, String>,
    shards: u32,
) -> Vec<(String, DeliveryJob)> {
    let mut jobs: Vec<(String, DeliveryJob)> = Vec::new();
    for (index, expanded) in recipients.iter().enumerate() {
        if expanded.failure.is_some() {
            continue;
        }
        let rcpt = &expanded.recipient;
        let domain = domain_of(&rcpt.address);
        let entry = JobRecipient {
            recipient: Some(rcpt.clone()),
            index: u32::try_from(index).unwrap_or(u32::MAX),
        };
        if let Some((_, job)) = jobs.iter_mut().find(|(_, j)| j.domain == domain) {
            job.recipients.push(entry);
            continue;
        }
        let (kind, transport) = match local_domains.get(&domain) {
            Some(transport) => (route::Kind::Local(LocalRoute {}), transport.clone()),
            None => (route::Kind::Remote(RemoteRoute {}), String::new()),
        };
        let job = DeliveryJob {
            job_id: format!("{}.{}", msg.queue_id, jobs.len()),
            queue_id: msg.queue_id.clone(),
            domain: domain.clone(),
            route: Some(Route { kind: Some(kind) }),
            mail_from: msg.mail_from.clone(),
            recipients: vec![entry],
            body: msg.body.clone(),
            received_at: msg.received_at,
            attempts_before: 0,
            transport,
            held: 0,
            message_id: String::new(),
            requeued: 0,
        };
        jobs.push((names::mail_out(shard_of(&domain, shards)), job));
    }
    jobs
}

/// The reply recorded for a recipient whose alias cannot be expanded (RFC 3463: X.4.6
/// routing loop, X.2.4 mailing list expansion problem).
fn unknown_user_reply(address: &str) -> RemoteReply {
    RemoteReply {
        code: 550,
        enhanced: "5.1.1".into(),
        text: format!("<{address}>: user unknown in local domain"),
    }
}

fn expansion_reply(failure: &ExpandError) -> RemoteReply {
    let enhanced = match failure {
        ExpandError::Loop(_) | ExpandError::TooDeep => "5.4.6",
        ExpandError::TooMany => "5.2.4",
    };
    RemoteReply {
        code: 550,
        enhanced: enhanced.into(),
        text: failure.to_string(),
    }
}

/// The recipients a first pass over the message recorded, rebuilt from its status record
/// with the DSN parameters the client gave: a redelivered message is routed to the same
/// list, with the same indexes and job ids, whatever the directory says now. (Expanded
/// again after an alias changed, a partly published pass would see its jobs taken for
/// duplicates of other domains' jobs and index the wrong entries of the record.)
pub fn recorded(given: &[Recipient], record: &MessageStatus) -> Vec<Expanded> {
    record
        .recipients
        .iter()
        .map(|r| {
            let named = if r.original.is_empty() {
                &r.address
            } else {
                &r.original
            };
            let mut recipient = given
                .iter()
                .find(|g| g.address == *named)
                .cloned()
                .unwrap_or_else(|| Recipient {
                    address: named.clone(),
                    ..Default::default()
                });
            if !r.original.is_empty() && recipient.dsn_orcpt.is_empty() {
                recipient.dsn_orcpt = format!("rfc822;{}", r.original);
            }
            recipient.address = r.address.clone();
            Expanded {
                recipient,
                original: r.original.clone(),
                // Only routing fails a recipient in the record as routed.
                failure: (r.state() == RecipientState::Bounced)
                    .then(|| r.last_reply.clone().unwrap_or_default()),
            }
        })
        .collect()
}

/// The status record of a freshly routed message: every final recipient `pending`
/// (queued, or quarantined), and those that failed bounced.
pub fn initial_status(
    msg: &AcceptedMessage,
    recipients: &[Expanded],
    pending: RecipientState,
) -> MessageStatus {
    MessageStatus {
        queue_id: msg.queue_id.clone(),
        sender: msg
            .mail_from
            .as_ref()
            .map(|m| m.address.clone())
            .unwrap_or_default(),
        client_ip: msg.client_ip.clone(),
        received_at: msg.received_at,
        size: msg.body.as_ref().map_or(0, |b| b.size),
        envid: msg
            .mail_from
            .as_ref()
            .map(|m| m.dsn_envid.clone())
            .unwrap_or_default(),
        recipients: recipients
            .iter()
            .map(|r| RecipientStatus {
                address: r.recipient.address.clone(),
                original: r.original.clone(),
                state: match r.failure {
                    None => pending,
                    Some(_) => RecipientState::Bounced,
                } as i32,
                last_reply: r.failure.clone(),
                updated_at: msg.received_at,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::AliasInfo;

    fn message(rcpts: &[&str]) -> AcceptedMessage {
        AcceptedMessage {
            queue_id: "Q1".into(),
            recipients: rcpts
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn one_job_per_domain_keeping_recipient_indexes() {
        let msg = message(&[
            "a@local.test",
            "x@Remote.test",
            "b@local.test",
            "y@other.test",
        ]);
        let local: HashMap<String, String> =
            [("local.test".to_string(), "lmtp:[127.0.0.1]:24".to_string())].into();
        let recipients = expand(&Snapshot::default(), &msg.recipients);
        let jobs = split(&msg, &recipients, &local, 16);
        assert_eq!(jobs.len(), 3);
        let (subject, first) = &jobs[0];
        assert!(subject.starts_with("mail.out."));
        assert_eq!(first.job_id, "Q1.0");
        assert_eq!(first.domain, "local.test");
        assert_eq!(first.transport, "lmtp:[127.0.0.1]:24");
        assert!(matches!(
            first.route.as_ref().unwrap().kind,
            Some(route::Kind::Local(_))
        ));
        let idx: Vec<u32> = first.recipients.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![0, 2]);
        assert_eq!(jobs[1].1.domain, "remote.test");
        assert!(matches!(
            jobs[1].1.route.as_ref().unwrap().kind,
            Some(route::Kind::Remote(_))
        ));
        assert_eq!(jobs[2].1.recipients[0].index, 3);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("example.test", 16), shard_of("example.test", 16));
        for d in ["a.test", "b.test", "c.test", "example.org"] {
            assert!(shard_of(d, 16) < 16);
        }
        assert_eq!(shard_of("x.test", 0), 0);
    }

    #[test]
    fn initial_status_queues_every_recipient() {
        let msg = message(&["a@x.test", "b@y.test"]);
        let st = initial_status(
            &msg,
            &expand(&Snapshot::default(), &msg.recipients),
            RecipientState::Queued,
        );
        assert_eq!(st.recipients.len(), 2);
        assert!(
            st.recipients
                .iter()
                .all(|r| r.state() == RecipientState::Queued && r.original.is_empty())
        );
    }

    fn alias(s: &mut Snapshot, source: &str, targets: &[&str]) {
        let (l, d) = source.split_once('@').unwrap();
        s.aliases.insert(
            (d.into(), l.into()),
            AliasInfo {
                source: source.into(),
                targets: targets.iter().map(|t| t.to_string()).collect(),
            },
        );
    }

    fn user(s: &mut Snapshot, address: &str) {
        let (l, d) = address.split_once('@').unwrap();
        s.users.insert((d.into(), l.into()), Default::default());
    }

    /// Local `x.test` with the user `a@x.test` and the alias `sales@x.test` for it and
    /// `far@r.test`.
    fn sales_directory() -> Snapshot {
        let mut dir = Snapshot::default();
        dir.domains.insert("x.test".into());
        user(&mut dir, "a@x.test");
        alias(&mut dir, "sales@x.test", &["a@x.test", "far@r.test"]);
        dir
    }

    /// An alias naming a local address that is no mailbox bounces with 5.1.1, as that
    /// address would at RCPT; one naming a user, or a remote address, goes.
    #[test]
    fn an_alias_to_no_local_mailbox_bounces() {
        let mut dir = Snapshot::default();
        dir.domains.insert("x.test".into());
        user(&mut dir, "bob@x.test");
        alias(
            &mut dir,
            "sales@x.test",
            &["bob@x.test", "gone@x.test", "far@r.test"],
        );
        let msg = message(&["sales@x.test"]);
        let expanded = expand(&dir, &msg.recipients);
        let outcome: Vec<(&str, Option<&str>)> = expanded
            .iter()
            .map(|e| {
                let failure = e.failure.as_ref().map(|f| f.enhanced.as_str());
                (e.recipient.address.as_str(), failure)
            })
            .collect();
        assert_eq!(
            outcome,
            [
                ("bob@x.test", None),
                ("gone@x.test", Some("5.1.1")),
                ("far@r.test", None),
            ]
        );
        assert!(
            expanded[1]
                .failure
                .as_ref()
                .unwrap()
                .text
                .contains("gone@x.test")
        );
    }

    /// Many recipients each reaching many mailboxes: once the message has reached
    /// `MAX_EXPANSION` of them, a recipient that would go past it fails with 5.2.4;
    /// mailboxes reached twice count once.
    #[test]
    fn the_expansion_cap_holds_for_the_whole_message() {
        let mut dir = Snapshot::default();
        dir.domains.insert("x.test".into());
        let list = |prefix: &str| -> Vec<String> {
            (0..600).map(|i| format!("{prefix}{i}@r.test")).collect()
        };
        let (first, second) = (list("a"), list("b"));
        alias(
            &mut dir,
            "one@x.test",
            &first.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        alias(
            &mut dir,
            "two@x.test",
            &second.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        alias(
            &mut dir,
            "again@x.test",
            &first.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let expanded = expand(
            &dir,
            &message(&["one@x.test", "again@x.test", "two@x.test"]).recipients,
        );
        // `again` reaches only mailboxes `one` reached: nothing new, no failure.
        assert_eq!(expanded.len(), 601);
        assert!(expanded[..600].iter().all(|e| e.failure.is_none()));
        let failed = &expanded[600];
        assert_eq!(failed.recipient.address, "two@x.test");
        let reply = failed.failure.as_ref().unwrap();
        assert_eq!(reply.enhanced, "5.2.4");
        assert!(
            reply.text.contains("more than 1000 mailboxes"),
            "{}",
            reply.text
        );
    }

    #[test]
    fn aliases_are_expanded_deduplicated_and_loops_bounced() {
        let mut dir = sales_directory();
        alias(&mut dir, "loop@x.test", &["loop2@x.test"]);
        alias(&mut dir, "loop2@x.test", &["loop@x.test"]);
        let mut msg = message(&["sales@x.test", "A@x.test", "loop@x.test"]);
        msg.recipients[0].dsn_notify = vec![mailflow_proto::v1::DsnNotify::Success as i32];
        let expanded = expand(&dir, &msg.recipients);
        let addresses: Vec<&str> = expanded
            .iter()
            .map(|e| e.recipient.address.as_str())
            .collect();
        assert_eq!(addresses, vec!["a@x.test", "far@r.test", "loop@x.test"]);
        assert_eq!(expanded[0].original, "sales@x.test");
        assert_eq!(expanded[0].recipient.dsn_orcpt, "rfc822;sales@x.test");
        assert_eq!(
            expanded[0].recipient.dsn_notify,
            msg.recipients[0].dsn_notify
        );
        assert_eq!(expanded[2].failure.as_ref().unwrap().enhanced, "5.4.6");

        let st = initial_status(&msg, &expanded, RecipientState::Queued);
        let states: Vec<RecipientState> = st.recipients.iter().map(|r| r.state()).collect();
        assert_eq!(
            states,
            vec![
                RecipientState::Queued,
                RecipientState::Queued,
                RecipientState::Bounced
            ]
        );
        let reply = st.recipients[2].last_reply.as_ref().unwrap();
        assert_eq!((reply.code, reply.enhanced.as_str()), (550, "5.4.6"));

        let local: HashMap<String, String> = [("x.test".to_string(), String::new())].into();
        let jobs = split(&msg, &expanded, &local, 4);
        let indexes: Vec<(String, u32)> = jobs
            .iter()
            .flat_map(|(_, j)| j.recipients.iter().map(|r| (j.domain.clone(), r.index)))
            .collect();
        assert_eq!(
            indexes,
            vec![("x.test".to_string(), 0), ("r.test".to_string(), 1)]
        );
    }

    /// Remote local parts keep their case (RFC 5321 §2.4): `U@r.test` is another mailbox
    /// than `u@r.test` and gets its own copy and status entry; local ones are one mailbox.
    #[test]
    fn only_local_addresses_merge_across_case() {
        let mut dir = Snapshot::default();
        dir.domains.insert("x.test".into());
        user(&mut dir, "a@x.test");
        let msg = message(&["u@r.test", "U@r.test", "a@x.test", "A@X.test"]);
        let addresses: Vec<String> = expand(&dir, &msg.recipients)
            .into_iter()
            .map(|e| e.recipient.address)
            .collect();
        assert_eq!(addresses, ["u@r.test", "U@r.test", "a@x.test"]);
    }

    /// A redelivered message goes to the recipients its record lists, with the same jobs,
    /// even after the alias changed in between.
    #[test]
    fn a_redelivery_routes_to_the_recorded_recipients() {
        let mut dir = sales_directory();
        alias(&mut dir, "loop@x.test", &["loop@x.test", "loop2@x.test"]);
        alias(&mut dir, "loop2@x.test", &["loop@x.test"]);
        let mut msg = message(&["sales@x.test", "b@y.test", "loop2@x.test"]);
        msg.recipients[0].dsn_notify = vec![mailflow_proto::v1::DsnNotify::Success as i32];
        msg.recipients[1].dsn_orcpt = "rfc822;B@y.test".into();
        let first = expand(&dir, &msg.recipients);
        let record = initial_status(&msg, &first, RecipientState::Queued);
        let local: HashMap<String, String> = [("x.test".to_string(), String::new())].into();
        let jobs = split(&msg, &first, &local, 4);

        // The alias now points elsewhere; the record decides.
        alias(&mut dir, "sales@x.test", &["z@other.test"]);
        let again = recorded(&msg.recipients, &record);
        assert_eq!(again, first);
        assert_eq!(split(&msg, &again, &local, 4), jobs);
    }
}
