//! What a session needs from the rest of mailflow: the policy verdict for a recipient, a
//! place to stream a large body while it arrives, and a durable queue for the message. [`Services`] is the real implementation (gRPC policy
//! client and JetStream); the session is generic so that its state machine can be driven
//! over in-memory I/O in unit tests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mailflow_bus::{BodyStore, Bus, BusError, names};
use mailflow_proto::v1::{
    AcceptedMessage, AuthenticateRequest, AuthenticateResponse, Body, CheckConnectionRequest,
    CheckRecipientRequest, CheckSenderRequest, Verdict, policy_client::PolicyClient,
};
use mailflow_runtime::config::IngressConfig;
use mailflow_runtime::telemetry::{PropagateTrace, TracedChannel};
use prost::Message;
use tonic::transport::Endpoint;

use crate::IngressError;
use crate::verdicts::VerdictCache;

/// Why a backend call failed; the client gets `451 4.3.0` for any of them.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The policy service did not answer.
    #[error("policy service unavailable: {0}")]
    Policy(String),
    /// The message could not be made durable.
    #[error("queue unavailable: {0}")]
    Queue(String),
}

impl From<BusError> for BackendError {
    fn from(e: BusError) -> Self {
        BackendError::Queue(e.to_string())
    }
}

/// A body being stored while it arrives (the object store, for the real backend).
pub trait Spool: Send + std::fmt::Debug + 'static {
    /// Appends content.
    fn write(&mut self, content: &[u8]) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Ends the body; returns its reference once it is durable.
    fn finish(self) -> impl Future<Output = Result<Body, BackendError>> + Send;

    /// Gives the body up, removing what was written.
    fn abort(self) -> impl Future<Output = ()> + Send;
}

/// The services a session calls.
pub trait Backend: Clone + Send + Sync + 'static {
    /// Where large bodies are streamed.
    type Spool: Spool;

    /// Bodies up to this size travel inline in the queued message; larger ones are spooled.
    fn inline_limit(&self) -> usize;

    /// Starts storing the body of message `queue_id`.
    fn spool(&self, queue_id: &str) -> Self::Spool;

    /// Asks whether a new connection is served (blocklists, connection rate).
    fn check_connection(
        &self,
        request: CheckConnectionRequest,
    ) -> impl Future<Output = Result<Verdict, BackendError>> + Send;

    /// Asks whether a recipient is accepted.
    fn check_recipient(
        &self,
        request: CheckRecipientRequest,
    ) -> impl Future<Output = Result<Verdict, BackendError>> + Send;

    /// Asks whether the reverse path is accepted (not called for the null sender).
    fn check_sender(
        &self,
        request: CheckSenderRequest,
    ) -> impl Future<Output = Result<Verdict, BackendError>> + Send;

    /// Verifies AUTH credentials.
    fn authenticate(
        &self,
        request: AuthenticateRequest,
    ) -> impl Future<Output = Result<AuthenticateResponse, BackendError>> + Send;

    /// Makes the message (its body already inline or spooled) durable; returns only once it
    /// is.
    fn enqueue(
        &self,
        message: AcceptedMessage,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// The real backend: the policy service over gRPC and the `MAIL_IN` stream.
#[derive(Clone)]
pub struct Services {
    /// A shared, lazily connected channel to the policy service; requests carry the
    /// session's trace context.
    policy: PolicyClient<TracedChannel>,
    /// Per-call deadline for policy checks.
    policy_timeout: Duration,
    /// Recent recipient verdicts.
    verdicts: Arc<VerdictCache>,
    /// The NATS connection.
    bus: Bus,
    /// Where large bodies go.
    bodies: BodyStore,
}

impl Services {
    /// Builds the backend; the policy channel connects on first use.
    pub fn new(config: &IngressConfig, bus: Bus, bodies: BodyStore) -> Result<Self, IngressError> {
        let endpoint = Endpoint::from_shared(config.policy_url.clone())
            .map_err(|e| IngressError::PolicyUrl {
                url: config.policy_url.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(config.policy_timeout)
            .timeout(config.policy_timeout);
        Ok(Self {
            policy: PolicyClient::with_interceptor(endpoint.connect_lazy(), PropagateTrace),
            policy_timeout: config.policy_timeout,
            verdicts: Arc::new(VerdictCache::new(config.policy_cache_ttl)),
            bus,
            bodies,
        })
    }
}

impl Services {
    /// A verdict from the cache, or from `call` (then cached). Keys start with a letter
    /// naming the check: a sender request encodes like a recipient request without one.
    async fn cached<F, Fut>(&self, key: Vec<u8>, call: F) -> Result<Verdict, BackendError>
    where
        F: FnOnce(PolicyClient<TracedChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Verdict>, tonic::Status>>,
    {
        if let Some(verdict) = self.verdicts.get(&key) {
            return Ok(verdict);
        }
        let verdict = self.call(call(self.policy.clone())).await?;
        self.verdicts.put(key, &verdict);
        Ok(verdict)
    }

    /// One policy call with the configured deadline.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.policy_timeout, call).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(BackendError::Policy(status.to_string())),
            Err(_) => Err(BackendError::Policy("timed out".into())),
        }
    }
}

impl Spool for mailflow_bus::Spool {
    async fn write(&mut self, content: &[u8]) -> Result<(), BackendError> {
        Ok(mailflow_bus::Spool::write(self, content).await?)
    }

    async fn finish(self) -> Result<Body, BackendError> {
        Ok(mailflow_bus::Spool::finish(self).await?)
    }

    async fn abort(self) {
        mailflow_bus::Spool::abort(self).await;
    }
}

impl Backend for Services {
    type Spool = mailflow_bus::Spool;

    fn inline_limit(&self) -> usize {
        self.bodies.inline_limit()
    }

    fn spool(&self, queue_id: &str) -> Self::Spool {
        self.bodies.spool(queue_id)
    }

    async fn check_connection(
        &self,
        request: CheckConnectionRequest,
    ) -> Result<Verdict, BackendError> {
        let key = [b"C", request.encode_to_vec().as_slice()].concat();
        self.cached(key, |mut client| async move {
            client.check_connection(request).await
        })
        .await
    }

    async fn check_recipient(
        &self,
        request: CheckRecipientRequest,
    ) -> Result<Verdict, BackendError> {
        let key = [b"R", request.encode_to_vec().as_slice()].concat();
        self.cached(key, |mut client| async move {
            client.check_recipient(request).await
        })
        .await
    }

    async fn check_sender(&self, request: CheckSenderRequest) -> Result<Verdict, BackendError> {
        let key = [b"S", request.encode_to_vec().as_slice()].concat();
        self.cached(key, |mut client| async move {
            client.check_sender(request).await
        })
        .await
    }

    async fn authenticate(
        &self,
        request: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, BackendError> {
        let mut client = self.policy.clone();
        self.call(client.authenticate(request)).await
    }

    async fn enqueue(&self, message: AcceptedMessage) -> Result<(), BackendError> {
        let payload = Bytes::from(message.encode_to_vec());
        Ok(self
            .bus
            .publish(names::MAIL_IN_SUBJECT.into(), &message.queue_id, payload)
            .await?)
    }
}
