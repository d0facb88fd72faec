//! The end-to-end test harness: everything a user would run, for real.
//!
//! - [`nats::Nats`]: a real `nats-server` with JetStream on an ephemeral port and a
//!   temporary store, which a test can stop and start again;
//! - [`dns::DnsServer`]: a real DNS server (hickory-server, in process) serving test zones
//!   over UDP and TCP;
//! - [`pki::TestCa`] and [`https::HttpsServer`]: verified TLS and an MTA-STS policy host;
//! - [`dovecot::Dovecot`]: a real Dovecot with LMTP, IMAP and POP3;
//! - [`sink::Sink`]: SMTP servers on loopback addresses that record what they receive;
//! - [`stack::Stack`]: the three service binaries with a per-test configuration;
//! - [`client::SmtpClient`]: a plain SMTP client that checks reply codes;
//! - [`mailctl`]: the operator's tool run against a stack;
//! - [`otlp::Collector`]: an OTLP trace receiver that keeps the spans the services export;
//! - [`world::World`]: a stack with two remote domains and their exchangers;
//! - `peers/smtp_peer.py`: Python's smtplib as a client ([`peer`]).
//!
//! Each test gets its own ports and directories, so tests run in parallel. Waiting is done
//! by polling with a deadline ([`wait::until`]).

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used)]

pub mod client;
pub mod dns;
pub mod dovecot;
pub mod https;
pub mod mailctl;
pub mod nats;
pub mod otlp;
pub mod peer;
pub mod pki;
pub mod sink;
pub mod stack;
pub mod wait;
pub mod world;

use std::net::TcpListener;
use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A built binary of the workspace (`scripts/test` builds them before the tests run).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug/<name>
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A port that is free on 127.0.0.1 right now, for a service the test starts.
///
/// Ports come from below the kernel's ephemeral range (32768-60999 by default): a port taken
/// from that range could be handed to some outgoing connection (a client of NATS, say)
/// before the service binds it. Each call in this process gets a different port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % COUNT;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + n) % COUNT).expect("in range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
