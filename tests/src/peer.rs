//! Runs `peers/smtp_peer.py` (Python's smtplib) and returns what it printed.

use std::net::SocketAddr;
use std::process::Command;

use crate::stack::Stack;
use crate::workspace_root;

/// The peer's output: `key: value` lines.
pub struct PeerOutput {
    /// Exit status was success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error (Python's traceback on failure).
    pub stderr: String,
}

impl PeerOutput {
    /// The value printed for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
    }
}

/// Runs the peer with `args` on a blocking thread.
pub async fn run(args: Vec<String>) -> PeerOutput {
    let script = workspace_root().join("tests/peers/smtp_peer.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).args(args).output()
    })
    .await
    .expect("peer thread")
    .expect("python3 runs");
    PeerOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// smtplib's `submit` as demo@example.test (password `demo`) against `server` (submission
/// or implicit TLS) of `stack`, with more arguments in `extra`; asserts the peer succeeded.
pub async fn submit(
    stack: &Stack,
    server: SocketAddr,
    to: &str,
    subject: &str,
    extra: &[&str],
) -> PeerOutput {
    let server = server.to_string();
    let mut args = vec![
        "submit",
        "--server",
        &server,
        "--ca",
        stack.cert.to_str().expect("UTF-8 path"),
        "--user",
        "demo@example.test",
        "--password",
        "demo",
        "--to",
        to,
        "--subject",
        subject,
    ];
    args.extend_from_slice(extra);
    let out = run(args.iter().map(|s| s.to_string()).collect()).await;
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    out
}
