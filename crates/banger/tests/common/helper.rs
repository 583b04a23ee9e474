//! The privileged helper (`bangerd --helper`) as a test runs it: started
//! until it listens, killed however the test ends.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait::Lines;

/// What the helper logs (to stderr too) once its socket is bound and
/// handed to the daemon's uid.
const LISTENING: &str = "banger-helper listening";

/// Kills the helper however the test ends.
#[derive(Debug)]
pub struct Helper(pub Child);

impl Helper {
    /// Spawns `cmd` (a `bangerd --helper ...` with its environment) and
    /// returns once the helper says it listens. Its stderr stays drained
    /// for its whole life, so logging never blocks it.
    pub fn start(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut h = Self(cmd.spawn().expect("helper"));
        let mut stderr = Lines::new(h.0.stderr.take().expect("helper stderr"));
        let ready = stderr.wait_for(Duration::from_secs(10), |l| l.contains(LISTENING));
        assert!(
            ready.is_some(),
            "the helper did not say {LISTENING:?} within 10s (it logs at info level unless BANGER_LOG_LEVEL says less):\n{}",
            stderr.seen
        );
        h
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
