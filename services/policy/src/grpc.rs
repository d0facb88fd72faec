//! The gRPC services: `Policy` (in-session checks) and `Directory`.

use std::net::IpAddr;

use ipnet::IpNet;
use mailflow_proto::v1::{
    AddDomainRequest, AddUserRequest, AuthenticateRequest, AuthenticateResponse,
    CheckRecipientRequest, CheckSenderRequest, DomainInfo, ListDomainsRequest, ListDomainsResponse,
    ListUsersRequest, ListUsersResponse, SessionInfo, UserInfo, Verdict,
    authenticate_response::Result as AuthResult, directory_server, policy_server,
};
use mailflow_smtp::address;
use tonic::{Request, Response, Status};

use crate::auth::{self, AuthError, FailureCounter};
use crate::checks::{self, Client, Destination};
use crate::directory::{Directory, DirectoryError};

/// gRPC `Policy`.
pub struct PolicyService {
    /// Where local domains and users are looked up.
    directory: Directory,
    /// Networks allowed to relay without authentication.
    relay_networks: Vec<IpNet>,
    /// Failed AUTH attempts per client IP.
    failures: FailureCounter,
}

impl PolicyService {
    /// The service over `directory`.
    pub fn new(directory: Directory, relay_networks: Vec<IpNet>, failures: FailureCounter) -> Self {
        Self {
            directory,
            relay_networks,
            failures,
        }
    }
}

fn client_ip(session: Option<&SessionInfo>) -> Result<IpAddr, Status> {
    let session = session.ok_or_else(|| Status::invalid_argument("session is required"))?;
    session
        .client_ip
        .parse()
        .map_err(|_| Status::invalid_argument("session.client_ip is not an IP address"))
}

fn unavailable_dir(e: DirectoryError) -> Status {
    tracing::warn!(error = %e, "directory lookup failed");
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl policy_server::Policy for PolicyService {
    async fn check_recipient(
        &self,
        request: Request<CheckRecipientRequest>,
    ) -> Result<Response<Verdict>, Status> {
        let req = request.into_inner();
        let ip = client_ip(req.session.as_ref())?;
        let authenticated = req
            .session
            .as_ref()
            .is_some_and(|s| !s.auth_identity.is_empty());
        let Ok(rcpt) = address::parse_mailbox(&req.recipient) else {
            return Ok(Response::new(checks::bad_address(&req.recipient)));
        };
        let dest = if !rcpt.is_address_literal()
            && self
                .directory
                .is_local_domain(&rcpt.domain)
                .await
                .map_err(unavailable_dir)?
        {
            let user = self
                .directory
                .user(&rcpt.local, &rcpt.domain)
                .await
                .map_err(unavailable_dir)?;
            if user.is_some() {
                Destination::LocalUser
            } else {
                Destination::UnknownLocalUser
            }
        } else {
            Destination::Remote
        };
        let client = Client {
            ip,
            authenticated,
            relay_networks: &self.relay_networks,
        };
        Ok(Response::new(checks::decide_recipient(&rcpt, dest, client)))
    }

    async fn check_sender(
        &self,
        request: Request<CheckSenderRequest>,
    ) -> Result<Response<Verdict>, Status> {
        let req = request.into_inner();
        client_ip(req.session.as_ref())?;
        let identity = req.session.map(|s| s.auth_identity).unwrap_or_default();
        Ok(Response::new(checks::decide_sender(&req.sender, &identity)))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let ip = client_ip(req.session.as_ref())?;
        let answer = |result: AuthResult, identity: String| {
            Ok(Response::new(AuthenticateResponse {
                result: result as i32,
                identity,
            }))
        };
        let unavailable = |e: AuthError| Status::unavailable(e.to_string());
        if self.failures.exhausted(ip).await.map_err(unavailable)? {
            tracing::warn!(client = %ip, "AUTH refused: too many failures");
            return answer(AuthResult::TooManyFailures, String::new());
        }
        let user = match address::parse_mailbox(&req.username) {
            Ok(m) => self
                .directory
                .user(&m.local, &m.domain)
                .await
                .map_err(unavailable_dir)?,
            Err(_) => None,
        };
        let verified = match user {
            Some(user) => {
                let password = req.password;
                tokio::task::spawn_blocking(move || {
                    auth::verify(&user, &password).then_some(user.address)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
            }
            None => None,
        };
        match verified {
            Some(identity) => {
                tracing::info!(client = %ip, %identity, mechanism = %req.mechanism, "AUTH succeeded");
                answer(AuthResult::Ok, identity)
            }
            None => {
                self.failures
                    .record_failure(ip)
                    .await
                    .map_err(unavailable)?;
                tracing::warn!(client = %ip, username = %req.username, mechanism = %req.mechanism, "AUTH failed");
                answer(AuthResult::BadCredentials, String::new())
            }
        }
    }
}

/// gRPC `Directory`.
pub struct DirectoryService {
    /// The shared directory.
    directory: Directory,
}

impl DirectoryService {
    /// The service over `directory`.
    pub fn new(directory: Directory) -> Self {
        Self { directory }
    }
}

fn status(e: DirectoryError) -> Status {
    match e {
        DirectoryError::InvalidDomain(_)
        | DirectoryError::InvalidAddress(_)
        | DirectoryError::EmptyPassword => Status::invalid_argument(e.to_string()),
        DirectoryError::UnknownDomain(_) => Status::failed_precondition(e.to_string()),
        DirectoryError::Storage(_) => Status::unavailable(e.to_string()),
        DirectoryError::Hash(_) => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl directory_server::Directory for DirectoryService {
    async fn add_domain(
        &self,
        request: Request<AddDomainRequest>,
    ) -> Result<Response<DomainInfo>, Status> {
        let domain = self
            .directory
            .add_domain(&request.into_inner().domain)
            .await
            .map_err(status)?;
        tracing::info!(%domain, "domain added");
        Ok(Response::new(DomainInfo { domain }))
    }

    async fn list_domains(
        &self,
        _request: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsResponse>, Status> {
        let domains = self.directory.domains().await.map_err(status)?;
        Ok(Response::new(ListDomainsResponse {
            domains: domains
                .into_iter()
                .map(|domain| DomainInfo { domain })
                .collect(),
        }))
    }

    async fn add_user(
        &self,
        request: Request<AddUserRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        let req = request.into_inner();
        let address = self
            .directory
            .add_user(&req.address, &req.password)
            .await
            .map_err(status)?;
        tracing::info!(%address, "user added");
        Ok(Response::new(UserInfo { address }))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let domain = request.into_inner().domain;
        let domain = (!domain.is_empty()).then_some(domain);
        let users = self
            .directory
            .users(domain.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(ListUsersResponse {
            users: users
                .into_iter()
                .map(|address| UserInfo { address })
                .collect(),
        }))
    }
}
