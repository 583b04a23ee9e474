//! Snapshot calls, and the VM calls that make or use snapshots.

use banger_api::event::Progress;
use banger_api::snapshot::{
    ForkVmRequest, SnapshotRecord, SnapshotVmRequest, WarmImageRequest, WarmImageResponse,
};
use banger_api::vm::VmRecord;
use banger_http::Method;

use crate::paths::{asset_path, vm_path};
use crate::{Client, ClientError};

impl Client {
    pub async fn pause_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        let path = format!("{}/pause", vm_path(vm));
        self.call(self.request(Method::POST, &path)).await
    }

    pub async fn resume_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        let path = format!("{}/resume", vm_path(vm));
        self.call(self.request(Method::POST, &path)).await
    }

    pub async fn snapshot_vm(
        &self,
        vm: &str,
        req: &SnapshotVmRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<SnapshotRecord, ClientError> {
        let path = format!("{}/snapshot", vm_path(vm));
        self.stream(self.with_json(Method::POST, &path, req)?, on_progress)
            .await
    }

    pub async fn fork_vm(
        &self,
        vm: &str,
        req: &ForkVmRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<Vec<VmRecord>, ClientError> {
        let path = format!("{}/fork", vm_path(vm));
        self.stream(self.with_json(Method::POST, &path, req)?, on_progress)
            .await
    }

    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, ClientError> {
        self.call(self.request(Method::GET, "/v1/snapshots")).await
    }

    pub async fn show_snapshot(&self, name: &str) -> Result<SnapshotRecord, ClientError> {
        self.call(self.request(Method::GET, &asset_path("snapshots", name)))
            .await
    }

    pub async fn remove_snapshot(&self, name: &str) -> Result<SnapshotRecord, ClientError> {
        self.call(self.request(Method::DELETE, &asset_path("snapshots", name)))
            .await
    }

    /// `image warm`: streamed, as it may boot a VM.
    pub async fn warm_image(
        &self,
        image: &str,
        req: &WarmImageRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<WarmImageResponse, ClientError> {
        let path = format!("{}/warm", asset_path("images", image));
        self.stream(self.with_json(Method::POST, &path, req)?, on_progress)
            .await
    }
}
