//! A real nats-server with JetStream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{free_port, wait, workspace_root};

/// A nats-server process on its own port and store.
pub struct Nats {
    /// The client port.
    pub port: u16,
    /// The JetStream store directory.
    store: PathBuf,
    /// The log file.
    log: PathBuf,
    /// The running process, if started.
    child: Option<Child>,
}

/// The nats-server binary: `MAILFLOW_NATS_SERVER`, or the one `scripts/install-deps` puts
/// in `.tools/venv/bin`.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("MAILFLOW_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let path = workspace_root().join(".tools/venv/bin/nats-server");
    assert!(
        path.exists(),
        "nats-server not found at {}: run scripts/install-deps nats (scripts/test does)",
        path.display()
    );
    path
}

impl Nats {
    /// Starts a server storing under `dir`.
    pub async fn start(dir: &Path) -> Nats {
        let mut nats = Nats {
            port: free_port(),
            store: dir.join("nats"),
            log: dir.join("nats.log"),
            child: None,
        };
        nats.restart().await;
        nats
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        wait::port_open(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(20),
        )
        .await;
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }
}
