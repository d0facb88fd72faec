//! The usual test world: a stack whose relay sees `remote-a.test` at sink A (127.0.0.2,
//! offering STARTTLS) and `remote-b.test` at sink B (127.0.0.3), `nomail.test` with a null
//! MX, and `fallback.test` whose preferred exchanger refuses connections.

use std::net::{IpAddr, Ipv4Addr};

use std::time::Duration;

use mailflow_proto::v1::{MessageStatus, RecipientState};

use crate::client::SmtpClient;
use crate::dns::{DnsServer, Signing, mx_zone, null_mx_zone};
use crate::sink::Sink;
use crate::stack::{Options, Stack};
use crate::wait;

/// Sink A's address.
pub const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Sink B's address.
pub const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// `fallback.test`: its preferred exchanger (127.0.0.4) accepts no connections, its backup
/// is sink A.
fn fallback_zone() -> (String, String) {
    let text = "$ORIGIN fallback.test.\n$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\n@ IN MX 10 mx1\n@ IN MX 20 mx2\nmx1 IN A 127.0.0.4\nmx2 IN A 127.0.0.2\n";
    ("fallback.test".to_string(), text.to_string())
}

/// A stack with two remote domains and their exchangers.
pub struct World {
    /// The services.
    pub stack: Stack,
    /// `remote-a.test`'s exchanger.
    pub a: Sink,
    /// `remote-b.test`'s exchanger.
    pub b: Sink,
    /// Kept alive for the relay.
    _dns: DnsServer,
}

impl World {
    /// Starts everything; clients on 127.0.0.1 may relay.
    pub async fn start() -> World {
        Self::start_with_relay("").await
    }

    /// [`World::start`] with more `[relay]` settings (TOML lines); `{sink_a}` in them stands
    /// for sink A's address.
    pub async fn start_with_relay(relay_extra: &str) -> World {
        Self::start_with(relay_extra, &[], &[]).await
    }

    /// [`World::start_with_relay`] with more records (zone file lines, where `{mx_port}`
    /// stands for the exchangers' port) in some of the world's zones, each `(zone, lines)`,
    /// and some zones signed with DNSSEC as `signed` says (the others are provably
    /// unsigned).
    pub async fn start_with(
        relay_extra: &str,
        records: &[(&str, &str)],
        signed: &[(&str, Signing)],
    ) -> World {
        Self::build(relay_extra, records, signed, String::new(), "").await
    }

    /// [`World::start`] with every service exporting its spans to `collector`.
    pub async fn start_traced(collector: &crate::otlp::Collector) -> World {
        let trace = format!("[trace]\notlp_endpoint = \"{}\"\n", collector.endpoint());
        Self::build("", &[], &[], trace, "").await
    }

    /// [`World::start`] with more `[nats]` settings (TOML lines).
    pub async fn start_with_nats(nats_extra: &str) -> World {
        Self::build("", &[], &[], String::new(), nats_extra).await
    }

    async fn build(
        relay_extra: &str,
        records: &[(&str, &str)],
        signed: &[(&str, Signing)],
        sections: String,
        nats_extra: &str,
    ) -> World {
        let (a, b) = Sink::pair(A, B).await;
        // Like most exchangers today, A offers STARTTLS; B speaks plaintext only.
        a.offer_starttls();
        let mut zones = [
            mx_zone("remote-a.test", "127.0.0.2"),
            mx_zone("remote-b.test", "127.0.0.3"),
            null_mx_zone("nomail.test"),
            // Where the test clients say they send from.
            mx_zone("client.test", "127.0.0.9"),
            fallback_zone(),
        ];
        for (zone, lines) in records {
            let (_, text) = zones
                .iter_mut()
                .find(|(origin, _)| origin == zone)
                .expect("a zone of the world");
            text.push_str(&lines.replace("{mx_port}", &a.addr.port().to_string()));
        }
        let zones: Vec<(&str, String)> =
            zones.iter().map(|(o, t)| (o.as_str(), t.clone())).collect();
        let dns = DnsServer::start_signed(&zones, signed).await;
        let relay_extra = format!(
            "dnssec_trust_anchor = \"{}\"\n{}",
            dns.anchor().display(),
            relay_extra.replace("{sink_a}", &a.addr.to_string())
        );
        let stack = Stack::start(Options {
            dns: dns.addr,
            mx_port: a.addr.port(),
            relay_networks: vec!["127.0.0.1/32".into()],
            relay_extra,
            policy_extra: String::new(),
            nats_extra: nats_extra.into(),
            sections,
        })
        .await;
        World {
            stack,
            a,
            b,
            _dns: dns,
        }
    }
}

impl World {
    /// Sends one message from `sender@client.test` to `rcpt` with `subject`; returns its
    /// queue id.
    pub async fn send(&self, rcpt: &str, subject: &str) -> String {
        let mut c = SmtpClient::connect(self.stack.smtp).await;
        c.command("EHLO client.test", 250).await;
        let content = format!("Subject: {subject}\r\n\r\nx\r\n");
        let id = c.send_mail("sender@client.test", &[rcpt], &content).await;
        c.command("QUIT", 221).await;
        id
    }

    /// Waits until the first recipient of `id` is deferred after at least `attempts`
    /// attempts with a reply containing `text`; returns the status.
    pub async fn deferred_with(&self, id: &str, attempts: u32, text: &str) -> MessageStatus {
        wait::until(
            &format!("{id} deferred: {text}"),
            Duration::from_secs(30),
            || async {
                let s = self.stack.get_message(id).await.ok()?;
                let r = &s.recipients[0];
                (r.state() == RecipientState::Deferred
                    && r.attempts >= attempts
                    && r.last_reply.as_ref()?.text.contains(text))
                .then_some(s)
            },
        )
        .await
    }
}
