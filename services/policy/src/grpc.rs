//! The gRPC services: `Policy` (in-session checks) and `Directory`.

use std::net::IpAddr;

use ipnet::IpNet;
use mailflow_proto::v1::{
    AddDomainRequest, AddUserRequest, CheckRecipientRequest, DomainInfo, ListDomainsRequest,
    ListDomainsResponse, ListUsersRequest, ListUsersResponse, UserInfo, Verdict, directory_server,
    policy_server,
};
use mailflow_smtp::address;
use tonic::{Request, Response, Status};

use crate::checks::{self, Client, Destination};
use crate::directory::{Directory, DirectoryError};

/// gRPC `Policy`.
pub struct PolicyService {
    /// Where local domains and users are looked up.
    directory: Directory,
    /// Networks allowed to relay without authentication.
    relay_networks: Vec<IpNet>,
}

impl PolicyService {
    /// The service over `directory`.
    pub fn new(directory: Directory, relay_networks: Vec<IpNet>) -> Self {
        Self {
            directory,
            relay_networks,
        }
    }
}

fn unavailable(e: DirectoryError) -> Status {
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
        let session = req
            .session
            .ok_or_else(|| Status::invalid_argument("session is required"))?;
        let ip: IpAddr = session
            .client_ip
            .parse()
            .map_err(|_| Status::invalid_argument("session.client_ip is not an IP address"))?;
        let Ok(rcpt) = address::parse_mailbox(&req.recipient) else {
            return Ok(Response::new(checks::bad_address(&req.recipient)));
        };
        let dest = if !rcpt.is_address_literal()
            && self
                .directory
                .is_local_domain(&rcpt.domain)
                .await
                .map_err(unavailable)?
        {
            let user = self
                .directory
                .user(&rcpt.local, &rcpt.domain)
                .await
                .map_err(unavailable)?;
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
            authenticated: !session.auth_identity.is_empty(),
            relay_networks: &self.relay_networks,
        };
        Ok(Response::new(checks::decide_recipient(&rcpt, dest, client)))
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
