//! gRPC `Queue`: where a message and each of its recipients stands.

use mailflow_proto::v1::{GetMessageRequest, MessageStatus, queue_server};
use tonic::{Request, Response, Status};

use crate::status::StatusBook;

/// The `Queue` service.
pub struct QueueService {
    /// Status records.
    status: StatusBook,
}

impl QueueService {
    /// The service over `status`.
    pub fn new(status: StatusBook) -> Self {
        Self { status }
    }
}

/// A queue id is a ULID: 26 characters of Crockford base32.
fn valid_queue_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[tonic::async_trait]
impl queue_server::Queue for QueueService {
    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<MessageStatus>, Status> {
        let id = request.into_inner().queue_id;
        if !valid_queue_id(&id) {
            return Err(Status::invalid_argument(format!(
                "queue_id {id:?} is not a queue id (26 letters and digits)"
            )));
        }
        match self.status.get(&id).await {
            Ok(Some(status)) => Ok(Response::new(status)),
            Ok(None) => Err(Status::not_found(format!("no message with queue id {id}"))),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_queue_id;

    #[test]
    fn queue_ids() {
        assert!(valid_queue_id("01KB3X8Z4N6Q2V7W9Y0A1B2C3D"));
        assert!(!valid_queue_id(""));
        assert!(!valid_queue_id("01KB3X8Z4N6Q2V7W9Y0A1B2C3."));
        assert!(!valid_queue_id("short"));
    }
}
