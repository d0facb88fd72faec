//! A real DNS server (hickory-server) answering from zone files written by the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_server::proto::dnssec::rdata::DNSKEY;
use hickory_server::proto::dnssec::{DnssecSigner, SigningKey};
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// A DNS server on 127.0.0.1 (UDP and TCP on the same port).
pub struct DnsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server, kept alive for the test.
    _server: Server<Catalog>,
}

impl DnsServer {
    /// Serves `zones`, each `(origin, zone file text)`.
    pub async fn start(zones: &[(&str, String)]) -> DnsServer {
        Self::start_signed(zones, &[]).await.0
    }

    /// [`DnsServer::start`], with the zones named in `signed` signed (DNSSEC, Ed25519,
    /// NSEC). Also returns their keys as a trust anchor file (DNSKEY records) for a
    /// validating resolver.
    pub async fn start_signed(zones: &[(&str, String)], signed: &[&str]) -> (DnsServer, String) {
        let mut anchors = String::new();
        let mut catalog = Catalog::new();
        // The root and the `test` TLD, so that a name outside the test's zones does not exist
        // (NXDOMAIN) and a DNSSEC-validating resolver can tell unsigned zones apart, as the
        // real tree answers, instead of being refused.
        let root = (
            ".",
            "$ORIGIN .\n$TTL 60\n@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n@ IN NS ns.test.\n".to_string(),
        );
        let tld = (
            "test",
            "$ORIGIN test.\n$TTL 60\n@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n@ IN NS ns.test.\nns IN A 127.0.0.1\n".to_string(),
        );
        for (origin, text) in [&root, &tld].into_iter().chain(zones) {
            let origin = Name::from_ascii(origin).unwrap();
            let (origin, records) = Parser::new(text.as_str(), None, Some(origin))
                .parse()
                .expect("zone parses");
            let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                origin.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
                Some(NxProofKind::Nsec),
            )
            .expect("zone loads");
            let name = origin.to_ascii();
            if signed
                .iter()
                .any(|z| z.trim_end_matches('.') == name.trim_end_matches('.'))
            {
                let pkcs8 = Ed25519SigningKey::generate_pkcs8().unwrap();
                let key = Ed25519SigningKey::from_pkcs8(&pkcs8).unwrap();
                let dnskey = DNSKEY::from_key(&key.to_public_key().unwrap());
                anchors.push_str(&format!("{origin} 3600 IN DNSKEY {dnskey}\n"));
                let signer = DnssecSigner::new(
                    dnskey,
                    Box::new(key),
                    origin.clone(),
                    Duration::from_secs(86_400),
                );
                handler.add_zone_signing_key_mut(signer).unwrap();
                handler.secure_zone_mut().unwrap();
            }
            catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        }
        // Bind UDP first, then TCP on the same port.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        (
            DnsServer {
                addr,
                _server: server,
            },
            anchors,
        )
    }
}

/// A zone whose domain's mail goes to `mx.<domain>` at `ip`.
pub fn mx_zone(domain: &str, ip: &str) -> (String, String) {
    let text = format!(
        "$ORIGIN {domain}.\n$TTL 60\n@ IN SOA ns.{domain}. hostmaster.{domain}. 1 3600 600 86400 60\n@ IN NS ns.{domain}.\nns IN A 127.0.0.1\n@ IN MX 10 mx.{domain}.\nmx IN A {ip}\n"
    );
    (domain.to_string(), text)
}

/// A zone with a null MX (RFC 7505).
pub fn null_mx_zone(domain: &str) -> (String, String) {
    let text = format!(
        "$ORIGIN {domain}.\n$TTL 60\n@ IN SOA ns.{domain}. hostmaster.{domain}. 1 3600 600 86400 60\n@ IN NS ns.{domain}.\nns IN A 127.0.0.1\n@ IN MX 0 .\n"
    );
    (domain.to_string(), text)
}
