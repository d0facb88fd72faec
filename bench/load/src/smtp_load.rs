//! `smtp-load`: an SMTP load generator like Postfix's `smtp-source` (one message per
//! connection, many sessions at once), which can also use STARTTLS and hold a steady rate.
//!
//! Usage: `smtp-load <host:port> <messages> <sessions> <size> [--rate <msg/s>] [--tls
//! <ca.pem>]`. With `--tls` every connection upgrades with STARTTLS and verifies the
//! server's certificate against `ca.pem` (name `localhost`). With `--rate` messages start
//! at that pace overall. Prints `accepted=<n> failed=<n> seconds=<s> rate=<msg/s>`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// What went wrong with one message.
#[derive(Debug)]
enum Failure {
    /// The connection failed.
    Io(std::io::Error),
    /// The server answered something else.
    Reply(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "i/o error: {e}"),
            Failure::Reply(line) => write!(f, "unexpected reply: {line}"),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// Reads one reply and checks its code.
async fn expect<S: AsyncRead + Unpin>(r: &mut BufReader<S>, code: &str) -> Result<(), Failure> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(Failure::Reply("connection closed".into()));
        }
        if !line.starts_with(code) {
            return Err(Failure::Reply(line.trim_end().to_string()));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// The transaction after the greeting and EHLO.
async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    body: &[u8],
) -> Result<(), Failure> {
    s.write_all(
        b"MAIL FROM:<load@client.bench.test>\r\nRCPT TO:<rcpt@remote.bench.test>\r\nDATA\r\n",
    )
    .await?;
    expect(s, "250").await?;
    expect(s, "250").await?;
    expect(s, "354").await?;
    s.write_all(body).await?;
    expect(s, "250").await?;
    s.write_all(b"QUIT\r\n").await?;
    expect(s, "221").await
}

/// One message over a new connection.
async fn one(addr: SocketAddr, body: &[u8], tls: Option<&TlsConnector>) -> Result<(), Failure> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = BufReader::new(tcp);
    expect(&mut s, "220").await?;
    s.write_all(b"EHLO client.bench.test\r\n").await?;
    expect(&mut s, "250").await?;
    let Some(tls) = tls else {
        return transaction(&mut s, body).await;
    };
    s.write_all(b"STARTTLS\r\n").await?;
    expect(&mut s, "220").await?;
    let name = ServerName::try_from("localhost").expect("a valid name");
    let encrypted = tls.connect(name, s.into_inner()).await?;
    let mut s = BufReader::new(encrypted);
    s.write_all(b"EHLO client.bench.test\r\n").await?;
    expect(&mut s, "250").await?;
    transaction(&mut s, body).await
}

/// A message of about `size` octets, ending with the end-of-data line.
fn body(size: usize) -> Vec<u8> {
    let mut b =
        b"From: load@client.bench.test\r\nTo: rcpt@remote.bench.test\r\nSubject: load\r\n\r\n"
            .to_vec();
    while b.len() < size {
        b.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n",
        );
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn connector(ca: &str) -> TlsConnector {
    let pem = std::fs::read(ca).unwrap_or_else(|e| {
        eprintln!("cannot read {ca}: {e}");
        std::process::exit(64);
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).expect("a CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!(
            "usage: smtp-load <host:port> <messages> <sessions> <size> [--rate <msg/s>] [--tls <ca.pem>]"
        );
        std::process::exit(64)
    };
    let [_, addr, messages, sessions, size, rest @ ..] = args.as_slice() else {
        usage()
    };
    let (Ok(addr), Ok(messages), Ok(sessions), Ok(size)) = (
        addr.parse::<SocketAddr>(),
        messages.parse::<usize>(),
        sessions.parse::<usize>(),
        size.parse::<usize>(),
    ) else {
        usage()
    };
    let (mut rate, mut tls) = (0.0f64, None);
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        match (flag.as_str(), rest.next()) {
            ("--rate", Some(r)) => rate = r.parse().unwrap_or_else(|_| usage()),
            ("--tls", Some(ca)) => tls = Some(connector(ca)),
            _ => usage(),
        }
    }
    let body = Arc::new(body(size));
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let (body, next, failed, tls) = (body.clone(), next.clone(), failed.clone(), tls.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= messages {
                    return;
                }
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                if let Err(e) = one(addr, &body, tls.as_ref()).await
                    && failed.fetch_add(1, Ordering::SeqCst) < 3
                {
                    eprintln!("message {i}: {e}");
                }
            }
        });
    }
    tasks.join_all().await;
    let seconds = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::SeqCst);
    println!(
        "accepted={} failed={failed} seconds={seconds:.3} rate={:.0}",
        messages - failed,
        (messages - failed) as f64 / seconds
    );
}
