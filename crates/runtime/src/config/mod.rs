//! The configuration: one TOML file (`mailflow.toml`) with a section per service.
//!
//! Every key can be overridden by an environment variable named
//! `MAILFLOW_<SECTION>__<KEY>` (upper case, a double underscore between the parts), for
//! example `MAILFLOW_RELAY__SMARTHOST=127.0.0.1:2526`. The value is read as a TOML value when
//! it parses as one (`25`, `true`, `["10.0.0.0/8"]`) and as a string otherwise.
//!
//! A bad configuration is reported whole: [`load`] keeps going past the first bad key and
//! returns every problem, and services exit with [`EX_USAGE`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Value;

mod scan;
mod transport;

pub use scan::{HeaderRule, Pattern, RuleAction, ScanConfig};
pub use transport::{Transport, TransportError};

/// The exit code for a bad configuration: sysexits' EX_USAGE, as the design requires.
pub const EX_USAGE: i32 = 64;

/// The prefix of environment overrides.
const ENV_PREFIX: &str = "MAILFLOW_";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How to reach NATS and how the streams are created.
    pub nats: NatsConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// OpenTelemetry traces.
    pub trace: TraceConfig,
    /// The SMTP ingress.
    pub ingress: IngressConfig,
    /// The policy service.
    pub policy: PolicyConfig,
    /// The relay.
    pub relay: RelayConfig,
}

/// `[nats]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Replicas of every stream and bucket (3 in production, 1 for a single node).
    pub replicas: usize,
    /// How long to wait for a JetStream publish acknowledgement.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Bodies larger than this travel in the `mail-bodies` object store, not inline.
    pub inline_body_limit: usize,
    /// How long the history is kept: status records, events, quarantined messages and
    /// stored bodies (what `mailctl status` can still show after final delivery).
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            publish_timeout: Duration::from_secs(5),
            inline_body_limit: 512 * 1024,
            history_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter directive such as `info` or `mailflow_relay=debug,info`; `RUST_LOG`
    /// takes precedence when set.
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: LogLevel("info".into()),
        }
    }
}

/// `[trace]`: spans exported over OTLP/gRPC, one trace per message across the services.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// The collector's OTLP/gRPC endpoint (`http://otel-collector:4317`); no span is
    /// exported when it is unset.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, from 0 to 1; a span whose caller's trace was
    /// recorded is always recorded, so a message's trace is never cut in two.
    pub sample_ratio: Ratio,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: Ratio(1.0),
        }
    }
}

/// A number from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Ratio(pub f64);

impl TryFrom<f64> for Ratio {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Ratio(value))
        } else {
            Err(format!("{value} is not between 0 and 1"))
        }
    }
}

/// A tracing filter directive, checked when the file is read: a typo is a bad key, not a
/// service that quietly logs at another level.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LogLevel(pub String);

impl TryFrom<String> for LogLevel {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match tracing_subscriber::EnvFilter::try_new(&value) {
            Ok(_) => Ok(LogLevel(value)),
            Err(e) => Err(format!("`{value}` is not a filter directive: {e}")),
        }
    }
}

/// A count the RFCs give a floor: a smaller value is refused when the file is read rather
/// than quietly raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "usize")]
pub struct AtLeast<const MIN: usize>(pub usize);

impl<const MIN: usize> TryFrom<usize> for AtLeast<MIN> {
    type Error = String;

    fn try_from(value: usize) -> Result<Self, String> {
        if value >= MIN {
            Ok(AtLeast(value))
        } else {
            Err(format!("{value} is below the minimum of {MIN}"))
        }
    }
}

/// What the ingress does with a bare CR or LF in a message body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Refuse the message with `550 5.5.2`.
    #[default]
    Reject,
    /// Rewrite each bare CR or LF as CRLF.
    Normalize,
}

/// `[ingress]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressConfig {
    /// Tokio worker threads of this service's process; 0 means one per CPU. Where every
    /// service shares a few cores (one small machine), one thread each saves the context
    /// switches of idle workers waking up.
    pub worker_threads: usize,
    /// Where Prometheus `/metrics` is served; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Where gRPC health (`grpc.health.v1`) is served, as by every service: serving once
    /// the SMTP listeners are up, not serving from the start of a drain; off when unset.
    pub health_listen: Option<SocketAddr>,
    /// The name in the greeting, the EHLO reply and Received headers.
    pub hostname: String,
    /// The MX listener (port 25 in production); STARTTLS is offered when a certificate is set.
    pub mx_listen: SocketAddr,
    /// The submission listener (port 587: STARTTLS, then AUTH, are required); off when unset.
    pub submission_listen: Option<SocketAddr>,
    /// The implicit-TLS submission listener (port 465, RFC 8314); off when unset.
    pub smtps_listen: Option<SocketAddr>,
    /// The certificate chain (PEM). Needed for STARTTLS and the TLS listeners.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for changes (rotation without restart).
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    /// The policy service's gRPC endpoint.
    pub policy_url: String,
    /// How long an in-session policy check may take before the client gets `451 4.3.0`.
    #[serde(with = "humantime_serde")]
    pub policy_timeout: Duration,
    /// How long a recipient verdict of the policy service is reused for the same question;
    /// `0s` asks every time.
    #[serde(with = "humantime_serde")]
    pub policy_cache_ttl: Duration,
    /// Simultaneous SMTP sessions per ingress process.
    pub max_connections: usize,
    /// Simultaneous SMTP sessions from one client IP.
    pub max_connections_per_ip: usize,
    /// The largest message accepted, in octets (advertised with SIZE).
    pub max_message_size: usize,
    /// Recipients per transaction; more get `452 4.5.3`. At least 100, which a server must
    /// accept (RFC 5321 §4.5.3.1.8).
    pub max_recipients: AtLeast<100>,
    /// The longest command line, in octets. At least 512, the longest command RFC 5321
    /// §4.5.3.1.4 allows.
    pub max_line_length: AtLeast<512>,
    /// Errors in one session before it is closed with `421`.
    pub hard_error_limit: u32,
    /// How long to wait for a command (RFC 5321 §4.5.3.2: 5 minutes).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// How long to wait for each block of DATA (RFC 5321 §4.5.3.2: 3 minutes).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// The slowest average rate of message data tolerated after the first 30 seconds, in
    /// octets per second; slower clients get `421 4.4.2`.
    pub min_data_rate: u64,
    /// Bare CR or LF in DATA: `reject` or `normalize`.
    pub bare_line_endings: BareLineEndings,
    /// How long open sessions may run on after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            worker_threads: 0,
            metrics_listen: None,
            health_listen: None,
            hostname: "localhost".into(),
            mx_listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            submission_listen: None,
            smtps_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_reload_interval: Duration::from_secs(30),
            policy_url: "http://127.0.0.1:50051".into(),
            policy_timeout: Duration::from_secs(10),
            policy_cache_ttl: Duration::from_secs(30),
            max_connections: 1000,
            max_connections_per_ip: 50,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: AtLeast(100),
            max_line_length: AtLeast(2048),
            hard_error_limit: 20,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            min_data_rate: 500,
            bare_line_endings: BareLineEndings::Reject,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Where the Policy and Directory gRPC services listen.
    pub grpc_listen: SocketAddr,
    /// Client networks allowed to relay to remote domains without authentication.
    pub relay_networks: Vec<IpNet>,
    /// Number of `mail.out.<shard>` subjects delivery jobs are spread over.
    pub out_shards: u32,
    /// Failed AUTH attempts per client IP within `auth_failure_window`; past this the
    /// client gets `421 4.7.0` and is disconnected.
    pub auth_failure_limit: u32,
    /// How long a failed AUTH attempt counts against its client IP.
    #[serde(with = "humantime_serde")]
    pub auth_failure_window: Duration,
    /// Tokio worker threads of this service's process; 0 means one per CPU. Where every
    /// service shares a few cores (one small machine), one thread each saves the context
    /// switches of idle workers waking up.
    pub worker_threads: usize,
    /// Where Prometheus `/metrics` is served; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// DNS blocklists asked about every connecting client outside `relay_networks` (for
    /// example `zen.spamhaus.org`); a listed client gets `554 5.7.1` instead of a greeting.
    pub dnsbl_zones: Vec<String>,
    /// Connections one client IP may open per minute (counted by every replica); past it
    /// `421 4.7.0`. 0 means no limit.
    pub connection_rate_limit: u32,
    /// Messages (MAIL FROM requests) a client IP may start per hour; 0 means no limit.
    pub rate_limit_per_ip: u32,
    /// Messages an authenticated user may start per hour; 0 means no limit.
    pub rate_limit_per_user: u32,
    /// Nameservers as `ip:port` for the in-session DNS checks (null MX of recipient domains,
    /// existence of sender domains); empty means the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// Refuse MAIL FROM on the MX port when the sender's SPF result is `fail` (`550
    /// 5.7.23`) or a temporary DNS error (`451 4.7.24`), RFC 7372. Off by default: the
    /// result is recorded either way and DMARC judges it after the queue.
    pub spf_enforce: bool,
    /// The scan stage's checks.
    pub scan: ScanConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            relay_networks: Vec::new(),
            out_shards: 16,
            auth_failure_limit: 5,
            auth_failure_window: Duration::from_secs(15 * 60),
            dns_servers: Vec::new(),
            worker_threads: 0,
            metrics_listen: None,
            rate_limit_per_ip: 0,
            rate_limit_per_user: 0,
            dnsbl_zones: Vec::new(),
            connection_rate_limit: 0,
            spf_enforce: false,
            scan: ScanConfig::default(),
        }
    }
}

/// `[relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Tokio worker threads of this service's process; 0 means one per CPU. Where every
    /// service shares a few cores (one small machine), one thread each saves the context
    /// switches of idle workers waking up.
    pub worker_threads: usize,
    /// Where Prometheus `/metrics` is served; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// The name sent in EHLO, the suffix of Maildir file names and the Reporting-MTA of
    /// delivery notices.
    pub hostname: String,
    /// Where the Queue gRPC service listens.
    pub grpc_listen: SocketAddr,
    /// The root of local Maildirs: mail for `user@domain` goes to `<root>/<domain>/<user>/`.
    pub maildir_root: PathBuf,
    /// Nameservers as `ip:port`; empty means the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// The port of remote mail exchangers (25; tests use their own).
    pub mx_port: u16,
    /// Send all remote mail to this `host:port` instead of the MX hosts (unless
    /// `transports` names another way for the domain).
    pub smarthost: Option<String>,
    /// Transports by destination domain (lower case), e.g. `"example.org" =
    /// "lmtp:127.0.0.1:24"`; a transport set on a local domain in the directory wins.
    pub transports: std::collections::BTreeMap<String, Transport>,
    /// Authenticate to the smarthost as this user (AUTH PLAIN, only over TLS).
    pub smarthost_username: Option<String>,
    /// The file holding the smarthost password (its first line), e.g. a mounted secret; the
    /// password itself never sits in the configuration.
    pub smarthost_password_file: Option<PathBuf>,
    /// Delivery jobs handled at once by one relay process.
    pub concurrency: usize,
    /// Octets of message bodies one relay process holds at once for deliveries: a job
    /// whose body does not fit waits for others to finish (one larger than the whole
    /// budget goes alone), so memory stays bounded whatever size of mail arrives.
    pub body_memory: usize,
    /// Look up and honour destinations' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// Honour DANE (RFC 7672): DNSSEC-validated TLSA records of MX hosts make TLS with a
    /// matching certificate mandatory.
    pub dane: bool,
    /// A file of DNSKEY records to trust for DNSSEC validation instead of the root's keys
    /// (a private DNSSEC tree; the tests' signed zones).
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// The HTTPS port MTA-STS policies are fetched from (443; tests use their own).
    pub mta_sts_port: u16,
    /// More trust anchors (PEM) for verified TLS (MTA-STS policy hosts and MX hosts), on
    /// top of the Web PKI roots; for private PKIs and tests.
    pub tls_ca_file: Option<PathBuf>,
    /// Deliveries to one destination domain at once, per relay process (not for Maildir);
    /// a job beyond it goes back to the end of the queue.
    pub destination_concurrency: usize,
    /// Deliveries per second to one destination domain, per relay process; 0 means no
    /// limit.
    pub destination_rate: f64,
    /// After no server of a destination answered (connection refused or timed out), its
    /// mail is deferred at once, without connecting, for this long; `0s` never.
    #[serde(with = "humantime_serde")]
    pub destination_backoff: Duration,
    /// How long a job may stay unacknowledged before JetStream gives it to another replica;
    /// the relay reports progress while it works, so this bounds recovery after a crash.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// TCP connect timeout towards a mail exchanger.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for each reply of a mail exchanger (RFC 5321 §4.5.3.2).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Delays before the retries of a temporarily failed job; the last one repeats.
    pub retry_delays: Vec<humantime_serde::Serde<Duration>>,
    /// How long a message may stay deferred; then its deferred recipients bounce and the
    /// sender gets a failure report.
    #[serde(with = "humantime_serde")]
    pub max_queue_lifetime: Duration,
    /// Tell the sender once when a message is still undelivered after this long; `0s` never
    /// does (the default, as in Postfix).
    #[serde(with = "humantime_serde")]
    pub delay_warning_time: Duration,
    /// How long deliveries under way may go on after a shutdown signal (jobs fetched and
    /// not started are released at once); past it they are abandoned, and JetStream gives
    /// their jobs to another replica after `ack_wait`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            worker_threads: 0,
            metrics_listen: None,
            hostname: "localhost".into(),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            maildir_root: PathBuf::from("var/mail"),
            dns_servers: Vec::new(),
            mx_port: 25,
            smarthost: None,
            transports: std::collections::BTreeMap::new(),
            smarthost_username: None,
            smarthost_password_file: None,
            concurrency: 64,
            body_memory: 256 * 1024 * 1024,
            dane: true,
            dnssec_trust_anchor: None,
            mta_sts: true,
            mta_sts_port: 443,
            tls_ca_file: None,
            destination_concurrency: 20,
            destination_rate: 0.0,
            destination_backoff: Duration::from_secs(60),
            ack_wait: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            retry_delays: [300, 600, 1200, 2400, 3600]
                .map(|s| Duration::from_secs(s).into())
                .to_vec(),
            max_queue_lifetime: Duration::from_secs(5 * 86_400),
            delay_warning_time: Duration::ZERO,
            shutdown_grace: Duration::from_secs(60),
        }
    }
}

/// One bad key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `ingress.mx_listen`, or the file name for a syntax error.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// Everything wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Each bad key, in the order found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                key: key.into(),
                message: message.into(),
            }],
        }
    }
}

/// Reads the file at `path` (if any), applies `MAILFLOW_*__*` overrides from the process
/// environment, and deserializes the result.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigError::single(p.display().to_string(), format!("cannot read: {e}"))
        })?,
        None => String::new(),
    };
    let name = path.map_or("<defaults>".to_string(), |p| p.display().to_string());
    let config: Config = from_parts(&name, &text, std::env::vars())?;
    match config.problems() {
        problems if problems.is_empty() => Ok(config),
        problems => Err(ConfigError { problems }),
    }
}

impl Config {
    /// Settings that are each valid but do not go together, and endpoints that are not
    /// URIs (found here, with every other bad key, rather than when first used).
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let endpoints = [
            ("ingress.policy_url", Some(&self.ingress.policy_url)),
            ("trace.otlp_endpoint", self.trace.otlp_endpoint.as_ref()),
        ];
        for (key, url) in endpoints {
            if let Some(url) = url
                && let Err(e) = url.parse::<tonic::transport::Uri>()
            {
                problems.push(Problem {
                    key: key.into(),
                    message: format!("{url:?} is not a URI: {e}"),
                });
            }
        }
        // Bodies stored apart and status records expire after `history_retention`; a
        // message still being retried past it would have lost its content.
        if self.nats.history_retention < self.relay.max_queue_lifetime {
            problems.push(Problem {
                key: "nats.history_retention".into(),
                message: format!(
                    "{} is shorter than relay.max_queue_lifetime ({}): messages still queued would lose their stored bodies",
                    humantime_serde::re::humantime::format_duration(self.nats.history_retention),
                    humantime_serde::re::humantime::format_duration(self.relay.max_queue_lifetime)
                ),
            });
        }
        problems
    }
}

/// Parses `text`, applies overrides from `env`, and deserializes into `T`, collecting every
/// bad key.
pub fn from_parts<T: DeserializeOwned>(
    name: &str,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError::single(name, e.to_string().trim().to_string())
    })?;
    let mut problems = Vec::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if let Err(message) = set_path(&mut root, &segments, parse_env_value(&value)) {
            problems.push(Problem {
                key: format!("{var} ({})", segments.join(".")),
                message,
            });
        }
    }
    let mut value = Value::Table(root);
    // Each pass reports one problem and removes the offending key, so the next pass can
    // find the next one. The bound only guards against a key that cannot be removed.
    for _ in 0..100 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(cfg) if problems.is_empty() => return Ok(cfg),
            Ok(_) => break,
            Err(err) => {
                let mut segments: Vec<String> = err
                    .path()
                    .iter()
                    .filter_map(|s| match s {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                        _ => None,
                    })
                    .collect();
                let message = err.into_inner().message().to_string();
                if let Some(field) = unknown_field(&message)
                    && segments.last().map(String::as_str) != Some(field)
                {
                    segments.push(field.to_string());
                }
                problems.push(Problem {
                    key: if segments.is_empty() {
                        name.to_string()
                    } else {
                        segments.join(".")
                    },
                    message: message.clone(),
                });
                if !remove_path(&mut value, &segments) {
                    break;
                }
            }
        }
    }
    Err(ConfigError { problems })
}

/// The field name of serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn set_path(root: &mut toml::Table, segments: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = segments.split_last().ok_or("empty key")?;
    let mut table = root;
    for seg in parents {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{seg}` is not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn remove_path(value: &mut Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for seg in parents {
        current = match current {
            Value::Table(t) => match t.get_mut(seg) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match current {
        Value::Table(t) => t.remove(last).is_some(),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        from_parts(
            "test.toml",
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = parse("", &[]).unwrap();
        assert_eq!(cfg.ingress.max_recipients, AtLeast(100));
        assert_eq!(cfg.relay.mx_port, 25);
        assert!(cfg.policy.relay_networks.is_empty());
    }

    #[test]
    fn reads_typed_values() {
        let cfg = parse(
            "[ingress]\nmx_listen = \"0.0.0.0:25\"\ncommand_timeout = \"2m\"\n[policy]\nrelay_networks = [\"10.0.0.0/8\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.ingress.mx_listen.port(), 25);
        assert_eq!(cfg.ingress.command_timeout, Duration::from_secs(120));
        assert_eq!(cfg.policy.relay_networks[0].to_string(), "10.0.0.0/8");
    }

    #[test]
    fn env_overrides_file() {
        let cfg = parse(
            "[relay]\nmx_port = 25\n",
            &[
                ("MAILFLOW_RELAY__MX_PORT", "2526"),
                ("MAILFLOW_RELAY__SMARTHOST", "smart.test:587"),
                ("MAILFLOW_POLICY__RELAY_NETWORKS", "[\"127.0.0.1/32\"]"),
                ("MAILFLOW_SMARTHOST", "ignored: no double underscore"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.relay.mx_port, 2526);
        assert_eq!(cfg.relay.smarthost.as_deref(), Some("smart.test:587"));
        assert_eq!(cfg.policy.relay_networks.len(), 1);
    }

    #[test]
    fn lists_every_bad_key() {
        let err = parse(
            "[ingress]\nmx_listen = \"nonsense\"\nmax_recipients = -4\ntypo = 1\n[nope]\nx = 1\n[relay]\ncommand_timeout = \"soon\"\n",
            &[("MAILFLOW_POLICY__GRPC_LISTEN", "not-an-address")],
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "ingress.mx_listen",
            "ingress.max_recipients",
            "ingress.typo",
            "nope",
            "relay.command_timeout",
            "policy.grpc_listen",
        ] {
            assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
        }
        assert_eq!(err.problems.len(), 6, "{err}");
    }

    #[test]
    fn trace_sampling_is_a_ratio() {
        let cfg = parse(
            "[trace]\notlp_endpoint = \"http://collector:4317\"\nsample_ratio = 0.25\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.trace.sample_ratio, Ratio(0.25));
        assert_eq!(
            cfg.trace.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert!(parse("", &[]).unwrap().trace.otlp_endpoint.is_none());
        let err = parse("[trace]\nsample_ratio = 1.5\n", &[]).unwrap_err();
        assert_eq!(err.problems[0].key, "trace.sample_ratio");
        assert!(err.problems[0].message.contains("between 0 and 1"), "{err}");
    }

    #[test]
    fn floors_and_filters_are_checked_when_read() {
        let err = parse(
            "[log]\nlevel = \"mailflow=loud\"\n[ingress]\nmax_line_length = 100\nmax_recipients = 99\n",
            &[],
        )
        .unwrap_err();
        let found: Vec<(&str, &str)> = err
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(found.len(), 3, "{err}");
        assert!(
            found
                .iter()
                .any(|(key, message)| *key == "log.level" && message.contains("`mailflow=loud`")),
            "{err}"
        );
        assert!(found.contains(&("ingress.max_line_length", "100 is below the minimum of 512")));
        assert!(found.contains(&("ingress.max_recipients", "99 is below the minimum of 100")));
        let cfg = parse(
            "[log]\nlevel = \"mailflow_relay=debug,info\"\n[ingress]\nmax_line_length = 512\nmax_recipients = 100\n",
            &[],
        )
        .unwrap();
        assert_eq!(cfg.log.level, LogLevel("mailflow_relay=debug,info".into()));
        assert_eq!(cfg.ingress.max_line_length, AtLeast(512));
    }

    #[test]
    fn the_history_outlives_the_queue() {
        let cfg = parse(
            "[nats]\nhistory_retention = \"1d\"\n[relay]\nmax_queue_lifetime = \"5d\"\n",
            &[],
        )
        .unwrap();
        let problems = cfg.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "nats.history_retention");
        assert!(
            problems[0].message.contains("5days"),
            "{}",
            problems[0].message
        );
        assert!(parse("", &[]).unwrap().problems().is_empty());
        let cfg = parse("[ingress]\npolicy_url = \"http://exa mple:1\"\n", &[]).unwrap();
        assert_eq!(cfg.problems()[0].key, "ingress.policy_url");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = parse("[ingress\n", &[]).unwrap_err();
        assert_eq!(err.problems[0].key, "test.toml");
    }
}
