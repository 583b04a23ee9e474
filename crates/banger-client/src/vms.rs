//! The daemon's own calls and the VM calls.

use banger_api::daemon::DaemonStatus;
use banger_api::doctor::DoctorReport;
use banger_api::event::Progress;
use banger_api::vm::{
    ATTACH_UPGRADE, AttachRequest, CreateVmRequest, SetVmRequest, SshInfo, VmRecord,
};
use banger_http::Method;

use crate::paths::vm_path;
use crate::{Attached, Client, ClientError};

impl Client {
    pub async fn status(&self) -> Result<DaemonStatus, ClientError> {
        self.call(self.request(Method::GET, "/v1/daemon/status"))
            .await
    }

    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(self.request(Method::POST, "/v1/daemon/shutdown"))
            .await
            .map(drop)
    }

    pub async fn doctor(&self) -> Result<DoctorReport, ClientError> {
        self.call(self.request(Method::GET, "/v1/host/doctor"))
            .await
    }

    pub async fn list_vms(&self) -> Result<Vec<VmRecord>, ClientError> {
        self.call(self.request(Method::GET, "/v1/vms")).await
    }

    pub async fn show_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        self.call(self.request(Method::GET, &vm_path(vm))).await
    }

    pub async fn create_vm(
        &self,
        req: &CreateVmRequest,
        on_progress: impl FnMut(&Progress),
    ) -> Result<VmRecord, ClientError> {
        self.stream(self.with_json(Method::POST, "/v1/vms", req)?, on_progress)
            .await
    }

    pub async fn set_vm(&self, vm: &str, req: &SetVmRequest) -> Result<VmRecord, ClientError> {
        self.call(self.with_json(Method::PATCH, &vm_path(vm), req)?)
            .await
    }

    pub async fn start_vm(
        &self,
        vm: &str,
        on_progress: impl FnMut(&Progress),
    ) -> Result<VmRecord, ClientError> {
        let path = format!("{}/start", vm_path(vm));
        self.stream(self.request(Method::POST, &path), on_progress)
            .await
    }

    pub async fn stop_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        let path = format!("{}/stop", vm_path(vm));
        self.call(self.request(Method::POST, &path)).await
    }

    pub async fn kill_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        let path = format!("{}/kill", vm_path(vm));
        self.call(self.request(Method::POST, &path)).await
    }

    /// The serial console log: its last `lines` lines, or all that the
    /// daemon keeps.
    pub async fn vm_logs(&self, vm: &str, lines: Option<usize>) -> Result<String, ClientError> {
        let path = match lines {
            Some(n) => format!("{}/logs?lines={n}", vm_path(vm)),
            None => format!("{}/logs", vm_path(vm)),
        };
        self.text(self.request(Method::GET, &path)).await
    }

    /// `vm exec` / `vm cp`: upgrades a connection to the guest agent's
    /// protocol (`banger-agent-proto` frames) once the daemon sent `req`.
    pub async fn attach(&self, vm: &str, req: &AttachRequest) -> Result<Attached, ClientError> {
        let path = format!("{}/attach", vm_path(vm));
        self.upgrade(self.with_json(Method::POST, &path, req)?, ATTACH_UPGRADE)
            .await
    }

    /// How to reach a running VM with the system ssh.
    pub async fn vm_ssh(&self, vm: &str) -> Result<SshInfo, ClientError> {
        let path = format!("{}/ssh", vm_path(vm));
        self.call(self.request(Method::GET, &path)).await
    }

    pub async fn delete_vm(&self, vm: &str) -> Result<VmRecord, ClientError> {
        self.call(self.request(Method::DELETE, &vm_path(vm))).await
    }
}
