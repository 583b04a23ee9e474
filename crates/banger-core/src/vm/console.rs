//! A VM's console log. The guest writes it, as much as it likes, so the
//! daemon bounds it: a keeper rotates every live VM's log past
//! `guest.console_max` (one older generation, `console.log.1`, is kept)
//! and `vm logs -n N` reads from the end instead of reading it whole.
//!
//! Rotation copies the log aside and truncates it in place: the VMM holds
//! it open for appending (QEMU's `append=on`, Firecracker's stdout opened
//! with `O_APPEND`), so its next write lands at the new start. What the
//! guest writes between the copy and the truncation is lost; a log that
//! the guest floods loses some of the flood, never the daemon's bound.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_api::vm::VmState;

use crate::core::Core;
use crate::error::{CoreError, InternalError};

/// How often the keeper looks: a guest writing its serial port flat out
/// under TCG adds a few MiB a second.
const ROUND: Duration = Duration::from_secs(2);

/// The most `vm logs -n` reads, however long its lines are.
const TAIL_READ_MAX: u64 = 4 << 20;

/// The older generation beside `console`.
fn rotated(console: &Path) -> PathBuf {
    let mut name = console.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Moves the log aside when it is larger than `max`; whether it did.
fn rotate(console: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(console) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    // Only the last `max` bytes are worth keeping of an older log.
    let mut src = std::fs::File::open(console)?;
    src.seek(SeekFrom::Start(len - max))?;
    let old = rotated(console);
    let mut tmp = old.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut dst = std::fs::File::create(&tmp)?;
    std::io::copy(&mut src.take(max), &mut dst)?;
    std::fs::rename(&tmp, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(console)?
        .set_len(0)?;
    Ok(true)
}

/// The last `lines` lines of `path`, read backwards from its end, at most
/// [`TAIL_READ_MAX`] bytes of it.
fn tail(path: &Path, lines: usize) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let floor = len.saturating_sub(TAIL_READ_MAX);
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    const CHUNK: u64 = 64 << 10;
    loop {
        // A final newline ends the last line; it starts none.
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let newlines = body.iter().filter(|b| **b == b'\n').count();
        if newlines >= lines || start == floor {
            let cut = if newlines >= lines {
                let mut seen = 0;
                body.iter()
                    .rposition(|b| {
                        seen += usize::from(*b == b'\n');
                        seen == lines
                    })
                    .map_or(0, |i| i + 1)
            } else {
                0
            };
            return Ok(buf.split_off(cut));
        }
        let from = start.saturating_sub(CHUNK).max(floor);
        let mut chunk = vec![0; (start - from) as usize];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
    }
}

/// The last `lines` lines across both generations: a rotation just
/// before leaves the current one short or empty.
fn tail_both(console: &Path, lines: usize) -> std::io::Result<Vec<u8>> {
    let mut out = tail(console, lines)?;
    let body = out.strip_suffix(b"\n").unwrap_or(&out);
    let have = if out.is_empty() {
        0
    } else {
        body.iter().filter(|b| **b == b'\n').count() + 1
    };
    if have < lines {
        let mut older = tail(&rotated(console), lines - have)?;
        if !older.is_empty() && !older.ends_with(b"\n") && !out.is_empty() {
            older.push(b'\n');
        }
        older.extend_from_slice(&out);
        out = older;
    }
    Ok(out)
}

/// The whole log: the older generation, then the current one, each read
/// only up to twice the cap (a flood between two rounds).
fn whole(console: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for p in [rotated(console), console.to_owned()] {
        match std::fs::File::open(&p) {
            Ok(mut f) => {
                let len = f.metadata()?.len();
                f.seek(SeekFrom::Start(len.saturating_sub(max.saturating_mul(2))))?;
                f.read_to_end(&mut out)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

impl Core {
    /// A VM's serial console: its last `lines` lines, or all that is kept.
    pub(crate) async fn vm_logs(
        &self,
        name: &str,
        lines: Option<usize>,
    ) -> Result<String, CoreError> {
        let vm = self.find_vm(name).await?;
        let path = self.vm_files(&vm.id).console;
        let max = self.config().guest.console_max_bytes;
        let p = path.clone();
        let bytes = tokio::task::spawn_blocking(move || match lines {
            Some(n) => tail_both(&p, n),
            None => whole(&p, max),
        })
        .await
        .map_err(|source| InternalError::Task {
            what: "reading a console log",
            source,
        })?
        .map_err(InternalError::io("reading", path))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// One round of the keeper: every live VM's console over the cap is
    /// rotated. Returns the VMs it rotated.
    pub async fn rotate_consoles(&self) -> Result<Vec<String>, CoreError> {
        let vms = self.db(|s| s.list_vms()).await?;
        let max = self.config().guest.console_max_bytes;
        let mut done = Vec::new();
        for vm in vms {
            if !matches!(
                vm.state,
                VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
            ) {
                continue;
            }
            let console = self.vm_files(&vm.id).console;
            let c = console.clone();
            match tokio::task::spawn_blocking(move || rotate(&c, max)).await {
                Ok(Ok(true)) => {
                    tracing::info!(vm_id = %vm.id, console = %console.display(), max, "rotated a console log past its cap");
                    done.push(vm.name);
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(vm_id = %vm.id, console = %console.display(), error = %e, "rotating a console log")
                }
                Err(e) => tracing::warn!(vm_id = %vm.id, error = %e, "rotating a console log"),
            }
        }
        Ok(done)
    }

    /// Runs the keeper until the daemon stops.
    pub async fn keep_consoles(self: Arc<Self>) {
        let mut every = tokio::time::interval(ROUND);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = self.rotate_consoles().await {
                tracing::warn!(error = %e, "the console keeper's round");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_read_from_the_end() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("console.log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&p, &text).expect("write");
        assert_eq!(tail(&p, 2).expect("tail"), b"line 19998\nline 19999\n");
        assert_eq!(tail(&p, 1).expect("tail"), b"line 19999\n");
        std::fs::write(&p, "a\nb").expect("write");
        assert_eq!(tail(&p, 1).expect("tail"), b"b");
        assert_eq!(tail(&p, 5).expect("tail"), b"a\nb");
        assert!(
            tail(&dir.path().join("none"), 3)
                .expect("missing")
                .is_empty()
        );
        // One endless line: the read stops at its bound.
        std::fs::write(&p, vec![b'x'; (TAIL_READ_MAX + 100) as usize]).expect("write");
        assert_eq!(tail(&p, 1).expect("tail").len() as u64, TAIL_READ_MAX);
    }

    #[test]
    fn a_tail_reaches_into_the_older_generation_when_the_current_is_short() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("console.log");
        std::fs::write(rotated(&p), "o1\no2\no3\n").expect("old");
        std::fs::write(&p, "").expect("new");
        assert_eq!(tail_both(&p, 2).expect("tail"), b"o2\no3\n");
        std::fs::write(&p, "n1\n").expect("new");
        assert_eq!(tail_both(&p, 3).expect("tail"), b"o2\no3\nn1\n");
        assert_eq!(tail_both(&p, 1).expect("tail"), b"n1\n");
        // A rotation mid-line: the halves stay apart lines.
        std::fs::write(rotated(&p), "o1\npart").expect("old");
        assert_eq!(tail_both(&p, 2).expect("tail"), b"part\nn1\n");
    }

    #[test]
    fn a_log_past_its_cap_is_moved_aside_and_appends_start_again() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("console.log");
        // As the VMM holds it: open for appending.
        let mut vmm = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .expect("open");
        vmm.write_all(&vec![b'a'; 900]).expect("write");
        assert!(!rotate(&p, 1000).expect("rotate"), "under the cap");
        vmm.write_all(&vec![b'b'; 300]).expect("write");
        assert!(rotate(&p, 1000).expect("rotate"));
        let old = std::fs::read(rotated(&p)).expect("old");
        assert_eq!(old.len(), 1000, "the last cap's worth");
        assert!(old.ends_with(b"bbb"));
        vmm.write_all(b"after\n").expect("write");
        assert_eq!(
            std::fs::read(&p).expect("new"),
            b"after\n",
            "no hole, no old bytes"
        );
        let all = whole(&p, 1000).expect("whole");
        assert!(all.starts_with(b"aaa") && all.ends_with(b"bbbafter\n"));
    }
}
