//! The bounded excerpts of a VM's logs a failed start's error carries
//! (`console.rs` serves `vm logs`).

use std::path::Path;

/// The last `lines` lines of a guest-written log, at most [`TAIL_BYTES`]
/// of it read (the guest decides how long the log is).
fn log_tail(path: &Path, lines: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

/// How much of a log's end a failed start looks at.
const TAIL_BYTES: u64 = 256 << 10;

/// What a failed start's error carries besides its cause, so it can be
/// diagnosed from `last_error` alone: banger's own lines from the guest
/// (its units and the agent log to the console), the console's tail, the
/// vsock backend's words, and how busy the host was.
pub(super) fn failure_context(console: &Path, vm_dir: &Path) -> String {
    let mut out = String::new();
    // One read of the console serves both excerpts.
    if let Some(text) = log_tail(console, 2000) {
        let lines: Vec<&str> = text.lines().collect();
        let ours: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("banger"))
            .collect();
        if !ours.is_empty() {
            let from = ours.len().saturating_sub(10);
            out.push_str(&format!(
                "\nbanger's lines on the console:\n{}",
                ours[from..].join("\n")
            ));
        }
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if !tail.trim().is_empty() {
            out.push_str(&format!("\nlast console lines:\n{tail}"));
        }
    }
    if let Some(tail) = log_tail(&vm_dir.join("vsock-backend.log"), 5) {
        out.push_str(&format!("\nvsock backend:\n{tail}"));
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        out.push_str(&format!(
            "\nhost load (1/5/15 min): {}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    out
}
