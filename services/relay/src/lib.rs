//! The mailflow relay: the delivery engine.
//!
//! It consumes delivery jobs from `MAIL_OUT` ([`consumer`]), delivers local recipients into
//! Maildir ([`maildir`]) and remote ones over SMTP ([`smtp_client`]) to the domain's mail
//! exchangers found with hickory (`mailflow-dns`) or to a smarthost, records every recipient's
//! outcome ([`status`]), and serves the gRPC `Queue` service ([`queue`]).

#![forbid(unsafe_code)]

pub mod budget;
pub mod consumer;
pub mod dane;
pub mod deliver;
pub mod destination;
pub mod gauges;
pub mod lifetime;
pub mod maildir;
pub mod mta_sts;
pub mod notify;
pub mod projection;
pub mod queue;
pub mod retry;
pub mod smtp_client;
pub mod status;
pub mod suspend;

use std::sync::Arc;
use std::time::Duration;

use mailflow_bus::{Bus, BusError, Topology};
use mailflow_proto::v1::queue_server::QueueServer;
use mailflow_runtime::Config;
use mailflow_runtime::grpc::GrpcError;
use tokio_util::sync::CancellationToken;

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// NATS could not be set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The resolver could not be built.
    #[error(transparent)]
    Resolver(#[from] mailflow_dns::ResolverSetupError),
    /// The gRPC server could not be built or failed.
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// The trust anchors for verified TLS could not be read.
    #[error(transparent)]
    TrustAnchors(#[from] smtp_client::tls::CaError),
    /// A secret file could not be read.
    #[error("cannot read {path}: {reason}")]
    Secret {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// The smarthost credentials: the user name from the configuration, the password from the
/// first line of its file.
fn smarthost_credentials(
    relay: &mailflow_runtime::config::RelayConfig,
) -> Result<Option<smtp_client::Credentials>, RelayError> {
    let (Some(username), Some(path)) = (&relay.smarthost_username, &relay.smarthost_password_file)
    else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| RelayError::Secret {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let password = text.lines().next().unwrap_or_default().to_string();
    Ok(Some(smtp_client::Credentials {
        username: username.clone(),
        password,
    }))
}

/// Runs the consumer and the Queue service until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let relay = &config.relay;
    let bus = Bus::connect(&config.nats, "mailflow-relay", &shutdown).await?;
    let topology = Topology::ensure(&bus, &shutdown).await?;
    let status = status::StatusBook::new(
        topology.status.clone(),
        topology.events.clone(),
        bus.clone(),
    );
    let resolver = mailflow_dns::MxResolver::new(&relay.dns_servers, relay.mx_port)?;
    let verified_tls = smtp_client::tls::verified(relay.tls_ca_file.as_deref())?;
    let mta_sts = relay.mta_sts.then(|| {
        Arc::new(mta_sts::MtaSts::new(
            resolver.clone(),
            verified_tls.clone(),
            relay.mta_sts_port,
            relay.connect_timeout + relay.command_timeout,
        ))
    });
    let mut own_names = vec![relay.hostname.clone(), config.ingress.hostname.clone()];
    own_names.dedup();
    let deliverer = deliver::Deliverer {
        hostname: relay.hostname.clone(),
        own_names,
        maildir_root: relay.maildir_root.clone(),
        resolver,
        smarthost: relay.smarthost.clone().filter(|s| !s.is_empty()),
        transports: relay.transports.clone(),
        connect_timeout: relay.connect_timeout,
        command_timeout: relay.command_timeout,
        connections: Arc::default(),
        tls: smtp_client::tls::opportunistic(),
        verified_tls,
        mta_sts,
        unreachable: Arc::new(destination::Unreachable::new(relay.destination_backoff)),
        dane: if relay.dane {
            let validating = mailflow_dns::MxResolver::validating(
                &relay.dns_servers,
                relay.dnssec_trust_anchor.as_deref(),
            )?;
            Some(Arc::new(dane::Dane::new(validating, relay.mx_port)))
        } else {
            None
        },
        smarthost_auth: smarthost_credentials(relay)?,
    };
    // An empty schedule would leave deferred jobs nowhere to wait: retry every 5 minutes.
    let retry_delays: Vec<Duration> = match relay.retry_delays.as_slice() {
        [] => vec![Duration::from_secs(300)],
        delays => delays.iter().map(|d| **d).collect(),
    };
    let suspensions = suspend::Suspensions::open(
        bus.open_kv(suspend::BUCKET, 1, Duration::ZERO).await?,
        shutdown.clone(),
    );
    let projection = Arc::new(projection::Projection::default());
    {
        let (projection, status_kv, events) = (
            projection.clone(),
            topology.status.clone(),
            topology.events.clone(),
        );
        let stop = shutdown.clone();
        let retention = bus.retention();
        tokio::spawn(async move { projection.follow(status_kv, events, retention, stop).await });
    }
    let queue_service = queue::QueueService {
        status: status.clone(),
        events: topology.events.clone(),
        projection,
        suspensions: suspensions.clone(),
        bus: bus.clone(),
        hostname: relay.hostname.clone(),
        bodies: topology.bodies.clone(),
    };
    if relay.metrics_listen.is_some() {
        tokio::spawn(gauges::sample(bus.clone(), shutdown.clone()));
    }
    let mut movers = tokio::task::JoinSet::new();
    for (tier, delay) in retry_delays.iter().enumerate() {
        movers.spawn(retry::mover(bus.clone(), tier, *delay, shutdown.clone()));
    }
    // Jobs parked in tiers a shorter `retry_delays` no longer has wait the last delay.
    let last = retry_delays.last().copied().unwrap_or_default();
    for tier in retry::stray_tiers(&bus, retry_delays.len()).await {
        tracing::info!(
            tier,
            "jobs in a retry tier no longer configured: moved after the last delay"
        );
        movers.spawn(retry::mover(bus.clone(), tier, last, shutdown.clone()));
    }
    let consumer = Arc::new(consumer::Consumer {
        bus,
        status: status.clone(),
        bodies: topology.bodies.clone(),
        deliverer,
        concurrency: relay.concurrency.max(1),
        memory: budget::BodyBudget::new(relay.body_memory),
        ack_wait: relay.ack_wait,
        retry_delays,
        lifetime: lifetime::Lifetime {
            max: relay.max_queue_lifetime,
            warn_after: relay.delay_warning_time,
        },
        destinations: destination::Destinations::new(
            relay.destination_concurrency,
            relay.destination_rate,
        ),
        suspensions,
    });
    let consumer_task = tokio::spawn(consumer.run(shutdown.clone()));

    let (health, router) = mailflow_runtime::grpc::server()?;
    health
        .set_serving::<QueueServer<queue::QueueService>>()
        .await;
    let addr = relay.grpc_listen;
    tracing::info!(%addr, "Queue gRPC ready");
    let served = router
        .add_service(QueueServer::new(queue_service))
        .serve_with_shutdown(addr, shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    if tokio::time::timeout(relay.shutdown_grace, consumer_task)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?relay.shutdown_grace, "deliveries still under way at the end of the shutdown grace; abandoned");
    }
    movers.join_all().await;
    served.map_err(|source| GrpcError::Serve { addr, source }.into())
}
