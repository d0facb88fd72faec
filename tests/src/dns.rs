//! A real DNS server (hickory-server) answering from zone files written by the test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::Time;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_server::proto::dnssec::rdata::{DNSKEY, DS};
use hickory_server::proto::dnssec::{DigestType, DnssecSigner, SigningKey};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Name, RecordType};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{
    AxfrPolicy, Catalog, MessageResponseBuilder, ZoneHandler, ZoneType,
};
use tokio::net::{TcpListener, UdpSocket};

/// A DNS server on 127.0.0.1 (UDP and TCP on the same port) serving a DNSSEC tree as the
/// Internet has one: the root and `test` are signed, every other zone is delegated from its
/// parent, with a DS record there when it is signed and a signed proof that there is none
/// when it is not. A validating resolver that trusts [`DnsServer::anchor`] therefore finds
/// unsigned zones insecure, signed ones secure, and a zone whose DS does not match its key
/// bogus. A name whose first label is `servfail` gets SERVFAIL, as from a server that
/// cannot answer for now (a temporary failure to look it up).
pub struct DnsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The root's key as a trust anchor file (DNSKEY records), for a validating resolver.
    anchor: PathBuf,
    /// Holds the trust anchor file.
    _anchor_dir: tempfile::TempDir,
    /// The server, kept alive for the test.
    _server: Server<Tree>,
}

/// How a zone of the tree is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Not signed; its parent proves it has no DS record.
    Unsigned,
    /// Signed, with its key's DS record in its parent.
    Signed,
    /// Signed, but its parent's DS record names another key: validation fails (bogus), as
    /// when records are forged or a key rollover went wrong.
    Broken,
}

impl DnsServer {
    /// Serves `zones`, each `(origin, zone file text)`, none of them signed.
    pub async fn start(zones: &[(&str, String)]) -> DnsServer {
        Self::start_signed(zones, &[]).await
    }

    /// [`DnsServer::start`], with the zones of `signing` signed as given.
    pub async fn start_signed(zones: &[(&str, String)], signing: &[(&str, Signing)]) -> DnsServer {
        // The root and the `test` TLD, so that a name outside the test's zones does not exist
        // (NXDOMAIN) and the chain of trust starts where a resolver expects it.
        let root = (
            ".",
            "$ORIGIN .\n$TTL 60\n@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n@ IN NS ns.test.\n".to_string(),
        );
        let tld = (
            "test",
            "$ORIGIN test.\n$TTL 60\n@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n@ IN NS ns.test.\nns IN A 127.0.0.1\n".to_string(),
        );
        let mut tree: Vec<(Name, String, Signing)> = Vec::new();
        for (origin, text) in [&root, &tld].into_iter().chain(zones) {
            let name = Name::from_ascii(origin).unwrap();
            let name = if name.is_fqdn() {
                name
            } else {
                Name::from_ascii(format!("{origin}.")).unwrap()
            };
            let signed = if name.is_root() || name == Name::from_ascii("test.").unwrap() {
                Signing::Signed
            } else {
                signing
                    .iter()
                    .find(|(z, _)| {
                        Name::from_ascii(format!("{}.", z.trim_end_matches('.'))).unwrap() == name
                    })
                    .map_or(Signing::Unsigned, |(_, s)| *s)
            };
            tree.push((name, text.clone(), signed));
        }
        // Each zone's key, and the delegation of each zone (but the root) from its parent.
        let keys: Vec<Option<Ed25519SigningKey>> = tree
            .iter()
            .map(|(_, _, signing)| (*signing != Signing::Unsigned).then(new_key))
            .collect();
        let mut anchors = String::new();
        let mut cuts: HashMap<LowerName, usize> = HashMap::new();
        for child in 0..tree.len() {
            let name = tree[child].0.clone();
            if name.is_root() {
                let dnskey =
                    DNSKEY::from_key(&keys[child].as_ref().unwrap().to_public_key().unwrap());
                anchors.push_str(&format!(". 3600 IN DNSKEY {dnskey}\n"));
                continue;
            }
            let parent = (0..tree.len())
                .filter(|&p| p != child && tree[p].0.zone_of(&name))
                .max_by_key(|&p| tree[p].0.num_labels())
                .expect("the root is everyone's parent");
            let mut lines = format!("{name} IN NS ns.test.\n");
            let ds_key = match tree[child].2 {
                Signing::Unsigned => None,
                Signing::Signed => keys[child].as_ref().map(|k| k.to_public_key().unwrap()),
                Signing::Broken => Some(new_key().to_public_key().unwrap()),
            };
            if let Some(public) = ds_key {
                let ds = DS::from_key(&public, &name, DigestType::SHA256).unwrap();
                lines.push_str(&format!("{name} IN DS {ds}\n"));
            }
            tree[parent].1.push_str(&lines);
            cuts.insert(LowerName::new(&name), parent);
        }
        let mut zones = Catalog::new();
        let mut handlers: Vec<Arc<dyn ZoneHandler>> = Vec::new();
        for ((origin, text, _), key) in tree.iter().zip(keys) {
            let (origin, records) = Parser::new(text.as_str(), None, Some(origin.clone()))
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
            if let Some(key) = key {
                let dnskey = DNSKEY::from_key(&key.to_public_key().unwrap());
                let signer = DnssecSigner::new(
                    dnskey,
                    Box::new(key),
                    origin.clone(),
                    Duration::from_secs(86_400),
                );
                handler.add_zone_signing_key_mut(signer).unwrap();
                handler.secure_zone_mut().unwrap();
            }
            let handler: Arc<dyn ZoneHandler> = Arc::new(handler);
            zones.upsert(LowerName::new(&origin), vec![handler.clone()]);
            handlers.push(handler);
        }
        // A DS record lives on the parent's side of the cut (RFC 4035 §3.1.4.1).
        let parents = cuts
            .into_iter()
            .map(|(cut, parent)| {
                let mut catalog = Catalog::new();
                catalog.upsert(
                    LowerName::new(&tree[parent].0),
                    vec![handlers[parent].clone()],
                );
                (cut, catalog)
            })
            .collect();
        // Bind UDP first, then TCP on the same port.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let anchor_dir = tempfile::tempdir().unwrap();
        let anchor = anchor_dir.path().join("trust-anchor.txt");
        std::fs::write(&anchor, anchors).unwrap();
        let mut server = Server::new(Tree { zones, parents });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        DnsServer {
            addr,
            anchor,
            _anchor_dir: anchor_dir,
            _server: server,
        }
    }

    /// The trust anchor file (the root's DNSKEY), for `relay.dnssec_trust_anchor`.
    pub fn anchor(&self) -> &Path {
        &self.anchor
    }
}

fn new_key() -> Ed25519SigningKey {
    let pkcs8 = Ed25519SigningKey::generate_pkcs8().unwrap();
    Ed25519SigningKey::from_pkcs8(&pkcs8).unwrap()
}

/// The zones, with DS queries at a zone cut answered by the parent zone.
struct Tree {
    /// Every zone: the most specific one answers.
    zones: Catalog,
    /// For each zone cut, a catalog holding only the parent zone.
    parents: HashMap<LowerName, Catalog>,
}

#[async_trait::async_trait]
impl RequestHandler for Tree {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let failing = request.request_info().ok().is_some_and(|info| {
            info.query
                .name()
                .iter()
                .next()
                .is_some_and(|label| label.eq_ignore_ascii_case(b"servfail"))
        });
        if failing {
            let response = MessageResponseBuilder::new(&request.queries, None)
                .error_msg(&request.metadata, ResponseCode::ServFail);
            let mut handle = response_handle;
            return handle.send_response(response).await.expect("SERVFAIL sent");
        }
        let parent = request.request_info().ok().and_then(|info| {
            (info.query.query_type() == RecordType::DS)
                .then(|| self.parents.get(info.query.name()))
                .flatten()
        });
        match parent {
            Some(catalog) => {
                catalog
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
            None => {
                self.zones
                    .handle_request::<R, T>(request, response_handle)
                    .await
            }
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
