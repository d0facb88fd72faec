//! gRPC `Directory`: domains, users, aliases and DKIM keys, as `mailctl` manages them.

use mailflow_proto::v1::{
    AddAliasRequest, AddDomainRequest, AddUserRequest, AliasInfo, DkimKeyInfo, DomainInfo,
    GenerateDkimKeyRequest, ListAliasesRequest, ListAliasesResponse, ListDkimKeysRequest,
    ListDkimKeysResponse, ListDomainsRequest, ListDomainsResponse, ListUsersRequest,
    ListUsersResponse, RemoveAliasRequest, RemoveAliasResponse, RemoveDkimKeyRequest,
    RemoveDkimKeyResponse, RemoveDomainRequest, RemoveDomainResponse, RemoveUserRequest,
    RemoveUserResponse, SetPasswordRequest, UserInfo, directory_server,
};
use tonic::{Request, Response, Status};

use crate::directory::{Directory, DirectoryError};

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
        | DirectoryError::EmptyPassword
        | DirectoryError::NoTargets
        | DirectoryError::InvalidSelector(_)
        | DirectoryError::InvalidTransport(_) => Status::invalid_argument(e.to_string()),
        DirectoryError::UnknownDomain(_) | DirectoryError::DomainInUse { .. } => {
            Status::failed_precondition(e.to_string())
        }
        DirectoryError::NotFound(_) => Status::not_found(e.to_string()),
        DirectoryError::Storage(_) => Status::unavailable(e.to_string()),
        DirectoryError::Hash(_) | DirectoryError::Dkim(_) => Status::internal(e.to_string()),
    }
}

/// `Some(domain)` unless empty: the "all domains" filter of the list calls.
fn filter(domain: &str) -> Option<&str> {
    (!domain.is_empty()).then_some(domain)
}

#[tonic::async_trait]
impl directory_server::Directory for DirectoryService {
    async fn add_domain(
        &self,
        request: Request<AddDomainRequest>,
    ) -> Result<Response<DomainInfo>, Status> {
        let req = request.into_inner();
        let info = self
            .directory
            .add_domain(&req.domain, &req.transport)
            .await
            .map_err(status)?;
        tracing::info!(domain = %info.domain, transport = %info.transport, "domain added");
        Ok(Response::new(info))
    }

    async fn list_domains(
        &self,
        _request: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsResponse>, Status> {
        let domains = self.directory.domains().await.map_err(status)?;
        Ok(Response::new(ListDomainsResponse { domains }))
    }

    async fn remove_domain(
        &self,
        request: Request<RemoveDomainRequest>,
    ) -> Result<Response<RemoveDomainResponse>, Status> {
        let domain = self
            .directory
            .remove_domain(&request.into_inner().domain)
            .await
            .map_err(status)?;
        tracing::info!(%domain, "domain removed");
        Ok(Response::new(RemoveDomainResponse {}))
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
        let users = self
            .directory
            .users(filter(&request.into_inner().domain))
            .await
            .map_err(status)?;
        Ok(Response::new(ListUsersResponse {
            users: users
                .into_iter()
                .map(|address| UserInfo { address })
                .collect(),
        }))
    }

    async fn set_password(
        &self,
        request: Request<SetPasswordRequest>,
    ) -> Result<Response<UserInfo>, Status> {
        let req = request.into_inner();
        let address = self
            .directory
            .set_password(&req.address, &req.password)
            .await
            .map_err(status)?;
        tracing::info!(%address, "password changed");
        Ok(Response::new(UserInfo { address }))
    }

    async fn remove_user(
        &self,
        request: Request<RemoveUserRequest>,
    ) -> Result<Response<RemoveUserResponse>, Status> {
        let address = self
            .directory
            .remove_user(&request.into_inner().address)
            .await
            .map_err(status)?;
        tracing::info!(%address, "user removed");
        Ok(Response::new(RemoveUserResponse {}))
    }

    async fn add_alias(
        &self,
        request: Request<AddAliasRequest>,
    ) -> Result<Response<AliasInfo>, Status> {
        let req = request.into_inner();
        let alias = self
            .directory
            .add_alias(&req.source, &req.targets)
            .await
            .map_err(status)?;
        tracing::info!(source = %alias.source, targets = ?alias.targets, "alias set");
        Ok(Response::new(alias))
    }

    async fn list_aliases(
        &self,
        request: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        let aliases = self
            .directory
            .aliases(filter(&request.into_inner().domain))
            .await
            .map_err(status)?;
        Ok(Response::new(ListAliasesResponse { aliases }))
    }

    async fn remove_alias(
        &self,
        request: Request<RemoveAliasRequest>,
    ) -> Result<Response<RemoveAliasResponse>, Status> {
        let req = request.into_inner();
        let remaining = self
            .directory
            .remove_alias(&req.source, &req.targets)
            .await
            .map_err(status)?;
        tracing::info!(source = %req.source, removed = ?req.targets, "alias changed");
        Ok(Response::new(RemoveAliasResponse { remaining }))
    }

    async fn generate_dkim_key(
        &self,
        request: Request<GenerateDkimKeyRequest>,
    ) -> Result<Response<DkimKeyInfo>, Status> {
        let req = request.into_inner();
        let key = self
            .directory
            .generate_dkim(&req.domain, &req.selector, req.algorithm())
            .await
            .map_err(status)?;
        tracing::info!(domain = %key.domain, selector = %key.selector, "DKIM key generated");
        Ok(Response::new(key))
    }

    async fn list_dkim_keys(
        &self,
        _request: Request<ListDkimKeysRequest>,
    ) -> Result<Response<ListDkimKeysResponse>, Status> {
        let keys = self.directory.dkim_keys().await.map_err(status)?;
        Ok(Response::new(ListDkimKeysResponse { keys }))
    }

    async fn remove_dkim_key(
        &self,
        request: Request<RemoveDkimKeyRequest>,
    ) -> Result<Response<RemoveDkimKeyResponse>, Status> {
        let domain = request.into_inner().domain;
        self.directory.remove_dkim(&domain).await.map_err(status)?;
        tracing::info!(%domain, "DKIM key removed");
        Ok(Response::new(RemoveDkimKeyResponse {}))
    }
}
