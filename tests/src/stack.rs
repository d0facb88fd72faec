//! The three mailflow services as real processes with a per-test configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use mailflow_proto::v1::{
    AddAliasRequest, AddDomainRequest, AddUserRequest, GetMessageRequest, MessageStatus,
    RecipientState, RemoteReply, directory_client::DirectoryClient, queue_client::QueueClient,
};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::nats::Nats;
use crate::{binary, free_port, wait};

/// What a test can vary.
pub struct Options {
    /// The DNS server the relay asks.
    pub dns: SocketAddr,
    /// The port of the test's mail exchangers.
    pub mx_port: u16,
    /// `policy.relay_networks`.
    pub relay_networks: Vec<String>,
    /// More `[relay]` settings, TOML lines.
    pub relay_extra: String,
    /// More `[policy]` settings, TOML lines.
    pub policy_extra: String,
    /// More `[nats]` settings, TOML lines.
    pub nats_extra: String,
    /// Further sections (TOML), such as `[trace]`.
    pub sections: String,
}

/// A running stack.
pub struct Stack {
    /// Temporary directory: config, logs, NATS store, Maildirs.
    pub dir: TempDir,
    /// The NATS server.
    pub nats: Nats,
    /// The ingress' SMTP (MX) address; STARTTLS is offered.
    pub smtp: SocketAddr,
    /// The submission listener (STARTTLS and AUTH required).
    pub submission: SocketAddr,
    /// The implicit-TLS listener.
    pub smtps: SocketAddr,
    /// The server certificate (PEM, self-signed for localhost, 127.0.0.1 and
    /// mx.example.test), which clients use as their trust anchor.
    pub cert: PathBuf,
    /// The policy service's gRPC address.
    pub policy: SocketAddr,
    /// The relay's gRPC address.
    pub queue: SocketAddr,
    /// The ingress' gRPC health address.
    pub ingress_health: SocketAddr,
    /// Where each service serves Prometheus `/metrics`, by binary name.
    pub metrics: HashMap<&'static str, SocketAddr>,
    /// The config file.
    config: PathBuf,
    /// Running services by binary name.
    procs: HashMap<&'static str, Child>,
}

/// The service binaries.
pub const INGRESS: &str = "mailflow-ingress";
/// The policy binary.
pub const POLICY: &str = "mailflow-policy";
/// The relay binary.
pub const RELAY: &str = "mailflow-relay";

impl Stack {
    /// Starts NATS and the three services, and makes `example.test` local with user `demo`.
    pub async fn start(opts: Options) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let nats = Nats::start(dir.path()).await;
        let smtp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let submission = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let smtps = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (cert, key) = write_certificate(dir.path());
        let policy = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let queue = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let ingress_health = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics: HashMap<&'static str, SocketAddr> = [INGRESS, POLICY, RELAY]
            .into_iter()
            .map(|name| (name, SocketAddr::from(([127, 0, 0, 1], free_port()))))
            .collect();
        let networks: Vec<String> = opts
            .relay_networks
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        let config = dir.path().join("mailflow.toml");
        let text = format!(
            r#"[nats]
url = "{nats}"
publish_timeout = "2s"
{nats_extra}

[log]
level = "info,async_nats=warn"

[ingress]
hostname = "mx.example.test"
mx_listen = "{smtp}"
submission_listen = "{submission}"
smtps_listen = "{smtps}"
tls_cert = "{cert}"
tls_key = "{key}"
tls_reload_interval = "200ms"
policy_url = "http://{policy}"
policy_timeout = "5s"
metrics_listen = "{ingress_metrics}"
health_listen = "{ingress_health}"

[policy]
grpc_listen = "{policy}"
metrics_listen = "{policy_metrics}"
relay_networks = [{networks}]
auth_failure_limit = 3
dns_servers = ["{dns}"]
{policy_extra}

[relay]
hostname = "relay.example.test"
grpc_listen = "{queue}"
metrics_listen = "{relay_metrics}"
maildir_root = "{maildir}"
dns_servers = ["{dns}"]
mx_port = {mx_port}
connect_timeout = "5s"
command_timeout = "10s"
{relay_extra}

{sections}
"#,
            policy_extra = opts.policy_extra,
            sections = opts.sections,
            nats_extra = opts.nats_extra,
            // Quick retries and recovery unless the test sets its own.
            relay_extra = [("retry_delays", "[\"1s\"]"), ("ack_wait", "\"2s\"")]
                .iter()
                .filter(|(key, _)| !opts.relay_extra.contains(&format!("{key} =")))
                .fold(opts.relay_extra.clone(), |extra, (key, value)| {
                    format!("{key} = {value}\n{extra}")
                }),
            nats = nats.url(),
            cert = cert.display(),
            key = key.display(),
            networks = networks.join(", "),
            maildir = dir.path().join("mail").display(),
            dns = opts.dns,
            mx_port = opts.mx_port,
            ingress_metrics = metrics[INGRESS],
            policy_metrics = metrics[POLICY],
            relay_metrics = metrics[RELAY],
        );
        std::fs::write(&config, text).unwrap();
        let mut stack = Stack {
            dir,
            nats,
            smtp,
            submission,
            smtps,
            cert,
            policy,
            queue,
            ingress_health,
            metrics,
            config,
            procs: HashMap::new(),
        };
        for name in [POLICY, RELAY, INGRESS] {
            stack.start_service(name).await;
        }
        stack.add_domain("example.test").await;
        stack.add_user("demo@example.test", "demo").await;
        stack
    }

    /// Starts (or restarts) one service and waits until it listens.
    pub async fn start_service(&mut self, name: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(binary(name))
            .env("MAILFLOW_CONFIG", &self.config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        self.procs.insert(name, child);
        let addr = match name {
            INGRESS => self.smtp,
            POLICY => self.policy,
            _ => self.queue,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            let exited = self
                .procs
                .get_mut(name)
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "{name} is not listening on {addr} (exit: {exited:?}); its log:\n{}",
                self.log(name)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts another replica of `name` with listeners on ports of its own (same NATS, same
    /// buckets); it runs until the returned process is dropped. Returns its main address:
    /// the MX listener of an ingress, the gRPC listener of the policy or the relay.
    pub async fn start_replica(&self, name: &'static str) -> (SocketAddr, Child) {
        self.start_replica_with(name, &[]).await
    }

    /// [`Stack::start_replica`] with more settings (`("RELAY__HOSTNAME", "r2.test")`:
    /// `MAILFLOW_` variables without the prefix). Its log is `<name>-replica-<port>.log`.
    pub async fn start_replica_with(
        &self,
        name: &'static str,
        settings: &[(&str, &str)],
    ) -> (SocketAddr, Child) {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let port = || format!("127.0.0.1:{}", free_port());
        let (section, main) = match name {
            INGRESS => ("INGRESS", "MX_LISTEN"),
            POLICY => ("POLICY", "GRPC_LISTEN"),
            _ => ("RELAY", "GRPC_LISTEN"),
        };
        let mut env = vec![
            (format!("MAILFLOW_{section}__{main}"), addr.to_string()),
            (format!("MAILFLOW_{section}__METRICS_LISTEN"), port()),
        ];
        if name == INGRESS {
            env.push(("MAILFLOW_INGRESS__SUBMISSION_LISTEN".into(), port()));
            env.push(("MAILFLOW_INGRESS__SMTPS_LISTEN".into(), port()));
            env.push(("MAILFLOW_INGRESS__HEALTH_LISTEN".into(), port()));
        }
        env.extend(
            settings
                .iter()
                .map(|(k, v)| (format!("MAILFLOW_{k}"), v.to_string())),
        );
        let log = std::fs::File::create(self.replica_log(name, addr)).unwrap();
        let child = Command::new(binary(name))
            .env("MAILFLOW_CONFIG", &self.config)
            .envs(env)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("a second replica starts");
        wait::port_open(addr, Duration::from_secs(30)).await;
        (addr, child)
    }

    /// The log file of the replica of `name` whose main address is `addr`.
    fn replica_log(&self, name: &str, addr: SocketAddr) -> PathBuf {
        self.dir
            .path()
            .join(format!("{name}-replica-{}.log", addr.port()))
    }

    /// Kills a service with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self, name: &'static str) {
        let mut child = self.procs.remove(name).expect("service running");
        child.kill().await.unwrap();
    }

    /// Sends SIGTERM and waits for a clean exit, returning the exit status.
    pub async fn terminate(&mut self, name: &'static str) -> std::process::ExitStatus {
        self.sigterm(name);
        self.wait_exit(name).await
    }

    /// Sends SIGTERM to a service without waiting.
    pub fn sigterm(&self, name: &'static str) {
        let pid = self.procs[name].id().expect("pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status of a service that has exited; `None` while it runs.
    pub fn exited(&mut self, name: &'static str) -> Option<std::process::ExitStatus> {
        self.procs.get_mut(name)?.try_wait().unwrap()
    }

    /// Waits (at most 30 s) until a service exits; returns its exit status.
    pub async fn wait_exit(&mut self, name: &'static str) -> std::process::ExitStatus {
        let mut child = self.procs.remove(name).expect("service running");
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("exit within 30 s")
            .unwrap()
    }

    /// The peak resident memory of a running service so far (`VmHWM`), in octets.
    pub fn peak_rss(&self, name: &'static str) -> u64 {
        let kb: u64 = self
            .proc_status(name, "VmHWM")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmHWM in kB");
        kb * 1024
    }

    /// A field of a running service's `/proc/<pid>/status`, trimmed.
    pub fn proc_status(&self, name: &'static str, field: &str) -> String {
        let pid = self.procs[name].id().expect("service running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
            .trim()
            .to_string()
    }

    /// The log of a service, for failure messages.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The samples of a service's `/metrics`: `name{labels}` to value.
    pub async fn scrape(&self, name: &str) -> HashMap<String, f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.metrics[name])
            .await
            .unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: mailflow\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    /// The Maildir root.
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Files in `new/` of a local user's Maildir.
    pub fn mailbox(&self, domain: &str, user: &str) -> Vec<Vec<u8>> {
        let dir = self.maildir().join(domain).join(user).join("new");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    async fn directory(&self) -> DirectoryClient<tonic::transport::Channel> {
        DirectoryClient::connect(format!("http://{}", self.policy))
            .await
            .expect("connect to Directory")
    }

    /// Adds a local domain through the Directory service.
    pub async fn add_domain(&self, domain: &str) {
        self.directory()
            .await
            .add_domain(AddDomainRequest {
                domain: domain.into(),
                ..Default::default()
            })
            .await
            .expect("AddDomain");
    }

    /// Adds a user through the Directory service.
    pub async fn add_user(&self, address: &str, password: &str) {
        self.directory()
            .await
            .add_user(AddUserRequest {
                address: address.into(),
                password: password.into(),
            })
            .await
            .expect("AddUser");
    }

    /// Adds an alias through the Directory service.
    pub async fn add_alias(&self, source: &str, target: &str) {
        self.directory()
            .await
            .add_alias(AddAliasRequest {
                source: source.into(),
                targets: vec![target.into()],
            })
            .await
            .expect("AddAlias");
    }

    /// `Queue.GetMessage`.
    pub async fn get_message(&self, queue_id: &str) -> Result<MessageStatus, tonic::Status> {
        let client = self
            .queue_client()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        get_message_over(client, queue_id).await
    }

    /// A client of the relay's Queue service (one connection, for many calls).
    pub async fn queue_client(
        &self,
    ) -> Result<QueueClient<tonic::transport::Channel>, tonic::transport::Error> {
        QueueClient::connect(format!("http://{}", self.queue)).await
    }

    /// Waits until every recipient of `queue_id` is in `state`, and returns the record.
    pub async fn wait_state(&self, queue_id: &str, state: RecipientState) -> MessageStatus {
        wait::until(
            &format!("{queue_id} {state:?}"),
            Duration::from_secs(30),
            || async {
                self.get_message(queue_id).await.ok().filter(|s| {
                    !s.recipients.is_empty() && s.recipients.iter().all(|r| r.state() == state)
                })
            },
        )
        .await
    }

    /// Waits until every recipient of `queue_id` is in a final state, and returns the record.
    pub async fn wait_final(&self, queue_id: &str, timeout: Duration) -> MessageStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let last = self.get_message(queue_id).await;
            if let Ok(s) = &last
                && !s.recipients.is_empty()
                && s.recipients.iter().all(|r| {
                    matches!(
                        r.state(),
                        RecipientState::Delivered | RecipientState::Bounced
                    )
                })
            {
                return s.clone();
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "message {queue_id} not final after {timeout:?}; last status {last:?}\npolicy log:\n{}\nrelay log:\n{}",
                    self.log(POLICY),
                    self.log(RELAY)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The reply recorded for recipient `index` of `status` (a test fails when there is none).
pub fn last_reply(status: &MessageStatus, index: usize) -> &RemoteReply {
    status.recipients[index]
        .last_reply
        .as_ref()
        .unwrap_or_else(|| panic!("no reply recorded for recipient {index}: {status:?}"))
}

/// [`last_reply`], checked to carry `code` and enhanced status code `enhanced` (a test fails
/// otherwise).
#[track_caller]
pub fn reply_with<'a>(
    status: &'a MessageStatus,
    index: usize,
    code: u32,
    enhanced: &str,
) -> &'a RemoteReply {
    let reply = last_reply(status, index);
    assert_eq!(
        (reply.code, reply.enhanced.as_str()),
        (code, enhanced),
        "{reply:?}"
    );
    reply
}

/// A stack for tests of local mail only: no relaying, and a DNS server (returned so that it
/// lives as long as the stack) that knows the clients' domain `client.test` and the DNS
/// blocklist `bl.test`, which lists 127.0.0.6.
pub async fn local() -> (Stack, crate::dns::DnsServer) {
    local_with_policy("").await
}

/// [`local`] with more `[policy]` settings (TOML lines).
pub async fn local_with_policy(policy_extra: &str) -> (Stack, crate::dns::DnsServer) {
    local_with_zones(policy_extra, &[]).await
}

/// [`local_with_policy`] with more zones, each `(origin, zone file text)`.
pub async fn local_with_zones(
    policy_extra: &str,
    zones: &[(String, String)],
) -> (Stack, crate::dns::DnsServer) {
    let blocklist = "$ORIGIN bl.test.\n$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\n6.0.0.127 IN A 127.0.0.2\n".to_string();
    let mut all = vec![
        crate::dns::mx_zone("client.test", "127.0.0.9"),
        ("bl.test".to_string(), blocklist),
    ];
    all.extend_from_slice(zones);
    let all: Vec<(&str, String)> = all.iter().map(|(o, t)| (o.as_str(), t.clone())).collect();
    let dns = crate::dns::DnsServer::start(&all).await;
    let stack = Stack::start(Options {
        dns: dns.addr,
        mx_port: 25,
        relay_networks: vec![],
        relay_extra: format!("dnssec_trust_anchor = \"{}\"\n", dns.anchor().display()),
        policy_extra: policy_extra.into(),
        nats_extra: String::new(),
        sections: String::new(),
    })
    .await;
    (stack, dns)
}

/// Writes a fresh self-signed certificate and key; returns their paths.
pub fn write_certificate(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "mx.example.test".to_string(),
    ];
    let generated = rcgen::generate_simple_self_signed(names).expect("certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// `Queue.GetMessage` over a client already connected (see [`Stack::queue_client`]), for
/// many calls on one connection.
pub async fn get_message_over(
    mut client: QueueClient<tonic::transport::Channel>,
    queue_id: &str,
) -> Result<MessageStatus, tonic::Status> {
    client
        .get_message(GetMessageRequest {
            queue_id: queue_id.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}
