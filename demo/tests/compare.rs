//! The compare scenario end to end: `greet-client --scenario compare`
//! against in-process servers, one of them slowed down with `--latency`.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{server_list, start};

const CLIENT: &str = env!("CARGO_BIN_EXE_greet-client");

/// Runs the client with `args` to completion (killed after a minute).
fn run_client(args: Vec<String>) -> Output {
    let mut child = Command::new(CLIENT)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("greet-client did not exit within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_each_policy_and_plots_one_series_per_policy() {
    let fast = start(&["--id", "fast"]).await;
    let slow = start(&[
        "--id",
        "slow",
        "--latency",
        "20ms",
        "--latency-jitter",
        "5ms",
    ])
    .await;
    let list = server_list(&[&fast, &slow]);
    let dir = tempfile::tempdir().expect("temp dir");
    let svg_path = dir.path().join("compare.svg");
    let args: Vec<String> = [
        "--servers",
        &list,
        "--scenario",
        "compare",
        "--balancers",
        "round_robin,p2c",
        "--duration",
        "1s",
        "--concurrency",
        "4",
        "--output",
        "json",
        "--plot",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([svg_path.display().to_string()])
    .collect();
    let out = tokio::task::spawn_blocking(move || run_client(args))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(json["scenario"], "compare");
    let policies = json["policies"].as_array().expect("policies");
    let names: Vec<&str> = policies
        .iter()
        .filter_map(|p| p["policy"].as_str())
        .collect();
    assert_eq!(names, ["round_robin", "least_request"]);
    for p in policies {
        let ok = p["ok"].as_u64().expect("ok");
        assert!(ok > 0, "{p}");
        assert!(
            p["calls_per_second"].as_f64().is_some_and(|r| r > 0.0),
            "{p}"
        );
        let (p50, p99) = (p["p50_latency"].as_f64(), p["p99_latency"].as_f64());
        assert!(p50.is_some() && p50 <= p99, "{p}");
        let share: f64 = p["share"]
            .as_object()
            .expect("share")
            .values()
            .filter_map(serde_json::Value::as_f64)
            .sum();
        assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}: {p}");
        let answered: u64 = p["answered"]
            .as_object()
            .expect("answered")
            .values()
            .filter_map(serde_json::Value::as_u64)
            .sum();
        assert_eq!(answered, ok, "{p}");
    }
    // Round robin alternates, so the slow server answers about half; its
    // 20 ms put round robin's p99 at 20 ms or more.
    let rr = &policies[0];
    assert!(
        rr["share"]["slow"].as_f64().is_some_and(|s| s > 0.2),
        "{rr}"
    );
    assert!(
        rr["p99_latency"].as_f64().is_some_and(|d| d >= 0.020),
        "{rr}"
    );
    assert!(stderr.contains("=== least_request"), "narration: {stderr}");

    let svg = std::fs::read_to_string(&svg_path).expect("the chart was written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let curves = svg
        .lines()
        .filter(|l| l.starts_with("<polyline") && l.contains(r#"stroke-width="2""#))
        .count();
    assert_eq!(curves, 2, "one latency curve per policy");
    for name in ["round_robin", "least_request", "fast", "slow"] {
        assert!(svg.contains(name), "{name} is labelled in the chart");
    }
    fast.stop().await;
    slow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compare_table_lists_policies_and_instances() {
    let a = start(&["--id", "alpha"]).await;
    let b = start(&["--id", "beta", "--latency", "2ms"]).await;
    let list = server_list(&[&a, &b]);
    let args: Vec<String> = [
        "--servers",
        &list,
        "--scenario",
        "compare",
        "--balancers",
        "random,peak_ewma",
        "--duration",
        "1s",
        "--concurrency",
        "2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let out = tokio::task::spawn_blocking(move || run_client(args))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = stdout
        .split("=== Balancing policies compared")
        .nth(1)
        .expect("the table follows the narration");
    for word in ["calls/s", "p99 ms", "random", "peak_ewma", "alpha", "beta"] {
        assert!(table.contains(word), "{word}: {table}");
    }
    a.stop().await;
    b.stop().await;
}
