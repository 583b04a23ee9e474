//! A fake outside world for a lab: an "uplink" namespace behind a veth,
//! holding TEST-NET-3's 203.0.113.10, with the lab's default route
//! through it. No packet goes to any real outside address, and the
//! uplink has no route back to the guests' subnet: only masquerading
//! lets replies return.

use std::process::Command;

use super::{Lab, Netns};

pub const OUTSIDE: &str = "203.0.113.10";

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip");
    assert!(st.success(), "ip {args:?}");
}

impl Lab {
    /// The uplink namespace (deleted on drop, its veth with it).
    pub fn uplink(&self) -> Netns {
        let up = Netns::new();
        let (l, u) = (self.ns.name.as_str(), up.name.as_str());
        ip(&[
            "-n", l, "link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", u,
        ]);
        ip(&["-n", l, "addr", "add", "198.51.100.2/24", "dev", "upl0"]);
        ip(&["-n", l, "link", "set", "upl0", "up"]);
        ip(&["-n", u, "addr", "add", "198.51.100.1/24", "dev", "upl1"]);
        ip(&["-n", u, "link", "set", "upl1", "up"]);
        ip(&[
            "-n",
            u,
            "addr",
            "add",
            &format!("{OUTSIDE}/32"),
            "dev",
            "lo",
        ]);
        ip(&["-n", l, "route", "add", "default", "via", "198.51.100.1"]);
        up
    }

    /// The lab's nftables ruleset.
    pub fn ruleset(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "nft", "list", "ruleset"])
            .output()
            .expect("nft (scripts/setup.sh installs nftables)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
