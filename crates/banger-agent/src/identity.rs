//! A restored guest takes on its own identity: everything a snapshot
//! copied from the VM it was taken of that must differ between copies.
//! Each step is its own function so a failure names it.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::Path;

use banger_agent_proto::Identity;

/// Where the steps write; the root of the guest in production, a temp
/// tree in tests (which skip the kernel-wide steps).
#[derive(Debug, Clone, Copy)]
pub struct Targets<'a> {
    pub root: &'a Path,
    /// Clock, hostname, NIC and random pool: the whole machine's.
    pub kernel: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("network: {0}")]
    Net(#[from] banger_guest_net::NetError),
    #[error("{0:?} is not a machine id (32 hex digits)")]
    MachineId(String),
    #[error("{0:?} is not a hostname")]
    Hostname(String),
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> IdentityError {
    move |source| IdentityError::Io { step, source }
}

/// Applies `id`; the random pool and the clock first, so nothing made
/// after (the host key is the host's) draws from the copied state. The
/// files before the kernel's name: a restored guest's systemd may still
/// be booting, and its early setup sets the name from `/etc/hostname`,
/// so that file must already say the new one; the name is checked once
/// more at the end for a set that raced ours.
pub fn apply(id: &Identity, t: Targets<'_>) -> Result<(), IdentityError> {
    if id.machine_id.len() != 32 || !id.machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdentityError::MachineId(id.machine_id.clone()));
    }
    if id.hostname.is_empty() || id.hostname.len() > 63 || id.hostname.contains(['/', '\0', ' ']) {
        return Err(IdentityError::Hostname(id.hostname.clone()));
    }
    if t.kernel {
        reseed(&id.entropy)?;
        let ts = nix::sys::time::TimeSpec::new(id.unix_secs, i64::from(id.unix_nanos));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(|source| {
            IdentityError::Sys {
                step: "setting the clock",
                source,
            }
        })?;
    }
    write_files(id, &t.root.join("etc"))?;
    if t.kernel {
        set_hostname(&id.hostname)?;
        if let Some(nic) = &id.nic {
            banger_guest_net::set_mac(&nic.mac)?;
            banger_guest_net::configure(&banger_guest_net::Address {
                ip: nic.ip,
                prefix: nic.prefix,
                gateway: nic.gateway,
            })?;
        }
        if nix::unistd::gethostname().ok().as_deref() != Some(std::ffi::OsStr::new(&id.hostname)) {
            set_hostname(&id.hostname)?;
        }
    }
    Ok(())
}

fn set_hostname(name: &str) -> Result<(), IdentityError> {
    nix::unistd::sethostname(name).map_err(|source| IdentityError::Sys {
        step: "setting the hostname",
        source,
    })
}

/// `/etc/hosts`, `/etc/hostname`, `/etc/machine-id` and the ssh host key.
fn write_files(id: &Identity, etc: &std::path::Path) -> Result<(), IdentityError> {
    // The old name, from before this identity: what /etc/hosts names.
    let old_name = std::fs::read_to_string(etc.join("hostname"))
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    match std::fs::read_to_string(etc.join("hosts")) {
        Ok(hosts) if !old_name.is_empty() => {
            let ip = id.nic.as_ref().map(|n| n.ip);
            let new = rehost(&hosts, &old_name, &id.hostname, ip);
            if new != hosts {
                replace(&etc.join("hosts"), new.as_bytes(), 0o644)
                    .map_err(io("writing /etc/hosts"))?;
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading /etc/hosts")(e)),
    }
    replace(
        &etc.join("hostname"),
        format!("{}\n", id.hostname).as_bytes(),
        0o644,
    )
    .map_err(io("writing /etc/hostname"))?;
    replace(
        &etc.join("machine-id"),
        format!("{}\n", id.machine_id).as_bytes(),
        0o444,
    )
    .map_err(io("writing /etc/machine-id"))?;
    if let Some(key) = &id.ssh_host_key {
        host_key(&etc.join("ssh"), key).map_err(io("installing the ssh host key"))?;
    }
    Ok(())
}

/// `/etc/hosts` with the snapshot's VM's name (and `<name>.vm`) made
/// this one's, and on those lines a non-loopback address made `ip`:
/// lines that do not name the old VM stay as they are.
fn rehost(hosts: &str, old: &str, new: &str, ip: Option<std::net::Ipv4Addr>) -> String {
    let old_vm = format!("{old}.vm");
    let mut out = String::with_capacity(hosts.len());
    for line in hosts.lines() {
        let (body, comment) = line
            .split_once('#')
            .map_or((line, None), |(b, c)| (b, Some(c)));
        let mut words: Vec<&str> = body.split_whitespace().collect();
        let names_old = words.iter().skip(1).any(|w| *w == old || *w == old_vm);
        if !names_old {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let new_vm = format!("{new}.vm");
        let addr = ip.map(|a| a.to_string());
        let first = match (&addr, words[0].parse::<std::net::IpAddr>()) {
            (Some(a), Ok(parsed)) if !parsed.is_loopback() => a.as_str(),
            _ => words[0],
        };
        let mut rebuilt = vec![first];
        for w in words.drain(1..) {
            rebuilt.push(if w == old {
                new
            } else if w == old_vm {
                new_vm.as_str()
            } else {
                w
            });
        }
        out.push_str(&rebuilt.join(" "));
        if let Some(c) = comment {
            out.push_str(" #");
            out.push_str(c);
        }
        out.push('\n');
    }
    out
}

/// `RNDADDENTROPY` (credited) then `RNDRESEEDCRNG`: the kernel's CRNG
/// state came with the snapshot, and without a reseed every copy would
/// draw the same stream from it.
fn reseed(entropy: &[u8]) -> Result<(), IdentityError> {
    const RNDADDENTROPY: nix::libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: nix::libc::c_ulong = 0x5207;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(io("opening /dev/urandom"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let len = i32::try_from(entropy.len()).unwrap_or(i32::MAX);
    let mut info = Vec::with_capacity(8 + entropy.len() + 4);
    info.extend_from_slice(&len.saturating_mul(8).to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(entropy);
    // The kernel reads buf as __u32s: keep the buffer 4-aligned in size.
    info.resize(info.len().next_multiple_of(4), 0);
    let words: Vec<u32> = info
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // SAFETY: `words` is a live rand_pool_info (count, size, then `size`
    // bytes of data) that outlives the call; the kernel only reads it.
    let r = unsafe { nix::libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, words.as_ptr()) };
    if r < 0 {
        return Err(IdentityError::Io {
            step: "adding host entropy",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { nix::libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) };
    if r < 0 {
        return Err(IdentityError::Io {
            step: "reseeding the kernel's random generator",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Writes beside and renames: a reader sees the old file or the new one.
/// Not synced: each fsync is a round trip to the host's disk that a warm
/// start waits on, and nothing needs these durable (a VM that crashes
/// before its page cache is written gets them again from its next start).
fn replace(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("banger-new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    std::fs::rename(&tmp, path)
}

/// The new ed25519 key in, every other host key out: sshd offers only
/// what the host pinned.
fn host_key(ssh: &Path, key: &banger_agent_proto::HostKey) -> std::io::Result<()> {
    std::fs::create_dir_all(ssh)?;
    for entry in std::fs::read_dir(ssh)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub")) {
            std::fs::remove_file(entry.path())?;
        }
    }
    replace(
        &ssh.join("ssh_host_ed25519_key"),
        key.private.as_bytes(),
        0o600,
    )?;
    replace(
        &ssh.join("ssh_host_ed25519_key.pub"),
        format!("{}\n", key.public.trim()).as_bytes(),
        0o644,
    )
}

#[cfg(test)]
mod tests {
    use banger_agent_proto::HostKey;

    use super::*;

    fn identity() -> Identity {
        Identity {
            hostname: "fork-1".into(),
            nic: None,
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            ssh_host_key: Some(HostKey {
                private:
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n"
                        .into(),
                public: "ssh-ed25519 AAAAnew".into(),
            }),
            unix_secs: 0,
            unix_nanos: 0,
            entropy: vec![7; 64],
        }
    }

    #[test]
    fn files_are_replaced_and_old_host_keys_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let ssh = dir.path().join("etc/ssh");
        std::fs::create_dir_all(&ssh).expect("mkdir");
        for f in [
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "sshd_config",
        ] {
            std::fs::write(ssh.join(f), "old").expect("write");
        }
        std::fs::write(dir.path().join("etc/machine-id"), "old\n").expect("write");
        apply(
            &identity(),
            Targets {
                root: dir.path(),
                kernel: false,
            },
        )
        .expect("apply");
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).expect(p);
        assert_eq!(read("etc/hostname"), "fork-1\n");
        assert_eq!(read("etc/machine-id"), "0123456789abcdef0123456789abcdef\n");
        assert_eq!(
            read("etc/ssh/ssh_host_ed25519_key.pub"),
            "ssh-ed25519 AAAAnew\n"
        );
        assert!(read("etc/ssh/ssh_host_ed25519_key").starts_with("-----BEGIN OPENSSH"));
        assert_eq!(read("etc/ssh/sshd_config"), "old", "other files stay");
        assert!(
            !ssh.join("ssh_host_rsa_key").exists() && !ssh.join("ssh_host_rsa_key.pub").exists()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ssh.join("ssh_host_ed25519_key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn hosts_lines_naming_the_old_vm_name_this_one() {
        let hosts = "127.0.0.1 localhost\n127.0.1.1 src\n172.16.0.2 src.vm src\n# src notes\n10.0.0.9 other\n";
        let ip = Some("172.16.0.5".parse().expect("ip"));
        assert_eq!(
            rehost(hosts, "src", "fork-1", ip),
            "127.0.0.1 localhost\n127.0.1.1 fork-1\n172.16.0.5 fork-1.vm fork-1\n# src notes\n10.0.0.9 other\n"
        );
        // Without a NIC the addresses stay; a name that merely contains
        // the old one is not it.
        assert_eq!(
            rehost("172.16.0.2 src.vm src srcx\n", "src", "b", None),
            "172.16.0.2 b.vm b srcx\n"
        );
    }

    #[test]
    fn the_hosts_file_follows_the_hostname() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(dir.path().join("etc/hostname"), "src\n").expect("write");
        std::fs::write(dir.path().join("etc/hosts"), "127.0.1.1 src\n").expect("write");
        apply(
            &identity(),
            Targets {
                root: dir.path(),
                kernel: false,
            },
        )
        .expect("apply");
        let hosts = std::fs::read_to_string(dir.path().join("etc/hosts")).expect("hosts");
        assert_eq!(hosts, "127.0.1.1 fork-1\n");
    }

    #[test]
    fn bad_machine_ids_and_hostnames_are_refused_before_anything_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut id = identity();
        id.machine_id = "../../etc/passwd".into();
        assert!(matches!(
            apply(
                &id,
                Targets {
                    root: dir.path(),
                    kernel: false
                }
            ),
            Err(IdentityError::MachineId(_))
        ));
        let mut id = identity();
        id.hostname = "a/b".into();
        assert!(matches!(
            apply(
                &id,
                Targets {
                    root: dir.path(),
                    kernel: false
                }
            ),
            Err(IdentityError::Hostname(_))
        ));
        assert!(!dir.path().join("etc").exists());
    }
}
