//! Accounts from `/etc/passwd`, read directly: a static binary has no
//! NSS modules to ask, and sandbox images keep their users in files.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Finds `user` (a name or a numeric uid) in the passwd file at `path`.
pub fn lookup(path: &Path, user: &str) -> Result<Account, String> {
    // No passwd file at all (a minimal image) still knows root; one that
    // cannot be read is an error, not "no such user".
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(format!(
                "cannot read {} to look up {user:?}: {e}",
                path.display()
            ));
        }
    };
    let by_uid: Option<u32> = user.parse().ok();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        if f[0] == user || by_uid == Some(uid) {
            return Ok(Account {
                name: f[0].to_owned(),
                uid,
                gid,
                home: f[5].to_owned(),
                shell: f[6].to_owned(),
            });
        }
    }
    match (user, by_uid) {
        // Root works even in an image with no passwd file.
        ("root", _) | (_, Some(0)) => Ok(Account {
            name: "root".into(),
            uid: 0,
            gid: 0,
            home: "/root".into(),
            shell: "/bin/sh".into(),
        }),
        _ => Err(format!(
            "no user {user:?} in the guest's {}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_name_and_uid_and_refuses_strangers() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        )
        .expect("write");
        assert_eq!(lookup(&p, "root").expect("root").home, "/root");
        let n = lookup(&p, "65534").expect("by uid");
        assert_eq!((n.name.as_str(), n.gid), ("nobody", 65534));
        let err = lookup(&p, "mallory").expect_err("unknown");
        assert!(err.contains("mallory"), "{err}");
        assert_eq!(
            lookup(&dir.path().join("none"), "root").expect("root").uid,
            0
        );
    }
}
