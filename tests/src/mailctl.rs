//! Runs the `mailctl` binary against a stack, as an operator would.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::binary;
use crate::stack::Stack;

/// What one `mailctl` run did.
pub struct Run {
    /// Exit status was success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `mailctl` against the stack's policy service (Directory, Quarantine) and relay
/// (Queue), with `stdin` as its input.
pub async fn run(stack: &Stack, args: &[&str], stdin: &str) -> Run {
    let policy = format!("http://{}", stack.policy);
    let queue = format!("http://{}", stack.queue);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary("mailctl"))
            .arg("--directory-server")
            .arg(policy)
            .arg("--server")
            .arg(queue)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// `mailctl` that must succeed; returns its output.
pub async fn ok(stack: &Stack, args: &[&str]) -> String {
    let run = run(stack, args, "").await;
    assert!(run.ok, "mailctl {args:?} failed: {}", run.stderr);
    run.stdout
}

/// `mailctl` that must fail with `code` in its message.
pub async fn refused(stack: &Stack, args: &[&str], code: &str) {
    let run = run(stack, args, "").await;
    assert!(!run.ok, "mailctl {args:?} succeeded: {}", run.stdout);
    assert!(run.stderr.contains(code), "{args:?}: {}", run.stderr);
}
