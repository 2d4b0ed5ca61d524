//! The compare scenario: the same load through each balancing policy in
//! turn, against the running cluster, summed up in one table and an
//! optional SVG chart.
//!
//! For every policy of `--balancers`, [`run`] builds a fresh client on the
//! same registry (so no policy inherits another's load estimates or
//! breaker states), waits for instances, drives a short unmeasured warm-up
//! (connections, first estimates), then `--duration` of calls with
//! `--concurrency` in flight. It records every call's latency (failed calls
//! included, after the client's retries) and, for every successful call,
//! which server answered (the greeting names it). The share of an instance
//! is the fraction of a policy's successful calls it answered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fyerrpc::metrics::Stats;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Serialize, Serializer};

use super::config::ClientArgs;
use super::console::Console;
use super::scenario::{drive_load, nearest_rank, LoadLimit, LoadSamples};
use super::ClientRunError;

/// How long each policy runs when `--duration` is not given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Longest unmeasured warm-up per policy (a tenth of the run, at most this).
pub const MAX_WARMUP: Duration = Duration::from_secs(1);

/// Points of each policy's latency curve.
const CURVE_POINTS: usize = 400;

/// What one policy did.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRun {
    /// The policy's canonical name.
    pub policy: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed after the client's retries.
    pub failed: u64,
    /// Retries the client made (attempts after the first).
    pub retries: u64,
    /// Circuit breaker trips (an instance kept out for a while).
    pub breaker_trips: u64,
    /// Length of the measured run, in seconds.
    pub elapsed_seconds: f64,
    /// Calls per second.
    pub calls_per_second: f64,
    /// Median latency, in seconds.
    #[serde(serialize_with = "as_secs")]
    pub p50_latency: Duration,
    /// 90th percentile latency, in seconds.
    #[serde(serialize_with = "as_secs")]
    pub p90_latency: Duration,
    /// 99th percentile latency, in seconds.
    #[serde(serialize_with = "as_secs")]
    pub p99_latency: Duration,
    /// Slowest call, in seconds.
    #[serde(serialize_with = "as_secs")]
    pub max_latency: Duration,
    /// Successful calls by the server that answered.
    pub answered: BTreeMap<String, u64>,
    /// Fraction of the successful calls each server answered (sums to 1
    /// when any call succeeded).
    pub share: BTreeMap<String, f64>,
    /// The latency distribution: `(fraction of calls, latency)` pairs,
    /// ascending, for the chart.
    #[serde(skip)]
    pub curve: Vec<(f64, Duration)>,
}

impl PolicyRun {
    /// Sums up `samples` of `policy`.
    /// `client` holds the client's counters of the run: the differences of
    /// its stats over the run (retries, breaker trips).
    pub fn new(policy: impl Into<String>, mut samples: LoadSamples, client: ClientDelta) -> Self {
        samples.sort();
        let sorted = &samples.latencies;
        let at = |q| nearest_rank(sorted, q);
        let secs = samples.elapsed.as_secs_f64();
        let total: u64 = samples.answered.values().sum();
        let share = samples
            .answered
            .iter()
            .map(|(id, n)| (id.clone(), *n as f64 / total.max(1) as f64))
            .collect();
        let curve = if sorted.is_empty() {
            Vec::new()
        } else {
            let mut qs: Vec<f64> = (0..=CURVE_POINTS)
                .map(|i| i as f64 / CURVE_POINTS as f64)
                .chain([0.995, 0.999])
                .collect();
            qs.sort_by(f64::total_cmp);
            qs.dedup();
            qs.into_iter().map(|q| (q, at(q))).collect()
        };
        Self {
            policy: policy.into(),
            calls: samples.calls(),
            ok: samples.ok,
            failed: samples.failed,
            retries: client.retries,
            breaker_trips: client.breaker_trips,
            elapsed_seconds: secs,
            calls_per_second: if secs > 0.0 {
                samples.calls() as f64 / secs
            } else {
                0.0
            },
            p50_latency: at(0.5),
            p90_latency: at(0.9),
            p99_latency: at(0.99),
            max_latency: at(1.0),
            answered: samples.answered,
            share,
            curve,
        }
    }
}

/// What the client counted during one policy's run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientDelta {
    /// Retries (attempts after the first).
    pub retries: u64,
    /// Circuit breaker trips.
    pub breaker_trips: u64,
}

impl ClientDelta {
    /// The counts between `before` and `after`.
    pub fn between(before: &Stats, after: &Stats) -> Self {
        Self {
            retries: after.retries.saturating_sub(before.retries),
            breaker_trips: after.breaker_trips.saturating_sub(before.breaker_trips),
        }
    }
}

/// The compare scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Always `compare`.
    pub scenario: &'static str,
    /// Measured run per policy, in seconds.
    pub duration_seconds: f64,
    /// Calls in flight.
    pub concurrency: u64,
    /// Every server that answered a call, sorted.
    pub instances: Vec<String>,
    /// One entry per policy, in the order run.
    pub policies: Vec<PolicyRun>,
}

impl Comparison {
    /// The comparison of `policies`, run for `duration` each with
    /// `concurrency` calls in flight.
    pub fn new(duration: Duration, concurrency: u64, policies: Vec<PolicyRun>) -> Self {
        let instances: BTreeSet<String> = policies
            .iter()
            .flat_map(|p| p.answered.keys().cloned())
            .collect();
        Self {
            scenario: "compare",
            duration_seconds: duration.as_secs_f64(),
            concurrency,
            instances: instances.into_iter().collect(),
            policies,
        }
    }

    /// The comparison as one line of JSON.
    pub fn to_json(&self) -> String {
        // Numbers, strings, maps and vectors always serialize.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The comparison as a readable table: one row per policy, latencies
    /// in milliseconds, then one column per instance with its share.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n=== Balancing policies compared ({} each, {} calls in flight) ===",
            humantime::format_duration(Duration::from_millis(
                (self.duration_seconds * 1e3).round() as u64
            )),
            self.concurrency
        );
        let _ = write!(
            t,
            "{:<16} {:>9} {:>8} {:>8} {:>8} {:>7} {:>8} {:>6}",
            "policy", "calls/s", "p50 ms", "p90 ms", "p99 ms", "errors", "retries", "trips"
        );
        let widths: Vec<usize> = self.instances.iter().map(|i| i.len().max(7)).collect();
        for (id, w) in self.instances.iter().zip(&widths) {
            let _ = write!(t, "  {id:>w$}");
        }
        let _ = writeln!(t);
        for p in &self.policies {
            let _ = write!(
                t,
                "{:<16} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>8} {:>6}",
                p.policy,
                p.calls_per_second,
                ms(p.p50_latency),
                ms(p.p90_latency),
                ms(p.p99_latency),
                p.failed,
                p.retries,
                p.breaker_trips
            );
            for (id, w) in self.instances.iter().zip(&widths) {
                let share = p.share.get(id).copied().unwrap_or(0.0);
                let _ = write!(t, "  {:>w$}", format!("{:.1}%", share * 100.0));
            }
            let _ = writeln!(t);
        }
        let _ = writeln!(
            t,
            "(errors: calls failed after retries; trips: circuit breakers opened; \
             share: of the successful calls, by the server that answered)"
        );
        t
    }

    /// The chart as SVG text: the latency distribution of each policy (one
    /// line per policy, latency on a log scale) above the share of calls
    /// per instance (one bar per policy in each instance's group).
    pub fn to_svg(&self) -> Result<String, PlotError> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (1000, 900)).into_drawing_area();
            root.fill(&WHITE).map_err(draw_error)?;
            let (top, bottom) = root.split_vertically(540);
            self.draw_latency(&top)?;
            self.draw_shares(&bottom)?;
            root.present().map_err(draw_error)?;
        }
        Ok(svg)
    }

    /// Writes [`to_svg`](Self::to_svg) to `path`.
    pub fn write_svg(&self, path: &Path) -> Result<(), PlotError> {
        let svg = self.to_svg()?;
        std::fs::write(path, svg).map_err(|source| PlotError::Write {
            path: path.to_owned(),
            source,
        })
    }

    fn draw_latency(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), PlotError> {
        let points = self.policies.iter().flat_map(|p| p.curve.iter());
        let (lo, hi) = points.fold((f64::MAX, 0.0f64), |(lo, hi), (_, d)| {
            (lo.min(ms(*d)), hi.max(ms(*d)))
        });
        // A log axis needs a positive range.
        let lo = if lo.is_finite() && lo < f64::MAX {
            (lo * 0.8).max(0.001)
        } else {
            0.01
        };
        let hi = (hi * 1.25).max(lo * 10.0);
        let mut chart = ChartBuilder::on(area)
            .caption(
                "Latency distribution per policy",
                ("sans-serif", 24).into_font(),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..100.0)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log scale)")
            .y_desc("calls at or below (%)")
            .x_labels(12)
            .x_label_formatter(&|v| short(*v))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(draw_error)?;
        for (i, p) in self.policies.iter().enumerate() {
            let style = colour(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(
                    p.curve.iter().map(|(q, d)| (ms(*d).max(lo), q * 100.0)),
                    style,
                ))
                .map_err(draw_error)?
                .label(p.policy.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 4), (x + 18, y + 4)], style.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(draw_error)
    }

    fn draw_shares(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), PlotError> {
        let groups = self.instances.len().max(1);
        let top = self
            .policies
            .iter()
            .flat_map(|p| p.share.values())
            .fold(0.0f64, |a, s| a.max(*s * 100.0));
        let top = (top * 1.1).clamp(10.0, 100.0);
        let mut chart = ChartBuilder::on(area)
            .caption(
                "Share of calls per instance (colours as above)",
                ("sans-serif", 24).into_font(),
            )
            .margin(20)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..groups as f64, 0.0..top)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("share of successful calls (%)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(draw_error)?;
        // The instance names, under each group, in the label area.
        let label = ("sans-serif", 16)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        let (left, upper) = area.get_base_pixel();
        for (g, id) in self.instances.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            area.draw(&Text::new(id.clone(), (x - left, y - upper + 8), &label))
                .map_err(draw_error)?;
        }
        let width = 0.8 / self.policies.len().max(1) as f64;
        for (i, p) in self.policies.iter().enumerate() {
            let style = colour(i).filled();
            let bars = self.instances.iter().enumerate().map(move |(g, id)| {
                let x = g as f64 + 0.1 + width * i as f64;
                let share = p.share.get(id).copied().unwrap_or(0.0) * 100.0;
                Rectangle::new([(x, 0.0), (x + width * 0.9, share)], style)
            });
            chart.draw_series(bars).map_err(draw_error)?;
        }
        Ok(())
    }
}

/// The chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing failed.
    #[error("could not draw the chart: {0}")]
    Draw(String),
    /// The SVG file could not be written.
    #[error("could not write the chart to {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn draw_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// The colour of the `i`-th policy.
fn colour(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// A latency axis label: fewer decimals for larger values.
fn short(v: f64) -> String {
    match v {
        v if v >= 10.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn as_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Runs every policy of `args.balancers` in turn (see the [module
/// docs](self)) and writes the chart if `--plot` asks for one.
pub async fn run(args: &ClientArgs, console: Console) -> Result<Comparison, ClientRunError> {
    let duration = args.duration.unwrap_or(DEFAULT_DURATION);
    let warmup = (duration / 10).min(MAX_WARMUP);
    let workers = args.concurrency;
    let mut names: Vec<&String> = Vec::new();
    for name in &args.balancers {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut runs = Vec::with_capacity(names.len());
    for name in names {
        let mut policy_args = args.clone();
        policy_args.balancer = Some(name.clone());
        let client = policy_args.build_client().await?;
        client.ready(args.ready_timeout).await?;
        console.line(format!(
            "\n=== {name}: {} with {workers} calls in flight ===",
            humantime::format_duration(duration)
        ));
        drive_load(
            &client,
            workers,
            LoadLimit::For(warmup),
            &console,
            "warm-up",
            None,
        )
        .await;
        let before = client.stats();
        let samples = drive_load(
            &client,
            workers,
            LoadLimit::For(duration),
            &console,
            name,
            None,
        )
        .await;
        let delta = ClientDelta::between(&before, &client.stats());
        let run = PolicyRun::new(name.as_str(), samples, delta);
        let shares: Vec<String> = run
            .share
            .iter()
            .map(|(id, s)| format!("{id} {:.1}%", s * 100.0))
            .collect();
        console.line(format!(
            "  {} calls ({:.0}/s), {} failed, {} retries, {} breaker trips; \
             p50 {:.2} ms, p99 {:.2} ms; {}",
            run.calls,
            run.calls_per_second,
            run.failed,
            run.retries,
            run.breaker_trips,
            ms(run.p50_latency),
            ms(run.p99_latency),
            shares.join(", ")
        ));
        runs.push(run);
    }
    let comparison = Comparison::new(duration, workers, runs);
    if let Some(path) = &args.plot {
        comparison.write_svg(path)?;
        console.line(format!("Chart written to {}", path.display()));
    }
    Ok(comparison)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ms_each: &[(u64, &str)]) -> LoadSamples {
        let mut s = LoadSamples {
            elapsed: Duration::from_secs(2),
            ..LoadSamples::default()
        };
        for (ms, server) in ms_each {
            s.latencies.push(Duration::from_millis(*ms));
            if server.is_empty() {
                s.failed += 1;
            } else {
                s.ok += 1;
                *s.answered.entry((*server).to_owned()).or_default() += 1;
            }
        }
        s
    }

    fn comparison() -> Comparison {
        let fast = samples(&[(1, "server-A"), (2, "server-A"), (3, "server-B"), (50, "")]);
        let slow = samples(&[(20, "server-B"), (25, "server-B"), (30, "server-C")]);
        Comparison::new(
            Duration::from_secs(2),
            4,
            vec![
                PolicyRun::new(
                    "least_request",
                    fast,
                    ClientDelta {
                        retries: 1,
                        breaker_trips: 2,
                    },
                ),
                PolicyRun::new("round_robin", slow, ClientDelta::default()),
            ],
        )
    }

    #[test]
    fn sums_up_latency_and_shares() {
        let c = comparison();
        assert_eq!(c.instances, ["server-A", "server-B", "server-C"]);
        let p = &c.policies[0];
        assert_eq!((p.calls, p.ok, p.failed, p.retries), (4, 3, 1, 1));
        assert_eq!(p.breaker_trips, 2);
        assert_eq!(p.calls_per_second, 2.0);
        assert_eq!(p.p50_latency, Duration::from_millis(2));
        assert_eq!(p.p99_latency, Duration::from_millis(50));
        assert!((p.share["server-A"] - 2.0 / 3.0).abs() < 1e-9);
        let total: f64 = p.share.values().sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(p.curve.first().map(|c| c.0), Some(0.0));
        assert_eq!(p.curve.last(), Some(&(1.0, Duration::from_millis(50))));
    }

    #[test]
    fn the_table_and_json_list_every_policy_and_instance() {
        let c = comparison();
        let table = c.to_table();
        for word in [
            "least_request",
            "round_robin",
            "server-C",
            "66.7%",
            "p99 ms",
        ] {
            assert!(table.contains(word), "{word}: {table}");
        }
        let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(json["scenario"], "compare");
        assert_eq!(json["policies"][1]["policy"], "round_robin");
        assert_eq!(json["policies"][1]["share"]["server-C"], 1.0 / 3.0);
        assert!(json["policies"][0]["p99_latency"].is_f64());
        assert!(json["policies"][0].get("curve").is_none());
    }

    #[test]
    fn the_chart_has_one_line_and_one_bar_group_per_policy() {
        let c = comparison();
        let svg = c.to_svg().unwrap();
        if let Ok(path) = std::env::var("COMPARE_SVG_DUMP") {
            std::fs::write(path, &svg).unwrap();
        }
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // One thick polyline per policy (the latency curves; axes and
        // ticks are thin), each in its own colour; the bars are rects.
        let curves: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(r#"stroke-width="2""#))
            .collect();
        assert_eq!(curves.len(), 2, "{svg}");
        assert_ne!(curves[0].get(..60), curves[1].get(..60));
        for name in ["least_request", "round_robin", "server-A", "Share of calls"] {
            assert!(svg.contains(name), "{name}");
        }
    }

    #[test]
    fn an_unwritable_chart_path_is_a_typed_error() {
        let dir = std::env::temp_dir().join("fyerrpc-compare-missing-dir");
        let path = dir.join("nested").join("chart.svg");
        match comparison().write_svg(&path) {
            Err(e @ PlotError::Write { .. }) => {
                assert!(e.to_string().contains("chart.svg"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_run_without_calls_draws_an_empty_chart() {
        let c = Comparison::new(
            Duration::from_secs(1),
            1,
            vec![PolicyRun::new(
                "random",
                LoadSamples::default(),
                ClientDelta::default(),
            )],
        );
        assert_eq!(c.policies[0].p99_latency, Duration::ZERO);
        assert!(c.to_table().contains("random"));
        assert!(c.to_svg().is_ok());
    }
}
