//! Firecracker: one process per VM, configured over its API socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use banger_api::vm::VmmKind;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixStream;

use crate::driver::Vmm;
use crate::jail::{self, Jail, JailStage};
use crate::{LaunchSpec, VmmError, process};

/// How long a fresh Firecracker may take to open its API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(5);

/// A client of one Firecracker API socket.
#[derive(Debug, Clone)]
pub struct FcApi {
    socket: PathBuf,
}

impl FcApi {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> VmmError {
        VmmError::Control {
            path: self.socket.clone(),
            message: message.to_string(),
        }
    }

    /// One request; a non-2xx answer is an error carrying Firecracker's
    /// `fault_message`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, VmmError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.err(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.err(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://localhost{path}"))
            .header("Host", "localhost")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| self.err(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.err(e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.err(e))?
            .to_bytes();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if !status.is_success() {
            let fault = value.get("fault_message").cloned().unwrap_or(value);
            return Err(self.err(format!("{method} {path}: {status}: {fault}")));
        }
        Ok(value)
    }

    pub async fn put(&self, path: &str, body: Value) -> Result<(), VmmError> {
        self.request(Method::PUT, path, Some(body)).await.map(drop)
    }

    /// `GET /`: instance info (`state`: `Not started`, `Running`, ...).
    pub async fn instance_info(&self) -> Result<Value, VmmError> {
        self.request(Method::GET, "/", None).await
    }
}

/// Firecracker, run directly or under its jailer (`jail`). Jailed, the
/// privileged steps (staging, spawning, removing the jail) are the jail's
/// [`JailOps`](crate::jail::JailOps): done here when the daemon is root,
/// by banger-helper when it is not. `bin` is then only what a root daemon
/// jails; the helper uses its own configured binary.
#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    pub bin: PathBuf,
    pub jail: Option<Jail>,
}

/// Where Firecracker finds a VM's files: host paths when run directly,
/// chroot-relative names when jailed.
struct FcPaths {
    kernel: String,
    initrd: Option<String>,
    drives: Vec<String>,
    log: String,
    metrics: String,
    vsock: Option<String>,
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

impl FirecrackerVmm {
    fn paths(&self, spec: &LaunchSpec) -> FcPaths {
        match &self.jail {
            Some(_) => FcPaths {
                kernel: jail::KERNEL.into(),
                initrd: spec.initrd.as_ref().map(|_| jail::INITRD.into()),
                drives: (0..spec.disks.len()).map(jail::drive).collect(),
                log: jail::LOG.into(),
                metrics: jail::METRICS.into(),
                vsock: spec.vsock.as_ref().map(|_| jail::VSOCK.into()),
            },
            None => {
                // Firecracker's own log and metrics, next to the console log.
                let dir = spec.console_log.parent().unwrap_or(Path::new("/"));
                FcPaths {
                    kernel: show(&spec.kernel),
                    initrd: spec.initrd.as_deref().map(show),
                    drives: spec.disks.iter().map(|d| show(d)).collect(),
                    log: show(&dir.join("firecracker.log")),
                    metrics: show(&dir.join("firecracker.metrics")),
                    vsock: spec.vsock.as_deref().map(show),
                }
            }
        }
    }

    async fn configure(&self, api: &FcApi, spec: &LaunchSpec, p: &FcPaths) -> Result<(), VmmError> {
        api.put(
            "/machine-config",
            json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib }),
        )
        .await?;
        // Firecracker's own defaults are replaced by our boot args: keep a
        // serial console and make a guest reboot end the process.
        let mut boot_args = spec.cmdline.clone();
        if !boot_args.contains("reboot=") {
            boot_args.push_str(" reboot=k");
        }
        let mut boot = json!({
            "kernel_image_path": p.kernel,
            "boot_args": boot_args,
        });
        if let Some(initrd) = &p.initrd {
            boot["initrd_path"] = json!(initrd);
        }
        api.put("/boot-source", boot).await?;
        for (i, disk) in p.drives.iter().enumerate() {
            // root= is on our command line; Firecracker must not add its own.
            api.put(
                &format!("/drives/d{i}"),
                json!({ "drive_id": format!("d{i}"), "path_on_host": disk, "is_root_device": false, "is_read_only": false }),
            )
            .await?;
        }
        if let Some(net) = &spec.net {
            api.put(
                "/network-interfaces/eth0",
                json!({ "iface_id": "eth0", "host_dev_name": net.tap, "guest_mac": net.mac }),
            )
            .await?;
        }
        if let Some(uds) = &p.vsock {
            api.put(
                "/vsock",
                json!({ "guest_cid": crate::GUEST_CID, "uds_path": uds }),
            )
            .await?;
        }
        if self.jail.is_none() {
            for f in [&p.log, &p.metrics] {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)
                    .map_err(|e| VmmError::Control {
                        path: f.into(),
                        message: e.to_string(),
                    })?;
            }
        }
        api.put(
            "/logger",
            json!({ "log_path": p.log, "level": "Info", "show_level": true }),
        )
        .await?;
        api.put("/metrics", json!({ "metrics_path": p.metrics }))
            .await?;
        api.put("/actions", json!({ "action_type": "InstanceStart" }))
            .await
    }

    /// What names this VM's process in its command line: the control
    /// socket path, or for a jailed VM (whose command line has chroot
    /// paths) ` --id <vm id> `, the VM id being the control socket's stem.
    fn identity(&self, socket: &Path) -> String {
        match (&self.jail, socket.file_stem()) {
            (Some(_), Some(id)) => format!(" --id {} ", id.to_string_lossy()),
            _ => socket.to_string_lossy().into_owned(),
        }
    }
}

#[async_trait]
impl Vmm for FirecrackerVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn tap_owner(&self) -> Option<(u32, u32)> {
        self.jail.as_ref().map(|j| (j.config.uid, j.config.gid))
    }

    fn jail_root(&self, vm_id: &str) -> Option<PathBuf> {
        self.jail.as_ref().map(|j| j.config.jail_dir(vm_id))
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<u32, VmmError> {
        let err = |message: String| VmmError::Launch {
            bin: self.bin.clone(),
            message,
        };
        let _ = std::fs::remove_file(&spec.control_socket);
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.console_log)
            .map_err(|e| err(format!("opening {}: {e}", spec.console_log.display())))?;
        let (pid, mut child) = match &self.jail {
            Some(j) => {
                j.ops
                    .stage(&JailStage {
                        vm_id: spec.vm_id.clone(),
                        kernel: spec.kernel.clone(),
                        initrd: spec.initrd.clone(),
                        disks: spec.disks.clone(),
                    })
                    .await?;
                // Short names in our runtime dir for the sockets the jailed
                // process makes inside its chroot (sun_path is 108 bytes).
                let c = &j.config;
                let mut links = vec![(
                    spec.control_socket.clone(),
                    c.host_path(&spec.vm_id, jail::API_SOCKET),
                )];
                if let Some(v) = &spec.vsock {
                    links.push((v.clone(), c.host_path(&spec.vm_id, jail::VSOCK)));
                }
                for (short, long) in links {
                    let _ = std::fs::remove_file(&short);
                    std::os::unix::fs::symlink(&long, &short)
                        .map_err(|e| err(format!("linking {}: {e}", short.display())))?;
                }
                // Opened above so that it exists as ours: the helper only
                // appends to a console the daemon owns.
                drop(console);
                (j.ops.spawn(&spec.vm_id, &spec.console_log).await?, None)
            }
            None => {
                let mut cmd = tokio::process::Command::new(&self.bin);
                cmd.arg("--api-sock")
                    .arg(&spec.control_socket)
                    .arg("--id")
                    .arg(format!("banger-{}", spec.vm_id));
                let child = banger_host::tools::spawn_detached(cmd, console)
                    .map_err(|e| err(e.to_string()))?;
                let pid = child.id().ok_or_else(|| err("exited at once".into()))?;
                (pid, Some(child))
            }
        };
        let api = FcApi::new(&spec.control_socket);
        let deadline = Instant::now() + SOCKET_WAIT;
        while UnixStream::connect(&spec.control_socket).await.is_err() {
            // Not by command line: right after fork it is still its
            // parent's. Our own child by try_wait; a jailer the helper
            // started (and reaps) by its pid.
            let exited = match child.as_mut() {
                Some(c) => c
                    .try_wait()
                    .map_err(|e| err(e.to_string()))?
                    .map(|s| s.to_string()),
                None => (!process::running(pid)).then(|| "exited".to_owned()),
            };
            if exited.is_some() || Instant::now() > deadline {
                match child.as_mut() {
                    Some(c) => {
                        let _ = c.start_kill();
                        let _ = c.wait().await;
                    }
                    None => {
                        let _ = self.kill(pid, &spec.control_socket).await;
                    }
                }
                return Err(err(format!(
                    "API socket {} did not come up ({}); see {}",
                    spec.control_socket.display(),
                    exited.unwrap_or_else(|| "timed out".to_owned()),
                    spec.console_log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Reap it while this daemon lives; after a daemon restart it is
        // init's child and identified through /proc.
        if let Some(mut c) = child {
            tokio::spawn(async move {
                let _ = c.wait().await;
            });
        }
        if let Err(e) = self.configure(&api, spec, &self.paths(spec)).await {
            let _ = self.kill(pid, &spec.control_socket).await;
            return Err(err(e.to_string()));
        }
        let _ = std::fs::write(&spec.pid_file, format!("{pid}\n"));
        Ok(pid)
    }

    async fn request_shutdown(&self, socket: &Path) -> Result<(), VmmError> {
        FcApi::new(socket)
            .put("/actions", json!({ "action_type": "SendCtrlAltDel" }))
            .await
    }

    fn alive(&self, pid: u32, socket: &Path) -> bool {
        process::alive_with(pid, &self.identity(socket))
    }

    fn find(&self, socket: &Path) -> Option<u32> {
        process::all_with(&self.identity(socket)).into_iter().max()
    }

    async fn kill(&self, pid: u32, socket: &Path) -> Result<(), VmmError> {
        let id = self.identity(socket);
        process::signal_with(pid, &id, nix::sys::signal::Signal::SIGKILL);
        process::kill_all_with(&id, Duration::from_secs(10)).await
    }

    /// Removes the jail (chroot and cgroups) once the process is gone.
    async fn release(&self, vm_id: &str, jail_root: Option<&Path>) -> Result<(), VmmError> {
        match (&self.jail, jail_root) {
            (Some(j), root) => Ok(j.ops.release(vm_id, root).await?),
            // A VM jailed by an earlier configuration: its recorded root.
            (None, Some(root)) => Ok(jail::remove_tree(root)?),
            (None, None) => Ok(()),
        }
    }
}
