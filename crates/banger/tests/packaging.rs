//! The systemd units in `packaging/systemd`: the helper and the daemon
//! must agree on every path, and neither may take VMs down when stopped.

use std::path::PathBuf;

fn unit(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/systemd")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    let mut v: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn helper_and_daemon_units_share_their_paths_and_leave_vms_running() {
    let helper = unit("banger-helper.service");
    let daemon = unit("bangerd.service");
    let env = values(&helper, "Environment");
    assert_eq!(env, values(&daemon, "Environment"), "same BANGER_* paths");
    for var in [
        "BANGER_HELPER_SOCKET=",
        "BANGER_STATE_DIR=",
        "BANGER_JAILER_CHROOT_BASE=",
    ] {
        assert!(env.iter().any(|e| e.starts_with(var)), "{var} set");
    }
    // The chroot base must not lie inside the daemon's state dir.
    let get = |k: &str| {
        env.iter()
            .find_map(|e| e.strip_prefix(k))
            .expect("set")
            .to_owned()
    };
    assert!(!get("BANGER_JAILER_CHROOT_BASE=").starts_with(&get("BANGER_STATE_DIR=")));
    for u in [&helper, &daemon] {
        assert_eq!(values(u, "KillMode"), ["process"]);
    }
    assert_eq!(values(&daemon, "User"), ["banger"]);
    assert!(values(&helper, "ExecStart")[0].contains("--helper --for-user banger"));
    if let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../packaging/systemd/banger-helper.service"),
        )
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../packaging/systemd/bangerd.service"),
        )
        .output()
    {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A host without banger installed lacks the binaries and users;
        // the syntax must still hold.
        for line in stderr.lines() {
            assert!(
                line.contains("not executable")
                    || line.contains("No such file")
                    || line.contains("Failed to resolve")
                    || line.contains("not found")
                    || line.contains("Command ")
                    || line.trim().is_empty(),
                "systemd-analyze verify: {stderr}"
            );
        }
    }
}
