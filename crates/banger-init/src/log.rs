//! banger-init's words: on the console (its stderr), and in the kernel
//! log, where they carry the kernel's timestamps (`dmesg` in the guest
//! gives the boot timeline; the console shows them even under `quiet`).

use std::io::Write;

pub fn log(msg: &str) {
    let line = format!("banger-init: {msg}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    // <6> = info: below `quiet`'s console level, so not printed twice.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut k| k.write_all(format!("<6>{line}").as_bytes()));
}
