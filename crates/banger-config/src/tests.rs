use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn defaults_when_no_file_and_no_env() {
    let cfg = Config::resolve(FileConfig::default(), &|_| None).expect("defaults");
    assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/banger"));
    assert_eq!(cfg.socket, PathBuf::from("/run/banger/bangerd.sock"));
    assert_eq!(cfg.network.bridge, "banger0");
    assert_eq!(cfg.network.bridge_ip, Ipv4Addr::new(172, 16, 0, 1));
    assert_eq!(cfg.network.prefix_len, 24);
    assert_eq!(cfg.vmm.qemu, PathBuf::from("qemu-system-x86_64"));
}

#[test]
fn unknown_key_is_an_error_that_names_it() {
    let err = Config::from_toml("state_dri = \"/x\"\n").expect_err("typo");
    let msg = err.to_string();
    assert!(msg.contains("state_dri"), "{msg}");
    let err = Config::from_toml("[vmm]\nfirecraker = \"/x\"\n").expect_err("typo");
    assert!(err.to_string().contains("firecraker"), "{err}");
}

#[test]
fn file_values_apply_and_env_wins_over_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "state_dir = \"/srv/banger\"\nruntime_dir = \"/run/b\"\n[network]\nbridge = \"br-test\"\n[defaults]\nroot_disk = \"2G\"\n",
    );
    let p = path.to_string_lossy().into_owned();
    let cfg = Config::load_with(env(&[(CONFIG_ENV, &p), ("BANGER_RUNTIME_DIR", "/tmp/rt")]))
        .expect("load");
    assert_eq!(cfg.state_dir, PathBuf::from("/srv/banger"));
    assert_eq!(cfg.runtime_dir, PathBuf::from("/tmp/rt"));
    assert_eq!(cfg.socket, PathBuf::from("/tmp/rt/bangerd.sock"));
    assert_eq!(cfg.network.bridge, "br-test");
    assert_eq!(cfg.defaults.root_disk_bytes, 2 << 30);
}

#[test]
fn concurrent_boots_is_unset_by_default_and_bounded() {
    let cfg = Config::resolve(FileConfig::default(), &|_| None).expect("defaults");
    assert_eq!(cfg.limits.concurrent_boots, None, "picked from the host");
    let cfg = Config::from_toml("[limits]\nconcurrent_boots = 3\n").expect("file");
    assert_eq!(cfg.limits.concurrent_boots, Some(3));
    let cfg = Config::from_toml("[limits]\nconcurrent_boots = 0\n").expect("unlimited");
    assert_eq!(cfg.limits.concurrent_boots, Some(0));
    let cfg = Config::load_with(env(&[
        (CONFIG_ENV, "/dev/null"),
        ("BANGER_CONCURRENT_BOOTS", "5"),
    ]))
    .expect("env");
    assert_eq!(cfg.limits.concurrent_boots, Some(5));
    let err = Config::from_toml("[limits]\nconcurrent_boots = 100000\n").expect_err("bound");
    assert!(err.to_string().contains("limits.concurrent_boots"), "{err}");
}

#[test]
fn explicit_missing_file_is_an_error_default_missing_is_not() {
    let err = Config::load_with(env(&[(CONFIG_ENV, "/nonexistent/banger.toml")]))
        .expect_err("explicit file must exist");
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/banger.toml"));
}

#[test]
fn invalid_values_name_their_source() {
    let err = Config::load_with(env(&[
        (CONFIG_ENV, "/dev/null"),
        ("BANGER_STATE_DIR", "relative/dir"),
    ]))
    .expect_err("relative");
    assert!(
        matches!(&err, ConfigError::Env { var, .. } if var == "BANGER_STATE_DIR"),
        "{err}"
    );

    let err = Config::from_toml("log_level = \"loud\"").expect_err("level");
    assert!(
        matches!(
            &err,
            ConfigError::Invalid {
                key: "log_level",
                ..
            }
        ),
        "{err}"
    );

    let err = Config::from_toml("[network]\nbridge_cidr = \"172.16.0.1\"").expect_err("cidr");
    assert!(err.to_string().contains("network.bridge_cidr"), "{err}");

    let err =
        Config::from_toml("[network]\nbridge = \"a-very-long-bridge-name\"").expect_err("ifname");
    assert!(err.to_string().contains("network.bridge"), "{err}");

    let err = Config::from_toml("[defaults]\nwork_disk = \"lots\"").expect_err("size");
    assert!(err.to_string().contains("defaults.work_disk"), "{err}");

    let err = Config::from_toml("[defaults]\nvcpus = 0").expect_err("vcpus");
    assert!(err.to_string().contains("defaults.vcpus"), "{err}");

    let err = Config::from_toml("[assets]\nauto_provision = \"maybe\"").expect_err("bool");
    assert!(err.to_string().contains("auto_provision"), "{err}");
    let err = Config::load_with(env(&[
        (CONFIG_ENV, "/dev/null"),
        ("BANGER_AUTO_PROVISION", "perhaps"),
    ]))
    .expect_err("bool env");
    assert!(err.to_string().contains("BANGER_AUTO_PROVISION"), "{err}");

    let err = Config::from_toml("state_dir = 5").expect_err("type");
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
}

#[test]
fn socket_path_must_fit_sun_path() {
    let long = format!("/{}", "r".repeat(120));
    let err = Config::load_with(env(&[
        (CONFIG_ENV, "/dev/null"),
        ("BANGER_RUNTIME_DIR", &long),
    ]))
    .expect_err("too long");
    assert!(err.to_string().contains("107 bytes"), "{err}");
}

#[test]
fn booleans_keep_their_own_spellings() {
    let on = |pairs: &[(&str, &str)]| Config::load_with(env(pairs));
    let cfg = on(&[(CONFIG_ENV, "/dev/null"), ("BANGER_AUTO_PROVISION", "NO")]).expect("loose");
    assert!(!cfg.assets.auto_provision);
    let cfg = on(&[(CONFIG_ENV, "/dev/null"), ("BANGER_JAILER", "off")]).expect("strict");
    assert!(!cfg.jailer.enabled);
    let err = on(&[(CONFIG_ENV, "/dev/null"), ("BANGER_JAILER", "yes")]).expect_err("no yes");
    assert!(
        matches!(&err, ConfigError::Env { var, .. } if var == "BANGER_JAILER"),
        "{err}"
    );
}

#[test]
fn env_overrides_every_section_and_empty_env_is_unset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "[jailer]\npids_max = 64\n[privileges]\nhelper_socket = \"/run/h.sock\"\n[guest]\nready_timeout_secs = 9\n",
    );
    let p = path.to_string_lossy().into_owned();
    let cfg = Config::load_with(env(&[
        (CONFIG_ENV, &p),
        ("BANGER_JAILER_PIDS_MAX", "128"),
        ("BANGER_HELPER_SOCKET", ""),
        ("BANGER_QEMU_BIN", "/opt/qemu"),
    ]))
    .expect("load");
    assert_eq!(cfg.jailer.pids_max, 128);
    assert_eq!(cfg.helper_socket, Some(PathBuf::from("/run/h.sock")));
    assert_eq!(cfg.guest.ready_timeout_secs, Some(9));
    assert_eq!(cfg.vmm.qemu, PathBuf::from("/opt/qemu"));
    assert_eq!(
        cfg.jailer.chroot_base,
        PathBuf::from("/var/lib/banger/jail")
    );
}
