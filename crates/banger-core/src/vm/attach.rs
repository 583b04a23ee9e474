//! `vm exec` / `vm cp` (an attached agent connection) and `vm ssh` (key,
//! pinned host key, sshd answering).

use std::net::Ipv4Addr;
use std::time::Duration;

use banger_agent_proto::Message;
use banger_api::vm::{AttachRequest, SshInfo, VmRecord};

use crate::agent::{AgentConn, Session, guest_path};
use crate::core::Core;
use crate::error::{AgentError, CoreError, InternalError};
use crate::lifecycle::{VmAction, check_action};

/// How long `vm ssh` waits for sshd after the agent answered.
const SSH_WAIT: Duration = Duration::from_secs(60);

fn agent_err(vm: &VmRecord) -> impl FnOnce(AgentError) -> CoreError + '_ {
    move |source| CoreError::Agent {
        vm: vm.name.clone(),
        source,
    }
}

impl Core {
    pub(crate) fn session<'a>(&'a self, vm: &'a VmRecord) -> Session<'a> {
        Session::new(self.deps().agent.as_ref(), vm)
    }

    /// `vm exec` / `vm cp`: a connection with the request already sent.
    pub(crate) async fn attach(
        &self,
        name: &str,
        req: AttachRequest,
    ) -> Result<AgentConn, CoreError> {
        let vm = self.find_vm(name).await?;
        check_action(&vm.name, vm.state, VmAction::Exec)?;
        let msg = match req {
            AttachRequest::Exec(e) => {
                if e.argv.is_empty() || e.argv[0].is_empty() {
                    return Err(CoreError::InvalidArgument(
                        "no command given: put it after `--`, e.g. `banger vm exec NAME -- ls /`"
                            .into(),
                    ));
                }
                Message::Exec(e)
            }
            AttachRequest::CopyIn { dest } => Message::PutArchive {
                dest: guest_path(&dest)?,
            },
            AttachRequest::CopyOut { path } => Message::GetArchive {
                path: guest_path(&path)?,
            },
        };
        self.session(&vm).open(&msg).await.map_err(agent_err(&vm))
    }

    /// `vm ssh`: key, pinned host key, and sshd answering.
    pub(crate) async fn ssh_info(&self, name: &str) -> Result<SshInfo, CoreError> {
        let found = self.find_vm(name).await?;
        check_action(&found.name, found.state, VmAction::Exec)?;
        let (key, _) = self.ssh_keys().ensure().await?;
        let vm = {
            let (mut vm, _lock) = self.lock_vm(&found.id).await?;
            if vm.runtime.ssh_host_key.is_none() {
                let host_key = self.session(&vm).host_key().await.map_err(agent_err(&vm))?;
                vm.runtime.ssh_host_key = Some(host_key);
                self.save(&mut vm).await?;
            }
            vm
        };
        let ip: Ipv4Addr = vm
            .runtime
            .guest_ip
            .ok_or_else(|| InternalError::NoAddress(vm.name.clone()))?;
        let host_key = vm
            .runtime
            .ssh_host_key
            .as_deref()
            .ok_or_else(|| agent_err(&vm)(AgentError::NoHostKey))?;
        let known_hosts = self.vm_files(&vm.id).dir.join("known_hosts");
        tokio::fs::write(&known_hosts, format!("{ip} {host_key}\n"))
            .await
            .map_err(InternalError::io("writing", &known_hosts))?;
        let deadline = tokio::time::Instant::now() + SSH_WAIT;
        while tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((ip, 22)),
        )
        .await
        .map_or(true, |r| r.is_err())
        {
            if tokio::time::Instant::now() > deadline {
                return Err(CoreError::Unavailable(format!(
                    "sshd in vm {:?} does not answer on {ip}:22 after {}s; `banger vm logs {}` shows the console",
                    vm.name,
                    SSH_WAIT.as_secs(),
                    vm.name
                )));
            }
            // A refused connect returns at once: wait a little between tries.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(SshInfo {
            host: ip.to_string(),
            user: "root".into(),
            identity_file: key.display().to_string(),
            known_hosts_file: known_hosts.display().to_string(),
        })
    }
}
