//! `fyerrpc_client_endpoints{state}` as a Prometheus scrape shows it, with
//! endpoints ejected for one cause, for two, unreachable, and disabled.
//! (Its own test binary: it installs the process-wide metrics recorder.)

mod support;

use std::sync::Arc;
use std::time::Duration;

use fyerrpc::breaker::{ConsecutiveFailures, OpenPolicy};
use fyerrpc::health::HealthCheckConfig;
use fyerrpc::registry::MemoryRegistry;
use fyerrpc::{Client, Instance, Registry, Status};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{check, TestServer};

const SERVICE: &str = "grpc.health.v1.Health";

/// The value of `fyerrpc_client_endpoints{service=..,state=<state>}`.
fn gauge(text: &str, state: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with("fyerrpc_client_endpoints{"))
        .find(|l| l.contains(&format!("state=\"{state}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_states_count_each_endpoint_once_per_line() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this binary");

    let servers: Vec<_> = (0..4).map(|_| TestServer::start()).collect();
    let registry = Arc::new(MemoryRegistry::new());
    for (i, s) in servers.iter().enumerate() {
        registry.insert(Instance::new(format!("s{i}"), SERVICE, s.address()).unwrap());
    }
    let parked = TestServer::start();
    registry.insert(
        Instance::new("parked", SERVICE, parked.address())
            .unwrap()
            .with_status(Status::Disabled),
    );
    let client = Client::builder(SERVICE, registry as Arc<dyn Registry>)
        .request_timeout(Duration::from_secs(5))
        // No ejection cap: every cause ejects, whatever the order.
        .max_ejection_ratio(1.0)
        .breaker(Arc::new(ConsecutiveFailures::new(1).with_open(
            OpenPolicy::default().with_base_open(Duration::from_secs(60)),
        )))
        .balancer(Arc::new(fyerrpc::balance::RoundRobin))
        // Slow enough that calls trip s1's breaker before its second failed
        // check ejects it as unhealthy.
        .health_check(
            HealthCheckConfig::default()
                .with_interval(Duration::from_millis(300))
                .with_timeout(Duration::from_millis(500)),
        )
        .build()
        .await
        .unwrap();
    client.ready(Duration::from_secs(5)).await.unwrap();

    // s1: fails calls (breaker) and, through the same fault, its health
    // checks (two causes). s0: dead. s2: NOT_SERVING. s3: fine.
    servers[1].set_failing(true);
    for _ in 0..50 {
        let _ = check(client.clone()).await;
        if client.stats().instances[1].breaker == "open" {
            break;
        }
    }
    servers[0].kill();
    servers[2].set_serving(false);
    let expected = [
        ("known", 4.0),
        ("eligible", 1.0),
        ("ejected", 3.0),
        ("unreachable", 1.0),
        ("breaker_open", 1.0),
        ("unhealthy", 2.0),
        ("disabled", 1.0),
    ];
    let mut text = String::new();
    for _ in 0..250 {
        let _ = check(client.clone()).await;
        text = handle.render();
        if expected.iter().all(|(s, v)| gauge(&text, s) == Some(*v)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (state, value) in expected {
        assert_eq!(gauge(&text, state), Some(value), "state {state}:\n{text}");
    }
    let stats = client.stats();
    let causes: Vec<(&str, Vec<String>)> = stats
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.ejected_for.clone()))
        .collect();
    assert_eq!(
        causes,
        [
            ("s0", vec!["unreachable".to_owned()]),
            (
                "s1",
                vec!["breaker_open".to_owned(), "unhealthy".to_owned()]
            ),
            ("s2", vec!["unhealthy".to_owned()]),
            ("s3", vec![]),
        ]
    );
}
