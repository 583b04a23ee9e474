//! Tier 3: warm starts (issue 15). QEMU/TCG guests driven through the CLI
//! inside a network namespace the test makes; nothing here sends a packet
//! outside it.

mod common;

use std::time::Instant;

use common::{Lab, dir_entries, warm_lab};

/// The `boot=` of the daemon's last "start stages" line (`cold`,
/// `warm:<template>`, `restore:<snapshot>`), and the whole line.
fn last_boot(lab: &Lab) -> (String, String) {
    let log = std::fs::read_to_string(lab.env.state_dir().join("bangerd.log")).expect("daemon log");
    let line = log
        .lines()
        .rfind(|l| l.contains("start stages"))
        .expect("a start stages line")
        .to_owned();
    let boot = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("boot="))
        .expect("boot= in the stages line")
        .to_owned();
    (boot, line)
}

fn templates(lab: &Lab) -> Vec<serde_json::Value> {
    lab.json(&["snapshot", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .filter(|s| s["kind"] == "template")
        .cloned()
        .collect()
}

fn timed(lab: &Lab, what: &str, args: &[&str]) -> String {
    let t = Instant::now();
    let out = lab.ok(args);
    println!("figure: {what} took {:.2}s", t.elapsed().as_secs_f64());
    out
}

#[test]
fn the_second_run_of_a_shape_restores_its_template_and_a_broken_one_falls_back_to_a_boot() {
    let Some(lab) = warm_lab() else { return };
    let run = ["vm", "run", "--rm", "--memory", "512", "--", "true"];

    // The first run boots and leaves its shape's template behind.
    timed(
        &lab,
        "first vm run --rm -- true (cold boot + template)",
        &run,
    );
    let (boot, line) = last_boot(&lab);
    assert_eq!(boot, "cold", "{line}");
    assert!(line.contains("template="), "the template was saved: {line}");
    let made = templates(&lab);
    assert_eq!(made.len(), 1, "{made:?}");
    let name = made[0]["name"].as_str().expect("name").to_owned();
    assert!(name.starts_with("tpl-"), "{name}");
    assert_eq!(made[0]["machine"]["memory_mib"], 512);

    // The second restores it, and its stages say so.
    timed(&lab, "warm vm run --rm -- true", &run);
    let (boot, line) = last_boot(&lab);
    assert_eq!(boot, format!("warm:{name}"), "{line}");
    assert!(
        line.contains("vmm-restore=") && line.contains("identity="),
        "{line}"
    );
    assert!(!line.contains("vmm-launch="), "no boot: {line}");

    // --cold boots, and leaves the template as it is.
    timed(
        &lab,
        "cold vm run --rm --cold -- true",
        &[
            "vm", "run", "--rm", "--cold", "--memory", "512", "--", "true",
        ],
    );
    assert_eq!(last_boot(&lab).0, "cold");
    assert_eq!(templates(&lab).len(), 1);

    // A warm VM is its own machine: its name, its address.
    lab.ok(&["vm", "create", "--name", "w1", "--memory", "512"]);
    let w1 = lab.json(&["vm", "start", "w1", "--json"]);
    assert_eq!(last_boot(&lab).0, format!("warm:{name}"));
    let ip = w1["runtime"]["guest_ip"].as_str().expect("ip").to_owned();
    let inside = lab.ok(&[
        "vm",
        "exec",
        "w1",
        "--",
        "sh",
        "-c",
        "hostname; ip -4 -o addr show dev eth0",
    ]);
    assert!(inside.starts_with("w1\n"), "{inside}");
    assert!(inside.contains(&format!(" {ip}/")), "{inside}");
    lab.wait_ping(&ip, std::time::Duration::from_secs(30));
    // While w1 exists it pins nothing: its own disks are its own now.
    lab.ok(&["vm", "kill", "w1"]);
    lab.ok(&["vm", "delete", "w1"]);

    // image warm: this shape is warm already; another shape gets its own.
    let again = lab.json(&["image", "warm", "default", "--memory", "512", "--json"]);
    assert_eq!(again["made"], false, "{again}");
    assert_eq!(again["template"]["name"], name.as_str());
    let other = lab.json(&["image", "warm", "default", "--memory", "384", "--json"]);
    assert_eq!(other["made"], true, "{other}");
    let other_name = other["template"]["name"].as_str().expect("name").to_owned();
    assert_ne!(other_name, name);
    assert_eq!(templates(&lab).len(), 2);
    assert_eq!(
        lab.json(&["vm", "list", "--json"]),
        serde_json::json!([]),
        "image warm leaves no VM behind"
    );

    // A template whose files were damaged: the run still works, cold,
    // and the broken template is replaced by a new one.
    let dir = made[0]["dir"].as_str().expect("dir");
    std::fs::write(
        std::path::Path::new(dir).join("vmm/vmstate"),
        b"not a migration stream",
    )
    .expect("corrupt");
    timed(&lab, "vm run over a damaged template", &run);
    let (boot, line) = last_boot(&lab);
    assert_eq!(boot, "cold", "fell back to a boot: {line}");
    let now: Vec<String> = templates(&lab)
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    assert!(
        !now.contains(&made[0]["id"].as_str().expect("id").to_owned()),
        "the damaged template is gone: {now:?}"
    );
    assert_eq!(now.len(), 2, "a new one of the first shape was saved");
    timed(&lab, "warm vm run from the new template", &run);
    assert!(last_boot(&lab).0.starts_with("warm:"));

    for t in templates(&lab) {
        lab.ok(&["snapshot", "rm", t["name"].as_str().expect("name")]);
    }
    lab.assert_no_leaks();
    let left = dir_entries(&lab.env.state_dir().join("snapshots"));
    assert!(left.is_empty(), "leaked snapshot dirs: {left:?}");
    lab.ok(&["daemon", "stop"]);
}
