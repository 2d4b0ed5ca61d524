//! Bounded state: 10,000 distinct instance ids pass through a registry with
//! at most 3 alive at a time (a long series of rollouts); the client's
//! per-instance counters, its instance set and the metric series it exports
//! stay bounded. (Its own test binary: it installs the process-wide metrics
//! recorder.)

#[path = "support/prometheus.rs"]
mod prometheus;
mod support;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fyerrpc::client::AGGREGATE_INSTANCE_LABEL;
use fyerrpc::registry::MemoryRegistry;
use fyerrpc::{Client, Instance, Registry};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{check, TestServer};

const SERVICE: &str = "grpc.health.v1.Health";
const IDS: usize = 10_000;
const ALIVE: usize = 3;
const RETENTION: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_ids_through_three_slots_leave_bounded_state() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder of this binary");

    let servers: Vec<_> = (0..ALIVE).map(|_| TestServer::start()).collect();
    let registry = Arc::new(MemoryRegistry::new());
    let client = Client::builder(SERVICE, Arc::clone(&registry) as Arc<dyn Registry>)
        .request_timeout(Duration::from_secs(5))
        .stats_retention(RETENTION)
        .instance_label(false)
        .build()
        .await
        .unwrap();

    let mut alive: VecDeque<Instance> = VecDeque::new();
    let mut most_stats = 0usize;
    for i in 0..IDS {
        let inst =
            Instance::new(format!("id-{i:05}"), SERVICE, servers[i % ALIVE].address()).unwrap();
        if alive.len() == ALIVE {
            if let Some(old) = alive.pop_front() {
                registry.deregister(&old).await.unwrap();
            }
        }
        registry.insert(inst.clone());
        alive.push_back(inst);
        // Let the client see this step (the watch may merge steps; it need
        // not see every one).
        let newest = format!("id-{i:05}");
        tokio::time::timeout(Duration::from_secs(10), async {
            while !client.instances().iter().any(|x| x.id() == newest) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the client follows the registry");
        assert!(client.instance_count() <= ALIVE);
        if i % 500 == 0 {
            check(client.clone()).await.expect("a call succeeds");
            most_stats = most_stats.max(client.stats().instances.len());
        }
    }
    check(client.clone()).await.expect("a call succeeds");

    // Counters of instances gone for longer than the retention are dropped.
    tokio::time::sleep(RETENTION + Duration::from_millis(100)).await;
    let stats = client.stats();
    assert!(
        stats.instances.len() <= ALIVE,
        "{} instances in stats",
        stats.instances.len()
    );
    assert!(
        most_stats < IDS / 2,
        "at most {most_stats} instances in stats during the run"
    );
    assert!(stats.requests >= (IDS / 500) as u64);

    // Per-instance series collapse into one instance label value.
    let text = handle.render();
    let exposition = prometheus::parse(&text).expect("valid exposition");
    let attempts = exposition
        .get("fyerrpc_client_attempts_total")
        .expect("attempts are counted");
    let sets = attempts.label_sets();
    assert!(sets.len() <= 21, "{} attempt series", sets.len());
    for labels in &sets {
        assert_eq!(
            labels.get("instance").map(String::as_str),
            Some(AGGREGATE_INSTANCE_LABEL)
        );
    }
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert!(series < 200, "{series} series exported");
}
