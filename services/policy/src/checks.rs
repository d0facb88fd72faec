//! The in-session checks, as pure decisions over facts gathered from the directory and DNS.

use std::net::IpAddr;

use ipnet::IpNet;
use mail_auth::SpfResult;
use mailflow_dns::ResolveError;
use mailflow_proto::v1::{Verdict, verdict::Action};
use mailflow_smtp::Mailbox;

/// What the directory says about a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The domain is local and the address exists: a user, an alias, or caught by the
    /// domain's catch-all.
    LocalUser,
    /// The domain is local but nothing takes mail for the address.
    UnknownLocalUser,
    /// The domain is not local; what DNS says about where its mail goes (`Ok` when it has
    /// mail exchangers or an address).
    Remote(Result<(), ResolveError>),
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
        self.authenticated || trusted(self.ip, self.relay_networks)
    }
}

/// True when `ip` is in one of `networks` (`relay_networks`: trusted clients).
pub fn trusted(ip: IpAddr, networks: &[IpNet]) -> bool {
    networks.iter().any(|n| n.contains(&ip))
}

/// A local part that asks a server to route further: `a%b`, `host!user`, or a quoted `@`.
/// Such addresses are never relayed (the percent hack, bang paths, quoted routing).
pub fn has_routing_syntax(m: &Mailbox) -> bool {
    m.local.contains('%') || m.local.contains('!') || (m.is_quoted() && m.local.contains('@'))
}

/// Decides on one recipient. A remote domain that cannot receive mail is refused now, while
/// the client can still tell its user, rather than bounced later: a null MX gets `556
/// 5.1.10` (RFC 7505 §4.2), a domain that does not exist or has no address `550 5.1.2`. A
/// DNS failure accepts: the relay retries.
pub fn decide_recipient(rcpt: &Mailbox, dest: &Destination, client: Client<'_>) -> Verdict {
    match dest {
        Destination::LocalUser => accept(),
        Destination::UnknownLocalUser => reject(
            550,
            "5.1.1",
            format!("<{rcpt}>: Recipient address rejected: User unknown"),
        ),
        Destination::Remote(_) if !client.may_relay() => {
            reject(554, "5.7.1", format!("<{rcpt}>: Relay access denied"))
        }
        Destination::Remote(_) if has_routing_syntax(rcpt) => reject(
            554,
            "5.7.1",
            format!("<{rcpt}>: Relay access denied: routing syntax in address"),
        ),
        Destination::Remote(Err(ResolveError::NullMx(domain))) => reject(
            556,
            "5.1.10",
            format!(
                "<{rcpt}>: Recipient address rejected: Domain {domain} does not accept mail (null MX)"
            ),
        ),
        Destination::Remote(Err(
            ResolveError::NoSuchDomain(domain) | ResolveError::NoAddress(domain),
        )) => reject(
            550,
            "5.1.2",
            format!("<{rcpt}>: Recipient address rejected: Domain {domain} not found"),
        ),
        Destination::Remote(_) => accept(),
    }
}

/// True when the recipient check needs DNS: a remote domain the client may relay to.
pub fn needs_dns(rcpt: &Mailbox, client: Client<'_>) -> bool {
    client.may_relay() && !has_routing_syntax(rcpt) && !rcpt.is_address_literal()
}

/// Decides on the domain of an unauthenticated sender on the MX port: mail from a domain
/// that does not exist could never be answered (Postfix's `reject_unknown_sender_domain`:
/// `450 4.1.8` while DNS fails, `550 5.1.8` when the domain is not found), and a domain with
/// a null MX declares it sends no mail that expects replies (`550 5.7.27`, RFC 7505 §4.2).
pub fn decide_sender_domain(sender: &str, lookup: &Result<(), ResolveError>) -> Verdict {
    match lookup {
        Ok(()) => accept(),
        Err(ResolveError::NullMx(domain)) => reject(
            550,
            "5.7.27",
            format!(
                "<{sender}>: Sender address rejected: Domain {domain} does not accept mail (null MX)"
            ),
        ),
        Err(ResolveError::NoSuchDomain(_) | ResolveError::NoAddress(_)) => reject(
            550,
            "5.1.8",
            format!("<{sender}>: Sender address rejected: Domain not found"),
        ),
        Err(ResolveError::Temporary { .. }) => tempfail(
            450,
            "4.1.8",
            format!("<{sender}>: Sender address rejected: Domain not found"),
        ),
    }
}

/// Decides on an SPF result (RFC 7208 §8, RFC 7372 codes). Only enforced when configured,
/// and then only `fail` (`550 5.7.23`) and `temperror` (`451 4.7.24`): `softfail` and the
/// rest are for DMARC to weigh after the queue.
pub fn decide_spf(sender: &str, result: SpfResult, enforce: bool) -> Verdict {
    match result {
        SpfResult::Fail if enforce => reject(
            550,
            "5.7.23",
            format!("<{sender}>: Sender address rejected: SPF validation failed"),
        ),
        SpfResult::TempError if enforce => tempfail(
            451,
            "4.7.24",
            format!("<{sender}>: Sender address rejected: SPF validation error"),
        ),
        _ => accept(),
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

/// The refusal of a client listed in a DNS blocklist (Postfix's wording).
pub fn blocklisted(ip: IpAddr, zone: &str) -> Verdict {
    reject(
        554,
        "5.7.1",
        format!("Service unavailable; client [{ip}] blocked using {zone}"),
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

/// The verdict that lets the client go on.
pub fn accept() -> Verdict {
    Verdict {
        action: Action::Accept as i32,
        ..Default::default()
    }
}

/// A permanent refusal (5xx).
fn reject(code: u32, enhanced: &str, text: String) -> Verdict {
    refusal(Action::Reject, code, enhanced, text)
}

/// A temporary refusal (4xx).
pub fn tempfail(code: u32, enhanced: &str, text: String) -> Verdict {
    refusal(Action::Tempfail, code, enhanced, text)
}

fn refusal(action: Action, code: u32, enhanced: &str, text: String) -> Verdict {
    Verdict {
        action: action as i32,
        code,
        enhanced: enhanced.into(),
        text,
        ..Default::default()
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
            decide_recipient(&m, &Destination::LocalUser, c).action(),
            Action::Accept
        );
        let v = decide_recipient(&m, &Destination::UnknownLocalUser, c);
        assert_eq!(
            (v.action(), v.code, v.enhanced.as_str()),
            (Action::Reject, 550, "5.1.1")
        );
    }

    #[test]
    fn relaying_needs_a_trusted_network_or_authentication() {
        let nets: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let m = parse_mailbox("u@remote.test").unwrap();
        let ok = Destination::Remote(Ok(()));
        let outsider = decide_recipient(&m, &ok, client("203.0.113.1", false, &nets));
        assert_eq!((outsider.code, outsider.enhanced.as_str()), (554, "5.7.1"));
        let inside = decide_recipient(&m, &ok, client("127.0.0.1", false, &nets));
        assert_eq!(inside.action(), Action::Accept);
        let authed = decide_recipient(&m, &ok, client("203.0.113.1", true, &[]));
        assert_eq!(authed.action(), Action::Accept);
        let empty = decide_recipient(&m, &ok, client("127.0.0.1", false, &[]));
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
            let v = decide_recipient(
                &m,
                &Destination::Remote(Ok(())),
                client("10.0.0.1", true, &nets),
            );
            assert_eq!((v.action(), v.code), (Action::Reject, 554), "{addr}");
        }
    }

    #[test]
    fn undeliverable_remote_domains_are_refused_and_dns_trouble_is_not() {
        let m = parse_mailbox("u@remote.test").unwrap();
        let c = client("203.0.113.1", true, &[]);
        let verdict = |r| decide_recipient(&m, &Destination::Remote(r), c);
        let null = verdict(Err(ResolveError::NullMx("remote.test".into())));
        assert_eq!((null.code, null.enhanced.as_str()), (556, "5.1.10"));
        let none = verdict(Err(ResolveError::NoSuchDomain("remote.test".into())));
        assert_eq!((none.code, none.enhanced.as_str()), (550, "5.1.2"));
        let down = verdict(Err(ResolveError::Temporary {
            domain: "remote.test".into(),
            reason: "timeout".into(),
        }));
        assert_eq!(down.action(), Action::Accept);
        // An outsider is refused as a relay attempt before DNS is asked.
        let outsider = client("203.0.113.1", false, &[]);
        assert!(!needs_dns(&m, outsider));
        assert!(needs_dns(&m, c));
    }

    #[test]
    fn sender_domains_must_exist() {
        assert_eq!(
            decide_sender_domain("a@x.test", &Ok(())).action(),
            Action::Accept
        );
        let null = decide_sender_domain("a@x.test", &Err(ResolveError::NullMx("x.test".into())));
        assert_eq!((null.code, null.enhanced.as_str()), (550, "5.7.27"));
        let gone = decide_sender_domain(
            "a@x.test",
            &Err(ResolveError::NoSuchDomain("x.test".into())),
        );
        assert_eq!((gone.code, gone.enhanced.as_str()), (550, "5.1.8"));
        let temp = decide_sender_domain(
            "a@x.test",
            &Err(ResolveError::Temporary {
                domain: "x.test".into(),
                reason: "timeout".into(),
            }),
        );
        assert_eq!(
            (temp.action(), temp.code, temp.enhanced.as_str()),
            (Action::Tempfail, 450, "4.1.8")
        );
    }

    #[test]
    fn spf_is_enforced_only_when_configured() {
        let s = "a@forged.test";
        for result in [SpfResult::Fail, SpfResult::TempError, SpfResult::SoftFail] {
            assert_eq!(decide_spf(s, result, false).action(), Action::Accept);
        }
        let fail = decide_spf(s, SpfResult::Fail, true);
        assert_eq!(
            (fail.action(), fail.code, fail.enhanced.as_str()),
            (Action::Reject, 550, "5.7.23")
        );
        let temp = decide_spf(s, SpfResult::TempError, true);
        assert_eq!((temp.code, temp.enhanced.as_str()), (451, "4.7.24"));
        assert_eq!(
            decide_spf(s, SpfResult::SoftFail, true).action(),
            Action::Accept
        );
        assert_eq!(
            decide_spf(s, SpfResult::Pass, true).action(),
            Action::Accept
        );
    }
}
