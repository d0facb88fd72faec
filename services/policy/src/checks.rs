//! The recipient check, as a pure decision over facts gathered from the directory.

use std::net::IpAddr;

use ipnet::IpNet;
use mailflow_proto::v1::{Verdict, verdict::Action};
use mailflow_smtp::Mailbox;

/// What the directory says about a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The domain is local and the address exists: a user, an alias, or caught by the
    /// domain's catch-all.
    LocalUser,
    /// The domain is local but nothing takes mail for the address.
    UnknownLocalUser,
    /// The domain is not local.
    Remote,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// True when the session authenticated.
    pub authenticated: bool,
    /// Networks allowed to relay without authentication.
    pub relay_networks: &'a [IpNet],
}

impl Client<'_> {
    /// May this client send to remote domains?
    pub fn may_relay(&self) -> bool {
        self.authenticated || self.relay_networks.iter().any(|n| n.contains(&self.ip))
    }
}

/// A local part that asks a server to route further: `a%b`, `host!user`, or a quoted `@`.
/// Such addresses are never relayed (the percent hack, bang paths, quoted routing).
pub fn has_routing_syntax(m: &Mailbox) -> bool {
    m.local.contains('%') || m.local.contains('!') || (m.is_quoted() && m.local.contains('@'))
}

/// Decides on one recipient.
pub fn decide_recipient(rcpt: &Mailbox, dest: Destination, client: Client<'_>) -> Verdict {
    match dest {
        Destination::LocalUser => accept(),
        Destination::UnknownLocalUser => reject(
            550,
            "5.1.1",
            format!("<{rcpt}>: Recipient address rejected: User unknown"),
        ),
        Destination::Remote if !client.may_relay() => {
            reject(554, "5.7.1", format!("<{rcpt}>: Relay access denied"))
        }
        Destination::Remote if has_routing_syntax(rcpt) => reject(
            554,
            "5.7.1",
            format!("<{rcpt}>: Relay access denied: routing syntax in address"),
        ),
        Destination::Remote => accept(),
    }
}

/// Decides on the reverse path. An authenticated client may use only addresses it owns
/// (`owned`: its own, or an alias of it) and the null sender, for notifications; an
/// unauthenticated one is not checked here.
pub fn decide_sender(sender: &str, identity: &str, owned: bool) -> Verdict {
    if identity.is_empty() || sender.is_empty() || owned {
        return accept();
    }
    reject(
        553,
        "5.7.1",
        format!("<{sender}>: Sender address rejected: not owned by user {identity}"),
    )
}

/// The verdict for a recipient address that does not parse.
pub fn bad_address(rcpt: &str) -> Verdict {
    reject(
        501,
        "5.1.3",
        format!("<{rcpt}>: Bad recipient address syntax"),
    )
}

fn accept() -> Verdict {
    Verdict {
        action: Action::Accept as i32,
        ..Default::default()
    }
}

fn reject(code: u32, enhanced: &str, text: String) -> Verdict {
    Verdict {
        action: Action::Reject as i32,
        code,
        enhanced: enhanced.into(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_smtp::address::parse_mailbox;

    fn client<'a>(ip: &str, authenticated: bool, nets: &'a [IpNet]) -> Client<'a> {
        Client {
            ip: ip.parse().unwrap(),
            authenticated,
            relay_networks: nets,
        }
    }

    #[test]
    fn local_users() {
        let m = parse_mailbox("u@example.test").unwrap();
        let c = client("203.0.113.1", false, &[]);
        assert_eq!(
            decide_recipient(&m, Destination::LocalUser, c).action(),
            Action::Accept
        );
        let v = decide_recipient(&m, Destination::UnknownLocalUser, c);
        assert_eq!(
            (v.action(), v.code, v.enhanced.as_str()),
            (Action::Reject, 550, "5.1.1")
        );
    }

    #[test]
    fn relaying_needs_a_trusted_network_or_authentication() {
        let nets: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let m = parse_mailbox("u@remote.test").unwrap();
        let outsider =
            decide_recipient(&m, Destination::Remote, client("203.0.113.1", false, &nets));
        assert_eq!((outsider.code, outsider.enhanced.as_str()), (554, "5.7.1"));
        let inside = decide_recipient(&m, Destination::Remote, client("127.0.0.1", false, &nets));
        assert_eq!(inside.action(), Action::Accept);
        let authed = decide_recipient(&m, Destination::Remote, client("203.0.113.1", true, &[]));
        assert_eq!(authed.action(), Action::Accept);
        let empty = decide_recipient(&m, Destination::Remote, client("127.0.0.1", false, &[]));
        assert_eq!(
            empty.action(),
            Action::Reject,
            "relay_networks is empty by default"
        );
    }

    #[test]
    fn authenticated_senders_use_their_own_address() {
        assert_eq!(
            decide_sender("a@x.test", "", false).action(),
            Action::Accept
        );
        assert_eq!(
            decide_sender("sales@example.test", "demo@example.test", true).action(),
            Action::Accept
        );
        assert_eq!(
            decide_sender("", "demo@example.test", false).action(),
            Action::Accept
        );
        let v = decide_sender("boss@example.test", "demo@example.test", false);
        assert_eq!(
            (v.action(), v.code, v.enhanced.as_str()),
            (Action::Reject, 553, "5.7.1")
        );
    }

    #[test]
    fn routing_syntax_is_never_relayed() {
        let nets: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap()];
        for addr in [
            "a%b.test@remote.test",
            "host!user@remote.test",
            "\"x@y.test\"@remote.test",
        ] {
            let m = parse_mailbox(addr).unwrap();
            let v = decide_recipient(&m, Destination::Remote, client("10.0.0.1", true, &nets));
            assert_eq!((v.action(), v.code), (Action::Reject, 554), "{addr}");
        }
    }
}
