//! Operations in flight: listed, watched and cancelled by id.

use banger_api::operation::{OperationId, OperationInfo};
use banger_http::Method;
use serde::de::DeserializeOwned;

use crate::transport::StreamObserver;
use crate::{Client, ClientError};

impl Client {
    pub async fn list_operations(&self) -> Result<Vec<OperationInfo>, ClientError> {
        self.call(self.request(Method::GET, "/v1/operations")).await
    }

    /// Watches operation `id` from its first stage to its result, which
    /// is decoded as the operation's own caller would (a VM record for a
    /// start, an image for a build).
    pub async fn watch_operation<T: DeserializeOwned>(
        &self,
        id: &OperationId,
        observer: impl StreamObserver,
    ) -> Result<T, ClientError> {
        let path = format!("/v1/operations/{id}");
        self.stream(self.request(Method::GET, &path), observer)
            .await
    }

    /// Asks the daemon to cancel operation `id`; answers with the
    /// operation as it was. Its watchers see it end `cancelled`.
    pub async fn cancel_operation(&self, id: &OperationId) -> Result<OperationInfo, ClientError> {
        let path = format!("/v1/operations/{id}/cancel");
        self.call(self.request(Method::POST, &path)).await
    }
}
