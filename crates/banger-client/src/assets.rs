//! Kernel and image calls: both kinds share one set of routes under
//! their collection.

use banger_api::asset::{
    ImageBuildRequest, ImageImportRequest, ImageRecord, KernelAddRequest, KernelImportRequest,
    KernelRecord,
};
use banger_http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::paths::asset_path;
use crate::transport::StreamObserver;
use crate::{Client, ClientError};

impl Client {
    async fn show_asset<T: DeserializeOwned>(
        &self,
        collection: &str,
        name: &str,
        verify: bool,
    ) -> Result<T, ClientError> {
        let path = format!("{}?verify={verify}", asset_path(collection, name));
        self.call(self.request(Method::GET, &path)).await
    }

    async fn delete_asset<T: DeserializeOwned>(
        &self,
        collection: &str,
        name: &str,
        force: bool,
    ) -> Result<T, ClientError> {
        let path = format!("{}?force={force}", asset_path(collection, name));
        self.call(self.request(Method::DELETE, &path)).await
    }

    async fn post_streamed<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
        on_progress: impl StreamObserver,
    ) -> Result<T, ClientError> {
        self.stream(self.with_json(Method::POST, path, body)?, on_progress)
            .await
    }

    pub async fn list_kernels(&self) -> Result<Vec<KernelRecord>, ClientError> {
        self.call(self.request(Method::GET, "/v1/kernels")).await
    }

    pub async fn show_kernel(&self, name: &str, verify: bool) -> Result<KernelRecord, ClientError> {
        self.show_asset("kernels", name, verify).await
    }

    pub async fn delete_kernel(
        &self,
        name: &str,
        force: bool,
    ) -> Result<KernelRecord, ClientError> {
        self.delete_asset("kernels", name, force).await
    }

    pub async fn import_kernel(
        &self,
        req: &KernelImportRequest,
        on_progress: impl StreamObserver,
    ) -> Result<KernelRecord, ClientError> {
        self.post_streamed("/v1/kernels/import", req, on_progress)
            .await
    }

    pub async fn add_kernel(
        &self,
        req: &KernelAddRequest,
        on_progress: impl StreamObserver,
    ) -> Result<KernelRecord, ClientError> {
        self.post_streamed("/v1/kernels/add", req, on_progress)
            .await
    }

    pub async fn list_images(&self) -> Result<Vec<ImageRecord>, ClientError> {
        self.call(self.request(Method::GET, "/v1/images")).await
    }

    pub async fn show_image(&self, name: &str, verify: bool) -> Result<ImageRecord, ClientError> {
        self.show_asset("images", name, verify).await
    }

    pub async fn delete_image(&self, name: &str, force: bool) -> Result<ImageRecord, ClientError> {
        self.delete_asset("images", name, force).await
    }

    pub async fn build_image(
        &self,
        req: &ImageBuildRequest,
        on_progress: impl StreamObserver,
    ) -> Result<ImageRecord, ClientError> {
        self.post_streamed("/v1/images/build", req, on_progress)
            .await
    }

    pub async fn import_image(
        &self,
        req: &ImageImportRequest,
        on_progress: impl StreamObserver,
    ) -> Result<ImageRecord, ClientError> {
        self.post_streamed("/v1/images/import", req, on_progress)
            .await
    }
}
