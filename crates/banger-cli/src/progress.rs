//! Rendering streamed progress events as bars and spinners.

use std::time::{Duration, Instant};

use banger_api::event::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One spinner (or bar, when the stage knows its size) per stage, each
/// closed with its duration; a summary line at the end.
#[derive(Debug)]
pub struct Stages {
    enabled: bool,
    current: Option<(String, Instant, ProgressBar)>,
    done: Vec<(String, Duration)>,
    started: Instant,
}

impl Stages {
    /// `enabled = false` draws nothing (JSON output, scripts). Drawing also
    /// stays off by itself when stderr is not a terminal.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            current: None,
            done: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn update(&mut self, p: &Progress) {
        let same = self.current.as_ref().is_some_and(|(s, _, _)| *s == p.stage);
        if !same {
            self.close_current(true);
            let bar = self.new_bar(p);
            self.current = Some((p.stage.clone(), Instant::now(), bar));
        }
        if let Some((_, _, bar)) = &self.current {
            if let Some((done, total)) = p.bytes {
                bar.set_length(total);
                bar.set_position(done);
            } else if let Some(f) = p.fraction {
                bar.set_length(1000);
                bar.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
            }
            if !p.detail.is_empty() {
                bar.set_message(
                    crate::printable::printable(&format!("{}: {}", p.stage, p.detail)).into_owned(),
                );
            }
        }
    }

    fn new_bar(&self, p: &Progress) -> ProgressBar {
        let target = if self.enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = if let Some((_, total)) = p.bytes {
            let b = ProgressBar::with_draw_target(Some(total), target);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        } else if p.fraction.is_some() {
            let b = ProgressBar::with_draw_target(Some(1000), target);
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {percent}%")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        } else {
            let b = ProgressBar::with_draw_target(None, target);
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        };
        let message = if p.detail.is_empty() {
            p.stage.clone()
        } else {
            format!("{}: {}", p.stage, p.detail)
        };
        bar.set_message(crate::printable::printable(&message).into_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    }

    fn close_current(&mut self, ok: bool) {
        if let Some((stage, start, bar)) = self.current.take() {
            let took = start.elapsed();
            let mark = if ok { "✓" } else { "✗" };
            bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.finish_with_message(format!("{mark} {stage} ({})", fmt_duration(took)));
            self.done.push((stage, took));
        }
    }

    /// Closes the last stage; prints the total when anything was shown.
    pub fn finish(&mut self, ok: bool) {
        self.close_current(ok);
        if self.enabled && !self.done.is_empty() && console_is_term() {
            eprintln!("  total {}", fmt_duration(self.started.elapsed()));
        }
    }

    /// Stages seen so far with their durations.
    pub fn summary(&self) -> &[(String, Duration)] {
        &self.done
    }
}

fn console_is_term() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// `850ms`, `3.2s`, `2m05s`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_closed_in_order() {
        let mut s = Stages::new(false);
        s.update(&Progress::stage("validate", ""));
        s.update(&Progress::stage("validate", "still"));
        s.update(&Progress {
            stage: "download".into(),
            detail: String::new(),
            fraction: None,
            bytes: Some((10, 100)),
        });
        s.finish(true);
        let names: Vec<_> = s.summary().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["validate", "download"]);
    }

    #[test]
    fn durations_are_compact() {
        assert_eq!(fmt_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(fmt_duration(Duration::from_millis(3200)), "3.2s");
        assert_eq!(fmt_duration(Duration::from_secs(125)), "2m05s");
    }
}
