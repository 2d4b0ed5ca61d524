//! End-to-end tests of the greet cluster with in-process servers on free
//! ports and the seed's fault settings at shortened durations.

mod common;
#[path = "../../core/tests/support/prometheus.rs"]
mod prometheus;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::{http_get, server_list, start, start_in, TestServer, LIMIT};
use fyerrpc::registry::MemoryRegistry;
use fyerrpc::Registry;
use fyerrpc_demo::client::{self, ClientArgs, Console, Report};
use fyerrpc_demo::proto::{HelloRequest, StatsRequest};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The seed's cluster with shortened durations: A fails after `fail_after`
/// calls for 3 s (longer than a scenario's burst, so that A trips once, as
/// in the seed), B fails 10 % of calls, C is normal.
async fn cluster(fail_after: &str) -> [TestServer; 3] {
    [
        start(&[
            "--id",
            "server-A",
            "--fail-after",
            fail_after,
            "--fail-duration",
            "3s",
        ])
        .await,
        start(&["--id", "server-B", "--fail-rate", "0.1"]).await,
        start(&["--id", "server-C"]).await,
    ]
}

/// Runs greet-client in process with `args` against `servers`.
async fn run_client(servers: &[TestServer], args: &[&str]) -> Report {
    let list = server_list(&servers.iter().collect::<Vec<_>>());
    let argv = [
        "greet-client",
        "--servers",
        list.as_str(),
        "--health-interval",
        "200ms",
    ]
    .into_iter()
    .chain(args.iter().copied());
    let args = ClientArgs::try_parse_from(argv).expect("valid flags");
    tokio::time::timeout(
        Duration::from_secs(120),
        client::run(args, Console::new(true)),
    )
    .await
    .expect("the client finishes")
    .expect("the client runs")
}

async fn total_greets(servers: &[TestServer]) -> i64 {
    let mut sum = 0;
    for s in servers {
        sum += s.total_greets().await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_scenario_ends_with_no_failed_calls_and_no_lost_greets() {
    let servers = cluster("20").await;
    let report = run_client(
        &servers,
        &[
            "--scenario",
            "failover",
            "--failover-calls",
            "120",
            "--recovery-wait",
            "3500ms",
        ],
    )
    .await;

    assert_eq!(report.greetings.failed, 0, "{report:#?}");
    assert_eq!(
        report.greetings.calls, 130,
        "120 fast calls and 10 verify calls"
    );
    assert_eq!(report.phases[0].calls.ok, 120);
    // Server A's window opened and its failures were retried elsewhere.
    let a = &servers[0];
    let a_stats = report
        .stats
        .instances
        .iter()
        .find(|i| i.address == a.grpc.to_string())
        .expect("server A is known");
    assert!(a_stats.failures > 0, "{report:#?}");
    assert!(report.stats.retries > 0 && report.stats.failovers > 0);
    // After the recovery wait, A serves again.
    let (status, body) = http_get(a.http, "/health").await;
    assert_eq!(status, 200, "{body}");
    // No greet lost, none counted twice.
    assert_eq!(total_greets(&servers).await, report.greetings.ok as i64);
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_run_greets_add_up_across_servers() {
    let servers = cluster("60").await;
    let report = run_client(
        &servers,
        &[
            "--scenario",
            "load",
            "--requests",
            "300",
            "--concurrency",
            "8",
        ],
    )
    .await;
    assert_eq!(report.greetings.calls, 300);
    assert_eq!(report.stats.requests, 300);
    assert_eq!(total_greets(&servers).await, report.greetings.ok as i64);
    assert!(report.greetings.ok > 0);
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_a_failing_server_as_down() {
    let server = start(&[
        "--id",
        "server-A",
        "--fail-after",
        "2",
        "--fail-duration",
        "30s",
    ])
    .await;
    let mut greet = server.plain_client().await;
    let hello = || HelloRequest {
        name: "Ann".into(),
        greeting: String::new(),
    };
    for _ in 0..2 {
        greet.say_hello(hello()).await.expect("healthy calls pass");
    }
    let (status, body) = http_get(server.http, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"UP""#), "{body}");

    let err = greet
        .say_hello(hello())
        .await
        .expect_err("the window opened");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(err.message(), "service server-A is currently unavailable");

    let (status, body) = http_get(server.http, "/health").await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["id"], "server-A");
    assert_eq!(json["status"], "DOWN");
    assert_eq!(json["request_count"], 3);
    assert!(json["failing_until"].is_string(), "{body}");
    let (status, _) = http_get(server.http, "/status").await;
    assert_eq!(status, 503);

    // gRPC health says the same.
    let mut health = HealthClient::new(common::channel(server.grpc).await);
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let reply = health.check(check("GreetService")).await.expect("check");
    assert_eq!(reply.into_inner().status, ServingStatus::NotServing as i32);
    // The failed call was not counted; statistics are never failed on purpose.
    let stats = greet
        .get_greet_stats(StatsRequest::default())
        .await
        .expect("stats");
    assert_eq!(stats.into_inner().total_greets, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let server = start(&[
        "--id",
        "server-M",
        "--fail-after",
        "3",
        "--fail-duration",
        "30s",
    ])
    .await;
    let mut greet = server.plain_client().await;
    for i in 0..5 {
        let _ = greet
            .say_hello(HelloRequest {
                name: format!("U{i}"),
                greeting: String::new(),
            })
            .await;
    }
    greet
        .get_greet_stats(StatsRequest::default())
        .await
        .expect("stats");

    let (status, text) = http_get(server.http, "/metrics").await;
    assert_eq!(status, 200);
    let families = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // A sample by its own name (`_count`, `_bucket` included) in any family.
    let value =
        |name: &str, labels: &[(&str, &str)]| families.values().find_map(|f| f.value(name, labels));
    let ok = [
        ("method", "SayHello"),
        ("code", "ok"),
        ("server", "server-M"),
    ];
    assert_eq!(
        value("greet_server_requests_total", &ok),
        Some(3.0),
        "{text}"
    );
    let failed = [("method", "SayHello"), ("code", "unavailable")];
    assert_eq!(
        value("greet_server_requests_total", &failed),
        Some(2.0),
        "{text}"
    );
    let said = [("method", "SayHello")];
    assert_eq!(
        value("greet_server_request_duration_seconds_count", &said),
        Some(5.0)
    );
    let inf = [("method", "SayHello"), ("le", "+Inf")];
    assert_eq!(
        value("greet_server_request_duration_seconds_bucket", &inf),
        Some(5.0)
    );
    assert_eq!(
        value("greet_server_injected_faults_total", &[("fault", "window")]),
        Some(2.0)
    );
    assert_eq!(value("greet_server_healthy", &[]), Some(0.0));
    server.stop().await;
}

#[test]
fn the_prometheus_parser_rejects_malformed_text() {
    assert!(prometheus::parse("# TYPE a_b counter\na_b{x=\"1\",y=\"q\\\"\"} 3\n").is_ok());
    for bad in [
        "a b",
        "9a 1",
        "a{x=1} 1",
        "a{x=\"1\" 1",
        "a 1 2 3",
        "# TYPE a dunno",
        "a NaNa",
    ] {
        let text = format!("# TYPE a counter\n{bad}");
        assert!(prometheus::parse(&text).is_err(), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_deregisters_before_it_stops_serving() {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let server = start_in(Some(registry.clone()), &["--id", "server-R", "--ttl", "2s"]).await;
    let registered = tokio::time::timeout(LIMIT, async {
        loop {
            let set = registry
                .discover("GreetService", None)
                .await
                .expect("discover");
            if !set.is_empty() {
                return set;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("registered");
    assert_eq!(registered[0].id(), "server-R");
    assert_eq!(registered[0].address(), server.grpc.to_string());

    let http = server.http;
    let report = server.stop().await;
    assert!(report.drained && report.deregister_error.is_none());
    assert!(registry
        .discover("GreetService", None)
        .await
        .expect("discover")
        .is_empty());
    // The health port is closed too.
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_scenario_runs_every_phase() {
    let servers = cluster("20").await;
    let report = run_client(
        &servers,
        &[
            "--failover-calls",
            "60",
            "--recovery-wait",
            "3500ms",
            "--breaker-open",
            "500ms",
        ],
    )
    .await;
    let names: Vec<&str> = report.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "basic",
            "failover",
            "failover-verify",
            "breaker",
            "breaker-verify",
            "concurrent"
        ]
    );
    assert!(report.stats.breaker_trips > 0, "{report:#?}");
    // The breaker trips on server A's own failures, which are retried
    // elsewhere: no call of the breaker phase fails, and it ends with every
    // breaker closed again.
    for verify in ["failover-verify", "breaker", "breaker-verify"] {
        let p = report
            .phases
            .iter()
            .find(|p| p.name == verify)
            .expect("phase");
        assert_eq!(p.calls.failed, 0, "{verify}: {report:#?}");
    }
    assert!(
        report.stats.instances.iter().all(|i| i.breaker == "closed"),
        "{report:#?}"
    );
    assert_eq!(report.panic_picks_after_waits, Some(0), "{report:#?}");
    let table = report.to_table();
    for row in [
        "Total requests",
        "Retry count",
        "Failover count",
        "Breaker trips",
        "p99",
    ] {
        assert!(table.contains(row), "{table}");
    }
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
    assert_eq!(json["scenario"], "all");
    assert_eq!(json["instances"].as_array().map(Vec::len), Some(3));
}
