//! The in-memory copy of the directory bucket, and the decisions made over it: whether an
//! address exists, what it expands to, and who owns it. Pure logic, tested without NATS.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use mailflow_proto::v1::{AliasInfo, DomainInfo, StoredDkimKey, StoredUser};
use mailflow_smtp::address;
use prost::Message;

use super::keys::Key;

/// How deep aliases may point at aliases (Postfix stops at 1000; nobody needs more than a
/// handful, and a deep chain is almost always a mistake).
pub const MAX_ALIAS_DEPTH: usize = 20;

/// How many addresses one recipient may expand to (Postfix's
/// `virtual_alias_expansion_limit` is 1000 too).
pub const MAX_EXPANSION: usize = 1000;

/// Why a recipient could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// An alias leads back to itself through other aliases.
    #[error("alias loop through <{0}>")]
    Loop(String),
    /// Aliases point at aliases more than [`MAX_ALIAS_DEPTH`] deep.
    #[error("aliases nested more than {MAX_ALIAS_DEPTH} deep")]
    TooDeep,
    /// More than [`MAX_EXPANSION`] addresses.
    #[error("alias expands to more than {MAX_EXPANSION} addresses")]
    TooMany,
}

/// The directory's contents.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Local domains.
    pub domains: BTreeSet<String>,
    /// Local domains' records (their transports).
    pub domain_info: BTreeMap<String, DomainInfo>,
    /// Users by (domain, local part), both lower case.
    pub users: BTreeMap<(String, String), StoredUser>,
    /// Aliases by (domain, local part), both lower case; an empty local part is the
    /// domain's catch-all.
    pub aliases: BTreeMap<(String, String), AliasInfo>,
    /// DKIM signing keys by domain, lower case.
    pub dkim: BTreeMap<String, StoredDkimKey>,
}

/// `(domain, local)` lower-cased, the way the maps are keyed.
fn lookup_key(local: &str, domain: &str) -> (String, String) {
    (domain.to_lowercase(), local.to_lowercase())
}

impl Snapshot {
    /// Sets `key` to `value`, or removes it when `None`.
    pub fn set(&mut self, key: &str, value: Option<&Bytes>) {
        let Some(key) = Key::decode(key) else {
            return;
        };
        match key {
            Key::Domain(domain) => {
                if value.is_some() {
                    self.domains.insert(domain.clone());
                } else {
                    self.domains.remove(&domain);
                }
                update(&mut self.domain_info, domain, value);
            }
            Key::User(d, l) => update(&mut self.users, (d, l), value),
            Key::Alias(d, l) => update(&mut self.aliases, (d, l), value),
            Key::Dkim(d) => update(&mut self.dkim, d, value),
        }
    }

    /// The transport the directory sets for the local domain `domain` (empty for the
    /// default).
    pub fn transport(&self, domain: &str) -> &str {
        self.domain_info
            .get(&domain.to_lowercase())
            .map_or("", |d| d.transport.as_str())
    }

    /// True when `domain` is local.
    pub fn is_local(&self, domain: &str) -> bool {
        self.domains.contains(&domain.to_lowercase())
    }

    /// The user `local@domain`.
    pub fn user(&self, local: &str, domain: &str) -> Option<&StoredUser> {
        self.users.get(&lookup_key(local, domain))
    }

    /// Where mail for `local@domain` goes instead, if anywhere: its alias, or, when it is
    /// neither an alias nor a user, the domain's catch-all. An alias wins over a user of the
    /// same name, as in Postfix's `virtual_alias_maps`; a catch-all never hides a user.
    pub fn redirect(&self, local: &str, domain: &str) -> Option<&AliasInfo> {
        let key = lookup_key(local, domain);
        if let Some(alias) = self.aliases.get(&key) {
            return Some(alias);
        }
        if self.users.contains_key(&key) {
            return None;
        }
        self.aliases.get(&(key.0, String::new()))
    }

    /// True when mail for `local@domain` (of a local domain) has somewhere to go.
    pub fn exists(&self, local: &str, domain: &str) -> bool {
        self.user(local, domain).is_some() || self.redirect(local, domain).is_some()
    }

    /// True when `address` is in a local domain and mail for it has nowhere to go: no user,
    /// no alias, no catch-all (Postfix: "User unknown in virtual mailbox table").
    pub fn unknown_local(&self, address: &str) -> bool {
        address::parse_mailbox(address).is_ok_and(|a| {
            !a.is_address_literal()
                && self.is_local(&a.domain)
                && !self.exists(&a.plain_local(), &a.domain)
        })
    }

    /// The final addresses mail for `address` is delivered to, in order and without
    /// duplicates. Remote addresses and local ones that are not redirected stay as they are
    /// (an unknown local user among them is refused by the caller: [`Self::unknown_local`]).
    pub fn expand(&self, address: &str) -> Result<Vec<String>, ExpandError> {
        let mut out = Found::default();
        self.expand_into(address, &mut Vec::new(), &mut out)?;
        Ok(out.addresses)
    }

    fn expand_into(
        &self,
        address: &str,
        path: &mut Vec<String>,
        out: &mut Found,
    ) -> Result<(), ExpandError> {
        let parsed = address::parse_mailbox(address).ok();
        let alias = parsed
            .as_ref()
            .filter(|m| self.is_local(&m.domain))
            .and_then(|m| self.redirect(&m.plain_local(), &m.domain));
        let Some(alias) = alias else {
            // A local mailbox is delivered under its plain name (`"a"@x` is `a@x`).
            match parsed.filter(|m| m.is_quoted() && self.is_local(&m.domain)) {
                Some(m) => out.push(&format!("{}@{}", m.plain_local(), m.domain), self),
                None => out.push(address, self),
            }
            return Ok(());
        };
        let me = normal(address, self);
        if path.contains(&me) {
            return Err(ExpandError::Loop(address.to_string()));
        }
        // An alias reached again by another way adds nothing new: expanding it once keeps
        // the work linear in the aliases however they nest (as Postfix does).
        if out.expanded.contains(&me) {
            return Ok(());
        }
        if path.len() >= MAX_ALIAS_DEPTH {
            return Err(ExpandError::TooDeep);
        }
        path.push(me.clone());
        for target in &alias.targets {
            if normal(target, self) == me {
                // `a -> a, b`: keep a copy in a's own mailbox.
                out.push(target, self);
            } else {
                self.expand_into(target, path, out)?;
            }
            if out.addresses.len() > MAX_EXPANSION {
                return Err(ExpandError::TooMany);
            }
        }
        path.pop();
        out.expanded.insert(me);
        Ok(())
    }

    /// The form in which two addresses naming the same mailbox are equal: a local address
    /// in any case, a remote one with its local part as written (it belongs to the remote
    /// host, RFC 5321 §2.4).
    pub fn mailbox_key(&self, address: &str) -> String {
        normal(address, self)
    }

    /// The DKIM key that signs our own mail: the From header's domain's when we hold one
    /// and the sender may write that From (an authenticated `identity` that owns the
    /// address, or, without one, a client of a trusted network, as OpenDKIM signs for its
    /// internal hosts), so that DKIM aligns with From for DMARC (RFC 7489 §3.1.1);
    /// otherwise the envelope sender's domain's, as before a From header is looked at.
    pub fn signing_key(
        &self,
        identity: &str,
        mail_from: &str,
        header_from: Option<&str>,
    ) -> Option<&StoredDkimKey> {
        let domain = |address: &str| {
            address
                .rsplit_once('@')
                .map(|(_, d)| super::normal_domain(d))
        };
        let from_key = header_from
            .filter(|from| identity.is_empty() || self.owns(identity, from))
            .and_then(domain)
            .and_then(|d| self.dkim.get(&d));
        from_key.or_else(|| domain(mail_from).and_then(|d| self.dkim.get(&d)))
    }

    /// True when the authenticated user `identity` may use `sender` as its reverse path:
    /// its own address, or one whose mail reaches it through aliases (including a
    /// catch-all that names it).
    pub fn owns(&self, identity: &str, sender: &str) -> bool {
        let identity = normal(identity, self);
        if normal(sender, self) == identity {
            return true;
        }
        self.expand(sender)
            .is_ok_and(|all| all.iter().any(|a| normal(a, self) == identity))
    }
}

/// The form addresses are compared in: local addresses wholly lower-cased (the directory
/// ignores case), remote ones only in the domain (their local part belongs to the remote
/// host, RFC 5321 §2.4).
fn normal(address: &str, snapshot: &Snapshot) -> String {
    match address::parse_mailbox(address) {
        Ok(m) if snapshot.is_local(&m.domain) => {
            format!("{}@{}", m.plain_local().to_lowercase(), m.domain)
        }
        Ok(m) => format!("{}@{}", m.plain_local(), m.domain),
        Err(_) => address.to_string(),
    }
}

/// The addresses an expansion found so far, each once.
#[derive(Default)]
struct Found {
    /// In the order found.
    addresses: Vec<String>,
    /// Their [`normal`] forms, to tell a duplicate.
    seen: HashSet<String>,
    /// The [`normal`] forms of the aliases already expanded.
    expanded: HashSet<String>,
}

impl Found {
    fn push(&mut self, address: &str, snapshot: &Snapshot) {
        if self.seen.insert(normal(address, snapshot)) {
            self.addresses.push(address.to_string());
        }
    }
}

/// The records of one map keyed by (domain, local part), of one domain or of all.
pub fn of_domain<'a, T>(
    map: &'a BTreeMap<(String, String), T>,
    domain: Option<&'a str>,
) -> impl Iterator<Item = &'a T> {
    map.iter()
        .filter(move |((d, _), _)| domain.is_none_or(|want| want == d))
        .map(|(_, record)| record)
}

/// Applies a put (decoding the record) or a delete to one map.
fn update<K: Ord, T: Message + Default>(map: &mut BTreeMap<K, T>, key: K, value: Option<&Bytes>) {
    match value.map(|v| T::decode(v.clone())) {
        Some(Ok(record)) => {
            map.insert(key, record);
        }
        Some(Err(e)) => tracing::warn!(error = %e, "undecodable directory record"),
        None => {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Own mail is signed for its From domain when the sender may write that From, so that
    /// DKIM aligns for DMARC; else for its envelope domain; else not at all.
    #[test]
    fn the_signing_key_follows_the_from_header_when_it_may() {
        let mut s = snapshot(&["ann@x.test"], &[]);
        for domain in ["x.test", "bounces.y.test"] {
            s.dkim.insert(
                domain.into(),
                StoredDkimKey {
                    domain: domain.into(),
                    ..Default::default()
                },
            );
        }
        let signer = |identity: &str, mail_from: &str, from: Option<&str>| {
            s.signing_key(identity, mail_from, from)
                .map(|k| k.domain.clone())
        };
        // A trusted network's client: the From domain, when there is a key for it.
        let newsletter = signer("", "list@bounces.y.test", Some("news@x.test"));
        assert_eq!(newsletter.as_deref(), Some("x.test"));
        // An authenticated user writing its own From.
        let own = signer("ann@x.test", "ann@bounces.y.test", Some("Ann@X.test"));
        assert_eq!(own.as_deref(), Some("x.test"));
        // ... but not someone else's: the envelope domain's key instead.
        let other = signer("ann@x.test", "ann@bounces.y.test", Some("boss@x.test"));
        assert_eq!(other.as_deref(), Some("bounces.y.test"));
        // No key for the From domain, or no single From: the envelope domain's.
        let elsewhere = signer("", "a@bounces.y.test", Some("a@z.test"));
        assert_eq!(elsewhere.as_deref(), Some("bounces.y.test"));
        assert_eq!(signer("", "a@x.test", None).as_deref(), Some("x.test"));
        assert_eq!(signer("", "a@z.test", Some("b@w.test")), None);
    }

    /// A directory with `x.test` local, the given users and aliases (`"@x.test"` for the
    /// catch-all).
    fn snapshot(users: &[&str], aliases: &[(&str, &[&str])]) -> Snapshot {
        let mut s = Snapshot::default();
        s.domains.insert("x.test".into());
        for u in users {
            let (l, d) = u.split_once('@').unwrap();
            s.users.insert(
                (d.into(), l.into()),
                StoredUser {
                    address: u.to_string(),
                    ..Default::default()
                },
            );
        }
        for (source, targets) in aliases {
            let (l, d) = source.split_once('@').unwrap();
            s.aliases.insert(
                (d.into(), l.into()),
                AliasInfo {
                    source: source.to_string(),
                    targets: targets.iter().map(|t| t.to_string()).collect(),
                },
            );
        }
        s
    }

    #[test]
    fn aliases_expand_recursively_without_duplicates() {
        let s = snapshot(
            &["a@x.test", "b@x.test"],
            &[
                (
                    "team@x.test",
                    &["a@x.test", "list@x.test", "Far@remote.test"],
                ),
                ("list@x.test", &["b@x.test", "A@X.test"]),
            ],
        );
        assert_eq!(
            s.expand("Team@x.test").unwrap(),
            vec!["a@x.test", "b@x.test", "Far@remote.test"]
        );
        assert_eq!(s.expand("a@x.test").unwrap(), vec!["a@x.test"]);
        assert_eq!(
            s.expand("Someone@remote.test").unwrap(),
            vec!["Someone@remote.test"]
        );
        // Remote local parts keep their case and are not merged.
        let r = snapshot(&[], &[("l@x.test", &["u@r.test", "U@r.test"])]);
        assert_eq!(r.expand("l@x.test").unwrap(), vec!["u@r.test", "U@r.test"]);
    }

    #[test]
    fn an_alias_may_keep_a_copy_for_itself() {
        let s = snapshot(&["a@x.test"], &[("a@x.test", &["a@x.test", "b@r.test"])]);
        assert_eq!(s.expand("a@x.test").unwrap(), vec!["a@x.test", "b@r.test"]);
    }

    #[test]
    fn catch_all_takes_only_what_nobody_else_takes() {
        let s = snapshot(
            &["a@x.test", "boss@x.test"],
            &[
                ("@x.test", &["boss@x.test"]),
                ("sales@x.test", &["a@x.test"]),
            ],
        );
        assert_eq!(s.expand("a@x.test").unwrap(), vec!["a@x.test"]);
        assert_eq!(s.expand("sales@x.test").unwrap(), vec!["a@x.test"]);
        assert_eq!(s.expand("random@x.test").unwrap(), vec!["boss@x.test"]);
        assert!(s.exists("random", "x.test"));
        let without = snapshot(&["a@x.test"], &[]);
        assert!(!without.exists("random", "x.test"));
        assert!(without.exists("A", "X.test"));
    }

    /// Needless quotes change nothing (RFC 5321 §4.1.2): `"a"@x.test` is a@x.test, for
    /// delivery and for who may send as it.
    #[test]
    fn quoted_local_parts_are_the_plain_mailbox() {
        let s = snapshot(
            &["a@x.test", "b@x.test"],
            &[("sales@x.test", &["b@x.test"]), ("@x.test", &["c@x.test"])],
        );
        assert_eq!(s.expand("\"a\"@x.test").unwrap(), ["a@x.test"]);
        assert_eq!(s.expand("\"sales\"@x.test").unwrap(), ["b@x.test"]);
        assert!(s.owns("a@x.test", "\"a\"@x.test"));
        assert!(
            !s.owns("c@x.test", "\"a\"@x.test"),
            "the catch-all does not own a"
        );
        assert_eq!(s.expand("\"a b\"@x.test").unwrap(), ["c@x.test"]);
    }

    #[test]
    fn shared_aliases_are_expanded_once() {
        // Three aliases per level, each naming all three of the next level, 18 levels
        // deep: 3^18 paths, one final address. Expanding each alias once keeps it linear.
        let levels = 18;
        let names = |i: usize| ["a", "b", "c"].map(|n| format!("{n}{i}@x.test"));
        let mut aliases: Vec<(String, Vec<String>)> = Vec::new();
        for i in 0..levels {
            let next = if i + 1 == levels {
                vec!["end@r.test".to_string()]
            } else {
                names(i + 1).to_vec()
            };
            for name in names(i) {
                aliases.push((name, next.clone()));
            }
        }
        let refs: Vec<(&str, Vec<&str>)> = aliases
            .iter()
            .map(|(s, t)| (s.as_str(), t.iter().map(String::as_str).collect()))
            .collect();
        let slices: Vec<(&str, &[&str])> = refs.iter().map(|(s, t)| (*s, t.as_slice())).collect();
        assert_eq!(
            snapshot(&[], &slices).expand("a0@x.test").unwrap(),
            ["end@r.test"]
        );
    }

    #[test]
    fn loops_and_runaways_are_errors() {
        let s = snapshot(
            &[],
            &[("a@x.test", &["b@x.test"]), ("b@x.test", &["a@x.test"])],
        );
        assert!(matches!(s.expand("a@x.test"), Err(ExpandError::Loop(_))));
        // Two catch-alls sending each other's strays around.
        let mut strays = snapshot(
            &[],
            &[("@x.test", &["a@y.test"]), ("@y.test", &["b@x.test"])],
        );
        strays.domains.insert("y.test".into());
        assert!(matches!(
            strays.expand("other@x.test"),
            Err(ExpandError::Loop(_))
        ));
        // A catch-all naming an address of its own domain delivers there (and the
        // delivery reports an unknown user), rather than looping.
        let nobody = snapshot(&[], &[("@x.test", &["nobody@x.test"])]);
        assert_eq!(nobody.expand("x@x.test").unwrap(), vec!["nobody@x.test"]);
        let chain: Vec<(String, Vec<String>)> = (0..30)
            .map(|i| (format!("l{i}@x.test"), vec![format!("l{}@x.test", i + 1)]))
            .collect();
        let chain_refs: Vec<(&str, Vec<&str>)> = chain
            .iter()
            .map(|(s, t)| (s.as_str(), t.iter().map(String::as_str).collect()))
            .collect();
        let slices: Vec<(&str, &[&str])> =
            chain_refs.iter().map(|(s, t)| (*s, t.as_slice())).collect();
        assert_eq!(
            snapshot(&[], &slices).expand("l0@x.test"),
            Err(ExpandError::TooDeep)
        );
        let many: Vec<String> = (0..=MAX_EXPANSION)
            .map(|i| format!("u{i}@r.test"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            snapshot(&[], &[("big@x.test", &many)]).expand("big@x.test"),
            Err(ExpandError::TooMany)
        );
    }

    #[test]
    fn ownership_follows_aliases() {
        let s = snapshot(
            &["a@x.test", "b@x.test"],
            &[
                ("sales@x.test", &["a@x.test"]),
                ("team@x.test", &["sales@x.test", "b@x.test"]),
                ("@x.test", &["b@x.test"]),
            ],
        );
        assert!(s.owns("a@x.test", "A@x.test"));
        assert!(s.owns("a@x.test", "sales@x.test"));
        assert!(s.owns("a@x.test", "team@x.test"));
        assert!(s.owns("b@x.test", "team@x.test"));
        assert!(!s.owns("b@x.test", "sales@x.test"));
        assert!(!s.owns("a@x.test", "b@x.test"));
        // The catch-all owner may use addresses nobody else has, not other users'.
        assert!(s.owns("b@x.test", "whatever@x.test"));
        assert!(!s.owns("b@x.test", "a@x.test"));
        assert!(!s.owns("a@x.test", "someone@remote.test"));
    }
}
