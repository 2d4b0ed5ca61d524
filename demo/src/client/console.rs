//! Where the client's narration goes, and progress on a terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a progress line is redrawn.
const REDRAW: Duration = Duration::from_millis(100);

/// Prints the scenarios' narration: to stdout, or to stderr when stdout
/// carries JSON. Progress is drawn on stderr, only when both stdout and
/// stderr are terminals.
#[derive(Debug, Clone, Copy)]
pub struct Console {
    to_stderr: bool,
    interactive: bool,
}

impl Console {
    /// A console; `to_stderr` keeps stdout free for machine output.
    pub fn new(to_stderr: bool) -> Self {
        Self {
            to_stderr,
            interactive: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
        }
    }

    /// Prints one line of narration.
    pub fn line(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        // A closed pipe must not abort the run: narration is best effort.
        if self.to_stderr {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        } else {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    }

    /// A progress counter for `total` steps of `label`.
    pub fn progress(&self, label: &str, total: u64) -> Progress {
        Progress {
            label: label.to_owned(),
            total,
            done: AtomicU64::new(0),
            enabled: self.interactive,
            last: Mutex::new(None),
        }
    }

    /// Sleeps for `wait`, counting down on a terminal.
    pub async fn wait(&self, label: &str, wait: Duration) {
        self.line(format!("* {label} ({})", humantime::format_duration(wait)));
        if !self.interactive {
            tokio::time::sleep(wait).await;
            return;
        }
        let end = tokio::time::Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let _ = write!(
                std::io::stderr().lock(),
                "\r  {:>4.1}s left ",
                left.as_secs_f64()
            );
            tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        }
        clear_line();
    }
}

/// A step counter drawn as `[label] done/total` on a terminal.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    enabled: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    /// Counts one step and redraws at most every 100 ms (a total of 0 means
    /// open-ended: only the count is drawn).
    pub fn step(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.enabled {
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < REDRAW) && done < self.total {
            return;
        }
        *last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = if self.total == 0 {
            write!(err, "\r  [{}] {done} ", self.label)
        } else {
            write!(err, "\r  [{}] {done}/{} ", self.label, self.total)
        };
    }

    /// Clears the progress line.
    pub fn finish(&self) {
        if self.enabled {
            clear_line();
        }
    }
}

fn clear_line() {
    let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
}
