//! `vm ssh`: the system ssh, with banger's key and the VM's pinned host key.

use std::ffi::OsString;
use std::path::PathBuf;

use banger_api::vm::SshInfo;

/// An `ssh` invocation that never prompts: banger's identity only, the
/// VM's host key as the only known one, strict checking.
#[derive(Debug, Clone)]
pub struct SshCommand {
    pub bin: PathBuf,
    pub info: SshInfo,
    /// Remote command; an interactive login when empty.
    pub command: Vec<String>,
}

impl SshCommand {
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut opt = |k: &str, v: &str| {
            a.push("-o".into());
            a.push(format!("{k}={v}").into());
        };
        opt("IdentityFile", &self.info.identity_file);
        opt("IdentitiesOnly", "yes");
        opt("IdentityAgent", "none");
        opt("UserKnownHostsFile", &self.info.known_hosts_file);
        opt("GlobalKnownHostsFile", "/dev/null");
        opt("StrictHostKeyChecking", "yes");
        opt("BatchMode", "yes");
        opt("LogLevel", "ERROR");
        opt("ConnectTimeout", "10");
        opt("User", &self.info.user);
        a.push(self.info.host.clone().into());
        a.extend(self.command.iter().map(OsString::from));
        a
    }

    /// Replaces this process with ssh (its exit code becomes ours); only
    /// returns when ssh could not be started.
    pub fn exec(&self) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&self.bin)
            .args(self.args())
            .exec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_host_key_and_never_prompts() {
        let c = SshCommand {
            bin: "ssh".into(),
            info: SshInfo {
                host: "172.16.0.2".into(),
                user: "root".into(),
                identity_file: "/s/ssh/id_ed25519".into(),
                known_hosts_file: "/s/vms/x/known_hosts".into(),
            },
            command: vec!["uname".into(), "-a".into()],
        };
        let args: Vec<String> = c
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-o IdentityFile=/s/ssh/id_ed25519",
            "-o UserKnownHostsFile=/s/vms/x/known_hosts",
            "-o StrictHostKeyChecking=yes",
            "-o BatchMode=yes",
        ] {
            assert!(joined.contains(want), "{joined}");
        }
        assert!(!joined.contains("StrictHostKeyChecking=no"));
        assert!(
            joined.ends_with("-o User=root 172.16.0.2 uname -a"),
            "{joined}"
        );
    }
}
