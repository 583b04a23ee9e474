//! Per-stage durations of one VM start.

use std::time::Duration;

/// Durations of the start stages, logged for the benchmark and for
/// anyone wondering where a slow start went.
pub(crate) struct StageTimer {
    vm_id: String,
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl StageTimer {
    pub(crate) fn new(vm_id: &str) -> Self {
        Self {
            vm_id: vm_id.to_owned(),
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    pub(crate) fn lap(&mut self, stage: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((stage, now - self.last));
        self.last = now;
    }

    /// `boot`: cold, `warm:<template>` or `restore:<snapshot>`.
    pub(crate) fn log(&self, boot: String) {
        let parts: Vec<String> = self
            .laps
            .iter()
            .map(|(s, d)| format!("{s}={}ms", d.as_millis()))
            .collect();
        tracing::info!(vm_id = %self.vm_id, boot = %boot, stages = %parts.join(" "), "start stages");
    }
}
