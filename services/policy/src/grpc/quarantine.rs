//! gRPC `Quarantine`: the messages the scan stage held, for `mailctl quarantine`.

use mailflow_bus::names;
use mailflow_proto::v1::{
    ListQuarantineRequest, ListQuarantineResponse, QuarantineEntry, QuarantineRequest,
    quarantine_server,
};
use tonic::{Request, Response, Status};

use crate::quarantine::{Quarantine, QuarantineError};

/// gRPC `Quarantine`.
pub struct QuarantineService {
    /// The shared quarantine.
    quarantine: Quarantine,
}

impl QuarantineService {
    /// The service over `quarantine`.
    pub fn new(quarantine: Quarantine) -> Self {
        Self { quarantine }
    }
}

fn status(e: QuarantineError) -> Status {
    match e {
        QuarantineError::NotFound(_) => Status::not_found(e.to_string()),
        QuarantineError::Storage(_) => Status::unavailable(e.to_string()),
    }
}

/// The queue id of a request, which must be given and well formed.
fn queue_id(request: Request<QuarantineRequest>) -> Result<String, Status> {
    let id = request.into_inner().queue_id;
    if id.is_empty() {
        return Err(Status::invalid_argument("queue_id is required"));
    }
    if !names::is_queue_id(&id) {
        return Err(Status::invalid_argument(format!(
            "queue_id: {id:?} is not a queue id (26 letters and digits)"
        )));
    }
    Ok(id)
}

#[tonic::async_trait]
impl quarantine_server::Quarantine for QuarantineService {
    async fn list(
        &self,
        _request: Request<ListQuarantineRequest>,
    ) -> Result<Response<ListQuarantineResponse>, Status> {
        let entries = self.quarantine.list().await.map_err(status)?;
        Ok(Response::new(ListQuarantineResponse { entries }))
    }

    async fn release(
        &self,
        request: Request<QuarantineRequest>,
    ) -> Result<Response<QuarantineEntry>, Status> {
        let id = queue_id(request)?;
        Ok(Response::new(
            self.quarantine.release(&id).await.map_err(status)?,
        ))
    }

    async fn delete(
        &self,
        request: Request<QuarantineRequest>,
    ) -> Result<Response<QuarantineEntry>, Status> {
        let id = queue_id(request)?;
        Ok(Response::new(
            self.quarantine.delete(&id).await.map_err(status)?,
        ))
    }
}
