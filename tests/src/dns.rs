//! A real DNS server (hickory-server) answering from zone files written by the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
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
        let mut catalog = Catalog::new();
        // The `test` TLD itself, so that a name under it outside the test's zones does not
        // exist (NXDOMAIN), as a real TLD answers, instead of being refused.
        let tld = (
            "test",
            "$ORIGIN test.\n$TTL 60\n@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n@ IN NS ns.test.\nns IN A 127.0.0.1\n".to_string(),
        );
        for (origin, text) in std::iter::once(&tld).chain(zones) {
            let origin = Name::from_ascii(origin).unwrap();
            let (origin, records) = Parser::new(text.as_str(), None, Some(origin))
                .parse()
                .expect("zone parses");
            let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                origin.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .expect("zone loads");
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
        DnsServer {
            addr,
            _server: server,
        }
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
