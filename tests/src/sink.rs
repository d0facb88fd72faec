//! SMTP servers that accept mail on loopback and record it, written independently of
//! mailflow's own SMTP code so that they check it rather than mirror it.
//!
//! Recipients starting with `reject` get `550 5.1.1`, with `tempfail` get `451 4.2.0`. With
//! [`Sink::hold`] on, the reply to the end of DATA waits until [`Sink::release`] (or is a
//! refusal, with [`Sink::release_with`]). A sink can offer STARTTLS
//! ([`Sink::offer_starttls`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A connection, plain or encrypted.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// MAIL FROM address.
    pub from: String,
    /// Accepted RCPT TO addresses.
    pub rcpts: Vec<String>,
    /// The content, dot-unstuffed, as received.
    pub data: Vec<u8>,
    /// It came over TLS.
    pub tls: bool,
    /// The user the client authenticated as, if it did.
    pub auth: Option<String>,
    /// The name the client gave in EHLO or HELO (which relay replica delivered it).
    pub helo: String,
    /// The parameters after MAIL FROM's path, as sent (`RET=HDRS ENVID=x`).
    pub mail_params: String,
    /// The parameters after each accepted RCPT TO's path, as sent.
    pub rcpt_params: Vec<String>,
}

impl Delivered {
    /// The message's Subject field (empty when it has none).
    pub fn subject(&self) -> String {
        String::from_utf8_lossy(&self.data)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
            .unwrap_or_default()
    }
}

/// A recording SMTP server.
#[derive(Clone)]
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What was accepted (the 250 was sent or is being sent).
    received: Arc<Mutex<Vec<Delivered>>>,
    /// Messages whose content fully arrived, held or not.
    arrived: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// The most connections open at once.
    peak: Arc<AtomicUsize>,
    /// True while end-of-DATA replies are held back.
    hold: Arc<watch::Sender<bool>>,
    /// The reply held messages get when released, instead of accepting them.
    held_reply: Arc<Mutex<Option<String>>>,
    /// PIPELINING is advertised.
    pipelining: Arc<AtomicBool>,
    /// 8BITMIME is advertised.
    eight_bit: Arc<AtomicBool>,
    /// DSN is advertised (off unless asked for).
    dsn: Arc<AtomicBool>,
    /// REQUIRETLS is advertised inside TLS (off unless asked for).
    requiretls: Arc<AtomicBool>,
    /// A refusal to greet new connections with (and close them), instead of `220`.
    refuse_greeting: Arc<Mutex<Option<String>>>,
    /// The host name it gives in its greeting and EHLO reply.
    name: Arc<Mutex<String>>,
    /// Transactions whose MAIL FROM arrived together with the commands after it.
    pipelined: Arc<AtomicUsize>,
    /// STARTTLS is offered, and how it goes.
    starttls: Arc<Mutex<Option<StartTls>>>,
    /// AUTH PLAIN is required (and offered over TLS) with this user and password.
    auth: Arc<Mutex<Option<(String, String)>>>,
}

/// What a sink does after `220` to STARTTLS.
#[derive(Clone)]
enum StartTls {
    /// A real handshake with this configuration.
    Working(TlsAcceptor),
    /// Garbage instead of a handshake, then the connection closes.
    Broken,
}

impl Sink {
    /// Two sinks on the same port, one on each of `a` and `b` (MX records carry no port, so
    /// every mail exchanger of a test must listen on the relay's `mx_port`).
    pub async fn pair(a: IpAddr, b: IpAddr) -> (Sink, Sink) {
        loop {
            let la = TcpListener::bind(SocketAddr::new(a, 0)).await.unwrap();
            let port = la.local_addr().unwrap().port();
            if let Ok(lb) = TcpListener::bind(SocketAddr::new(b, port)).await {
                return (Sink::serve(la), Sink::serve(lb));
            }
        }
    }

    /// A sink on `ip` with an ephemeral port.
    pub async fn start(ip: IpAddr) -> Sink {
        Self::bind(SocketAddr::new(ip, 0)).await
    }

    /// A sink on `addr` (IPv4 or IPv6).
    pub async fn bind(addr: SocketAddr) -> Sink {
        Sink::serve(TcpListener::bind(addr).await.unwrap())
    }

    fn serve(listener: TcpListener) -> Sink {
        let (hold, _) = watch::channel(false);
        let sink = Sink {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            arrived: Arc::default(),
            connections: Arc::default(),
            open: Arc::default(),
            peak: Arc::default(),
            hold: Arc::new(hold),
            held_reply: Arc::default(),
            pipelining: Arc::new(AtomicBool::new(true)),
            eight_bit: Arc::new(AtomicBool::new(true)),
            dsn: Arc::default(),
            requiretls: Arc::default(),
            refuse_greeting: Arc::default(),
            name: Arc::new(Mutex::new("sink.test".into())),
            pipelined: Arc::default(),
            starttls: Arc::default(),
            auth: Arc::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                s.connections.fetch_add(1, Ordering::SeqCst);
                let now = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                s.peak.fetch_max(now, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = s.session(Box::new(stream), n, false).await;
                    s.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        sink
    }

    /// Everything accepted so far.
    pub fn received(&self) -> Vec<Delivered> {
        self.received.lock().unwrap().clone()
    }

    /// How many accepted messages satisfy `f`, counted in place: polling this under load
    /// does not copy every message received (which would slow the sink's own sessions).
    pub fn count_where(&self, f: impl Fn(&Delivered) -> bool) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|d| f(d))
            .count()
    }

    /// The distinct subjects of the messages accepted so far.
    pub fn subjects(&self) -> std::collections::HashSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(Delivered::subject)
            .collect()
    }

    /// Messages whose content arrived, including held ones.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn peak_connections(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Advertises PIPELINING (the default) or not, from the next EHLO on.
    pub fn set_pipelining(&self, on: bool) {
        self.pipelining.store(on, Ordering::SeqCst);
    }

    /// Advertises 8BITMIME (the default) or not, from the next EHLO on.
    pub fn set_8bitmime(&self, on: bool) {
        self.eight_bit.store(on, Ordering::SeqCst);
    }

    /// Advertises REQUIRETLS (RFC 8689) inside TLS or not (the default), from the next EHLO
    /// on.
    pub fn set_requiretls(&self, on: bool) {
        self.requiretls.store(on, Ordering::SeqCst);
    }

    /// Greets new connections with `line` (such as `554 5.7.1 go away`) and closes them.
    pub fn refuse_greeting(&self, line: &str) {
        *self.refuse_greeting.lock().unwrap() = Some(line.to_string());
    }

    /// Calls itself `name` (instead of `sink.test`) in its greeting and EHLO reply, from
    /// the next connection on.
    pub fn set_name(&self, name: &str) {
        *self.name.lock().unwrap() = name.to_string();
    }

    /// Advertises DSN (RFC 3461) or not (the default), from the next EHLO on.
    pub fn set_dsn(&self, on: bool) {
        self.dsn.store(on, Ordering::SeqCst);
    }

    /// Transactions whose client sent MAIL FROM together with the commands after it.
    pub fn pipelined(&self) -> usize {
        self.pipelined.load(Ordering::SeqCst)
    }

    /// Offers STARTTLS from the next EHLO on, with a self-signed certificate.
    pub fn offer_starttls(&self) {
        *self.starttls.lock().unwrap() = Some(StartTls::Working(self_signed_acceptor()));
    }

    /// Offers STARTTLS from the next EHLO on, presenting what `acceptor` holds.
    pub fn offer_starttls_with(&self, acceptor: TlsAcceptor) {
        *self.starttls.lock().unwrap() = Some(StartTls::Working(acceptor));
    }

    /// Requires AUTH PLAIN as `user` with `password` before MAIL, offered only over TLS.
    pub fn require_auth(&self, user: &str, password: &str) {
        *self.auth.lock().unwrap() = Some((user.into(), password.into()));
    }

    /// Offers STARTTLS but answers the handshake with garbage and hangs up.
    pub fn offer_broken_starttls(&self) {
        *self.starttls.lock().unwrap() = Some(StartTls::Broken);
    }

    /// Holds end-of-DATA replies from now on.
    pub fn hold(&self) {
        *self.held_reply.lock().unwrap() = None;
        self.hold.send_replace(true);
    }

    /// Answers held and future messages at once.
    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    /// Answers the messages held now with `reply` (a refusal such as `451 4.3.0 ...`)
    /// instead of accepting them, and accepts later ones at once.
    pub fn release_with(&self, reply: &str) {
        *self.held_reply.lock().unwrap() = Some(format!("{reply}\r\n"));
        self.release();
    }

    /// One session over `stream`; `tls` when it is already encrypted (after STARTTLS, which
    /// starts a fresh session without a greeting, as RFC 3207 says).
    async fn session(&self, stream: Box<dyn Io>, conn: usize, tls: bool) -> std::io::Result<()> {
        // One buffered stream for reading lines and writing replies.
        let mut r = BufReader::new(stream);
        if !tls {
            let refusal = self.refuse_greeting.lock().unwrap().clone();
            if let Some(line) = refusal {
                say(&mut r, format!("{line}\r\n").as_bytes()).await?;
                return Ok(());
            }
            let greeting = format!("220 {} ESMTP test sink\r\n", self.name.lock().unwrap());
            say(&mut r, greeting.as_bytes()).await?;
        }
        let mut from = String::new();
        let mut mail_params = String::new();
        let mut rcpts = Vec::new();
        let mut rcpt_params = Vec::new();
        let mut count = 0;
        let mut user: Option<String> = None;
        let mut helo = String::new();
        let wanted = self.auth.lock().unwrap().clone();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let upper = line.to_ascii_uppercase();
            let arg = |prefix: &str| {
                line[prefix.len()..]
                    .trim()
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            let params = || {
                line.split_once('>')
                    .map_or("", |(_, rest)| rest)
                    .trim()
                    .to_string()
            };
            if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                helo = line[4..].trim().to_string();
            }
            let reply: String = if upper.starts_with("EHLO") {
                let pipelining = if self.pipelining.load(Ordering::SeqCst) {
                    "250-PIPELINING\r\n"
                } else {
                    ""
                };
                let starttls = if !tls && self.starttls.lock().unwrap().is_some() {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                let auth = if tls && wanted.is_some() {
                    "250-AUTH PLAIN\r\n"
                } else {
                    ""
                };
                let eight_bit = if self.eight_bit.load(Ordering::SeqCst) {
                    "250-8BITMIME\r\n"
                } else {
                    ""
                };
                let dsn = if self.dsn.load(Ordering::SeqCst) {
                    "250-DSN\r\n"
                } else {
                    ""
                };
                let requiretls = if tls && self.requiretls.load(Ordering::SeqCst) {
                    "250-REQUIRETLS\r\n"
                } else {
                    ""
                };
                let name = self.name.lock().unwrap().clone();
                format!(
                    "250-{name}\r\n{pipelining}{starttls}{auth}{eight_bit}{dsn}{requiretls}250-SIZE 100000000\r\n250 ENHANCEDSTATUSCODES\r\n"
                )
            } else if upper.starts_with("AUTH PLAIN ") && tls && wanted.is_some() {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(line[11..].trim())
                    .unwrap_or_default();
                let parts: Vec<String> = decoded
                    .split(|&b| b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                match (&wanted, parts.as_slice()) {
                    (Some((u, p)), [_, given_user, given_password])
                        if given_user == u && given_password == p =>
                    {
                        user = Some(u.clone());
                        "235 2.7.0 Authentication successful\r\n".into()
                    }
                    _ => "535 5.7.8 Error: authentication failed\r\n".into(),
                }
            } else if upper.starts_with("MAIL FROM:") && wanted.is_some() && user.is_none() {
                "530 5.7.0 Authentication required\r\n".into()
            } else if upper.starts_with("STARTTLS") && !tls {
                let acceptor = self.starttls.lock().unwrap().clone();
                let Some(acceptor) = acceptor else {
                    say(&mut r, b"502 5.5.1 Error: command not implemented\r\n").await?;
                    continue;
                };
                say(&mut r, b"220 2.0.0 Ready to start TLS\r\n").await?;
                let StartTls::Working(acceptor) = acceptor else {
                    say(&mut r, b"this is not a TLS server hello\r\n").await?;
                    return Ok(());
                };
                let encrypted = acceptor.accept(r.into_inner()).await?;
                return Box::pin(self.session(Box::new(encrypted), conn, true)).await;
            } else if upper.starts_with("HELO") {
                "250 sink.test\r\n".into()
            } else if upper.starts_with("MAIL FROM:") {
                if !r.buffer().is_empty() {
                    self.pipelined.fetch_add(1, Ordering::SeqCst);
                }
                from = arg("MAIL FROM:");
                mail_params = params();
                rcpts.clear();
                rcpt_params.clear();
                "250 2.1.0 Ok\r\n".into()
            } else if upper.starts_with("RCPT TO:") {
                let rcpt = arg("RCPT TO:");
                if rcpt.starts_with("reject") {
                    "550 5.1.1 No such user here\r\n".into()
                } else if rcpt.starts_with("tempfail") {
                    "451 4.2.0 Mailbox busy, try later\r\n".into()
                } else {
                    rcpts.push(rcpt);
                    rcpt_params.push(params());
                    "250 2.1.5 Ok\r\n".into()
                }
            } else if upper.starts_with("DATA") && rcpts.is_empty() {
                "554 5.5.1 Error: no valid recipients\r\n".into()
            } else if upper.starts_with("DATA") {
                say(&mut r, b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    let content = if l.first() == Some(&b'.') {
                        &l[1..]
                    } else {
                        &l[..]
                    };
                    data.extend_from_slice(content);
                }
                self.arrived.fetch_add(1, Ordering::SeqCst);
                let mut hold = self.hold.subscribe();
                if *hold.borrow() {
                    let _ = hold.wait_for(|held| !*held).await;
                    let refusal = self.held_reply.lock().unwrap().clone();
                    if let Some(reply) = refusal {
                        say(&mut r, reply.as_bytes()).await?;
                        rcpts.clear();
                        rcpt_params.clear();
                        continue;
                    }
                }
                count += 1;
                self.received.lock().unwrap().push(Delivered {
                    from: from.clone(),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                    tls,
                    auth: user.clone(),
                    helo: helo.clone(),
                    mail_params: mail_params.clone(),
                    rcpt_params: std::mem::take(&mut rcpt_params),
                });
                format!("250 2.0.0 Ok: queued as sink-{conn}-{count}\r\n")
            } else if upper.starts_with("QUIT") {
                say(&mut r, b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                rcpts.clear();
                rcpt_params.clear();
                "250 2.0.0 Ok\r\n".into()
            } else {
                "502 5.5.2 Error: command not recognized\r\n".into()
            };
            say(&mut r, reply.as_bytes()).await?;
        }
    }
}

/// Writes a reply and flushes it: a TLS stream keeps what the socket did not take until
/// flushed.
async fn say(w: &mut (impl tokio::io::AsyncWrite + Unpin), reply: &[u8]) -> std::io::Result<()> {
    w.write_all(reply).await?;
    w.flush().await
}

/// A TLS server configuration with a fresh self-signed certificate for `sink.test`.
fn self_signed_acceptor() -> TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// A mail exchanger that accepts connections and never says a word, as a black-holed
/// destination behaves; it counts the connections.
pub struct BlackHole {
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

impl BlackHole {
    /// Listens on `addr`.
    pub async fn start(addr: SocketAddr) -> BlackHole {
        let listener = TcpListener::bind(addr).await.unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        BlackHole { connections }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
