//! Totals of what the benchmarks measured, for the summary tables printed at
//! the end of a run (so ratios come from one run, under the same load).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Elements (calls, picks) done and time spent, per benchmark key.
#[derive(Debug)]
pub struct Tally<K> {
    totals: Mutex<BTreeMap<K, (u64, Duration)>>,
}

impl<K: Ord> Default for Tally<K> {
    fn default() -> Self {
        Self {
            totals: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<K: Ord + Clone> Tally<K> {
    /// Adds `elements` done in `elapsed` to `key`'s total.
    pub fn record(&self, key: &K, elements: u64, elapsed: Duration) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let entry = totals.entry(key.clone()).or_default();
        entry.0 += elements;
        entry.1 += elapsed;
    }

    /// Elements per second over everything recorded for `key`.
    pub fn per_second(&self, key: &K) -> Option<f64> {
        self.total(key)
            .map(|(n, t)| n as f64 / t.as_secs_f64().max(f64::MIN_POSITIVE))
    }

    /// Nanoseconds per element over everything recorded for `key`.
    pub fn nanos_per(&self, key: &K) -> Option<f64> {
        self.total(key)
            .filter(|(n, _)| *n > 0)
            .map(|(n, t)| t.as_nanos() as f64 / n as f64)
    }

    fn total(&self, key: &K) -> Option<(u64, Duration)> {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.get(key).copied()
    }
}

/// How the benchmark binary was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMode {
    /// Measuring (`cargo bench`), rather than running each benchmark once
    /// as a test (`cargo test --benches`).
    pub measure: bool,
    /// `--quick`: shorter measurements.
    pub quick: bool,
}

impl RunMode {
    /// The mode from the process arguments, as criterion reads them: `cargo
    /// bench` passes `--bench`; `cargo test` does not (or adds `--test`).
    pub fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        Self {
            measure: has("--bench") && !has("--test") && !has("--list"),
            quick: has("--quick"),
        }
    }
}
