//! How long a message may wait: past the queue lifetime a deferred recipient bounces (as
//! with Postfix's `maximal_queue_lifetime`, 5 days by default), and once past the delay
//! warning time the sender is told the message is late (`delay_warning_time`, off by
//! default). Pure decisions over ages.

use std::time::Duration;

use mailflow_proto::v1::RecipientState;

use crate::deliver::Outcome;

/// The two limits.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// Deferred recipients of older messages bounce.
    pub max: Duration,
    /// A delay notice goes out once a message is this old; zero disables it.
    pub warn_after: Duration,
}

impl Lifetime {
    /// Turns a deferral of a message `age` old into a bounce once the lifetime is over; the
    /// last temporary reply is kept as the reason (RFC 3464 allows a 4.x.x status with
    /// Action: failed, which is what Postfix reports). True when it did.
    pub fn expire(&self, age: Duration, outcome: &mut Outcome) -> bool {
        if outcome.state != RecipientState::Deferred || age < self.max {
            return false;
        }
        outcome.state = RecipientState::Bounced;
        // The text below is ours, with the last reply in it: decided here.
        outcome.by_remote = false;
        if outcome.reply.enhanced.is_empty() {
            outcome.reply.enhanced = "4.4.7".into();
        }
        outcome.reply.text = format!(
            "message expired after {} in the queue; last error: {}",
            humanize(self.max),
            outcome.reply.text
        );
        true
    }

    /// True when a deferral at `age` is the first past the warning time: the previous
    /// attempt (at `previous`, none for a first attempt) came before it.
    pub fn warn_now(&self, age: Duration, previous: Option<Duration>) -> bool {
        !self.warn_after.is_zero()
            && age >= self.warn_after
            && previous.is_none_or(|p| p < self.warn_after)
    }
}

/// `5 days`, `4 hours`, `90 seconds`: the largest whole unit.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        s if s >= 86_400 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::RemoteReply;

    fn deferred() -> Outcome {
        Outcome {
            state: RecipientState::Deferred,
            reply: RemoteReply {
                code: 451,
                enhanced: "4.2.0".into(),
                text: "Mailbox busy".into(),
            },
            remote_host: String::new(),
            remote_ip: String::new(),
            tls: None,
            handoff: Default::default(),
            by_remote: true,
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn deferrals_bounce_after_the_lifetime() {
        let l = Lifetime {
            max: 5 * DAY,
            warn_after: Duration::ZERO,
        };
        let mut young = deferred();
        assert!(!l.expire(4 * DAY, &mut young));
        assert_eq!(young.state, RecipientState::Deferred);
        let mut old = deferred();
        assert!(l.expire(5 * DAY, &mut old));
        assert_eq!(old.state, RecipientState::Bounced);
        assert_eq!(
            (old.reply.code, old.reply.enhanced.as_str()),
            (451, "4.2.0")
        );
        assert_eq!(
            old.reply.text,
            "message expired after 5 days in the queue; last error: Mailbox busy"
        );
        let mut delivered = deferred();
        delivered.state = RecipientState::Delivered;
        assert!(!l.expire(9 * DAY, &mut delivered));
    }

    #[test]
    fn one_warning_when_the_delay_is_crossed() {
        let hour = Duration::from_secs(3_600);
        let l = Lifetime {
            max: 5 * DAY,
            warn_after: 4 * hour,
        };
        assert!(!l.warn_now(3 * hour, Some(2 * hour)));
        assert!(l.warn_now(4 * hour + Duration::from_secs(60), Some(3 * hour)));
        assert!(!l.warn_now(5 * hour, Some(4 * hour + Duration::from_secs(60))));
        assert!(l.warn_now(5 * hour, None));
        let off = Lifetime {
            max: 5 * DAY,
            warn_after: Duration::ZERO,
        };
        assert!(!off.warn_now(4 * DAY, Some(Duration::ZERO)));
        assert_eq!(humanize(Duration::from_secs(90)), "90 seconds");
        assert_eq!(humanize(hour), "1 hour");
    }
}
