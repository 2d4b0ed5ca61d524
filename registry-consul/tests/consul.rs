//! Behaviour against a real Consul agent beyond the conformance suite:
//! propagation to watchers, interoperability with the consul CLI, checks,
//! agent restarts, ACL token and datacenter.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{counter, ConsulAgent};
use futures_util::StreamExt;
use fyerrpc::registry::{RegisterOptions, WatchStream};
use fyerrpc::{Instance, Registry, RegistryError};
use fyerrpc_registry_consul::metrics::{INVALID_ENTRIES_TOTAL, REREGISTRATIONS_TOTAL};
use fyerrpc_registry_consul::wire::CheckStatus;
use fyerrpc_registry_consul::{service_id, ttl_check_id, CheckConfig, ConsulRegistry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How long a change may take to reach a watching client.
const PROPAGATION: Duration = Duration::from_secs(1);

fn service(name: &str) -> String {
    format!("{name}-{:06x}", fastrand::u32(..0xff_ffff))
}

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(id, service, format!("127.0.0.1:{port}")).expect("valid instance")
}

fn ids(set: &[Instance]) -> Vec<String> {
    let mut ids: Vec<String> = set.iter().map(|i| i.id().to_owned()).collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

/// Reads the watch until a set with ids `want` arrives; returns the set.
async fn watch_until(w: &mut WatchStream, want: &[&str], within: Duration) -> Vec<Instance> {
    let want = sorted(want);
    let mut last = Vec::new();
    let found = tokio::time::timeout(within, async {
        while let Some(item) = w.next().await {
            if let Ok(set) = item {
                last = ids(&set);
                if last == want {
                    return Some(set);
                }
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(set)) => set,
        Ok(None) => panic!("watch ended at {last:?}, expected {want:?}"),
        Err(_) => panic!("watch did not show {want:?} within {within:?} (last {last:?})"),
    }
}

/// Polls `discover` until it returns ids `want`.
async fn discover_until(r: &dyn Registry, service: &str, want: &[&str], within: Duration) {
    let want = sorted(want);
    let deadline = Instant::now() + within;
    loop {
        let got = r.discover(service, None).await.map(|s| ids(&s));
        match got {
            Ok(got) if got == want => return,
            _ if Instant::now() > deadline => {
                panic!("discover({service}) = {got:?}, expected {want:?} within {within:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_a_watcher_within_one_second() {
    let agent = ConsulAgent::start().await;
    let registry = agent.registry();
    let svc = service("propagation");
    let mut w = registry.watch(&svc, None).await.expect("watch");
    watch_until(&mut w, &[], PROPAGATION).await;

    // A long TTL: the keeper renews only after the checks below.
    let options = RegisterOptions::default().with_ttl(Duration::from_secs(60));
    let a = registry
        .register(instance(&svc, "a", 7001), options.clone())
        .await
        .expect("register a");
    watch_until(&mut w, &["a"], PROPAGATION).await;
    let b = registry
        .register(instance(&svc, "b", 7002), options)
        .await
        .expect("register b");
    watch_until(&mut w, &["a", "b"], PROPAGATION).await;

    let client = registry.client();
    let a_check = ttl_check_id(&service_id(&instance(&svc, "a", 7001)));
    client
        .update_ttl_check(&a_check, CheckStatus::Critical)
        .await
        .expect("fail a's check");
    watch_until(&mut w, &["b"], PROPAGATION).await;
    client
        .update_ttl_check(&a_check, CheckStatus::Passing)
        .await
        .expect("pass a's check");
    watch_until(&mut w, &["a", "b"], PROPAGATION).await;

    b.shutdown().await.expect("deregister b");
    watch_until(&mut w, &["a"], PROPAGATION).await;
    a.shutdown().await.expect("deregister a");
    watch_until(&mut w, &[], PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_registered_with_the_cli_are_discovered() {
    let agent = ConsulAgent::start().await;
    let registry = agent.registry();
    let svc = service("cli");
    let mut w = registry.watch(&svc, None).await.expect("watch");
    watch_until(&mut w, &[], PROPAGATION).await;

    agent
        .cli(&[
            "services",
            "register",
            &format!("-name={svc}"),
            "-address=127.0.0.1",
            "-port=9901",
        ])
        .await;
    let cli_id = format!("{svc}@{}", agent.node());
    let set = watch_until(&mut w, &[cli_id.as_str()], PROPAGATION).await;
    let found = &set[0];
    assert_eq!(
        found.id(),
        cli_id,
        "the CLI's id defaults to the name, qualified by the node"
    );
    assert_eq!(found.address(), "127.0.0.1:9901");
    assert_eq!(found.weight(), 100, "default weight");
    assert_eq!(found.version(), "v1", "default version");
    assert!(found.is_enabled());

    // Malformed meta from another tool: the entry stays, the meta is ignored.
    let invalid_before = counter(INVALID_ENTRIES_TOTAL);
    agent
        .cli(&[
            "services",
            "register",
            &format!("-name={svc}"),
            "-id=odd",
            "-address=127.0.0.1",
            "-port=9902",
            "-meta=weight=abc",
            "-meta=zone=z9",
        ])
        .await;
    let odd_id = format!("odd@{}", agent.node());
    let set = watch_until(&mut w, &[odd_id.as_str(), cli_id.as_str()], PROPAGATION).await;
    let odd = set.iter().find(|i| i.id() == odd_id).expect("odd listed");
    assert_eq!(odd.weight(), 100, "a malformed weight is ignored");
    assert_eq!(odd.meta("zone"), Some("z9"));
    assert!(
        counter(INVALID_ENTRIES_TOTAL) > invalid_before,
        "and counted"
    );

    agent.cli(&["services", "deregister", "-id=odd"]).await;
    watch_until(&mut w, &[cli_id.as_str()], PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_are_listed_by_the_cli_as_passing() {
    let agent = ConsulAgent::start().await;
    let registry = agent.registry();
    let svc = service("listed");
    let inst = instance(&svc, "server-a", 7101)
        .with_weight(30)
        .expect("weight")
        .with_metadata("tags", "grpc,blue");
    let consul_id = service_id(&inst);
    let reg = registry
        .register(inst, RegisterOptions::default())
        .await
        .expect("register");
    discover_until(&registry, &svc, &["server-a"], Duration::from_secs(5)).await;

    let services = agent.cli(&["catalog", "services", "-tags"]).await;
    let line = services
        .lines()
        .find(|l| l.starts_with(&svc))
        .unwrap_or_else(|| panic!("{svc} not in `consul catalog services`:\n{services}"));
    assert!(
        line.contains("blue,grpc,v1"),
        "tags and version tag: {line}"
    );

    // `consul watch` without a handler prints the passing instances once.
    let watched = agent
        .cli(&[
            "watch",
            "-type=service",
            &format!("-service={svc}"),
            "-passingonly=true",
        ])
        .await;
    let entries: serde_json::Value =
        serde_json::from_str(&watched).expect("JSON from consul watch");
    let entry = &entries[0];
    assert_eq!(entry["Service"]["ID"], consul_id.as_str(), "{watched}");
    assert_eq!(
        entry["Service"]["Meta"]["fyerrpc_id"], "server-a",
        "{watched}"
    );
    assert_eq!(entry["Service"]["Port"], 7101);
    assert_eq!(entry["Service"]["Weights"]["Passing"], 30);
    assert_eq!(entry["Service"]["Meta"]["version"], "v1");
    let checks = entry["Checks"].as_array().expect("checks");
    assert!(checks.iter().all(|c| c["Status"] == "passing"), "{watched}");
    assert!(
        checks
            .iter()
            .any(|c| c["CheckID"] == ttl_check_id(&consul_id).as_str() && c["Type"] == "ttl"),
        "the TTL check is there: {watched}"
    );

    let health = registry
        .client()
        .health_service(&svc, true, None)
        .await
        .expect("health");
    assert_eq!(health.value.len(), 1);
    reg.shutdown().await.expect("shutdown");
    let services = agent.cli(&["catalog", "services"]).await;
    assert!(
        !services.lines().any(|l| l == svc),
        "deregistered: {services}"
    );
}

/// A minimal HTTP health endpoint that answers 200 or 503.
async fn health_endpoint(healthy: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let healthy = Arc::clone(&healthy);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let status = if healthy.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_check_follows_the_health_url() {
    let agent = ConsulAgent::start().await;
    let mut check = CheckConfig::default();
    check.http_interval = Duration::from_millis(500);
    let registry = ConsulRegistry::new(agent.config().with_check(check)).expect("config");
    let healthy = Arc::new(AtomicBool::new(true));
    let url = health_endpoint(Arc::clone(&healthy)).await;
    let svc = service("http-check");
    let mut w = registry.watch(&svc, None).await.expect("watch");
    let reg = registry
        .register(
            instance(&svc, "a", 7201),
            RegisterOptions::default().with_health_url(url),
        )
        .await
        .expect("register");
    // The HTTP check starts passing: the instance shows at once.
    watch_until(&mut w, &["a"], PROPAGATION).await;
    healthy.store(false, Ordering::SeqCst);
    watch_until(&mut w, &[], Duration::from_secs(5)).await;
    healthy.store(true, Ordering::SeqCst);
    watch_until(&mut w, &["a"], Duration::from_secs(5)).await;
    reg.shutdown().await.expect("shutdown");
    watch_until(&mut w, &[], PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_comes_back_after_the_agent_restarts() {
    let mut agent = ConsulAgent::start().await;
    let registry = agent.registry();
    let svc = service("restart");
    let phoenix = instance(&svc, "phoenix", 7301);
    let reg = registry
        .register(
            phoenix.clone(),
            RegisterOptions::default().with_ttl(Duration::from_secs(3)),
        )
        .await
        .expect("register");
    let mut w = registry.watch(&svc, None).await.expect("watch");
    watch_until(&mut w, &["phoenix"], PROPAGATION).await;
    let before = counter(REREGISTRATIONS_TOTAL);

    agent.restart().await; // dev mode: the new agent knows nothing
                           // The keeper registers the instance again with the new agent. (The watch
                           // may see no change at all: a dev agent that restarts fast can rebuild the
                           // same state at the same index.)
    let deadline = Instant::now() + Duration::from_secs(15);
    while !registry
        .client()
        .agent_has_service(&service_id(&phoenix))
        .await
        .unwrap_or(false)
    {
        assert!(
            Instant::now() < deadline,
            "not registered again within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    discover_until(&registry, &svc, &["phoenix"], Duration::from_secs(15)).await;
    assert!(
        counter(REREGISTRATIONS_TOTAL) > before,
        "re-registration is counted"
    );
    assert!(reg.is_active());
    reg.shutdown().await.expect("shutdown");
    watch_until(&mut w, &[], PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_token_and_datacenter_are_sent() {
    const MASTER: &str = "fyerrpc-test-master-token";
    let agent = ConsulAgent::start_with_acl(MASTER).await;
    let svc = service("acl");

    let anonymous =
        ConsulRegistry::new(agent.config().with_token("not-a-real-token")).expect("config");
    let refused = anonymous
        .register(instance(&svc, "a", 7401), RegisterOptions::default())
        .await
        .expect_err("an unknown token is refused");
    assert!(matches!(refused, RegistryError::Refused(_)), "{refused}");

    let registry = ConsulRegistry::new(agent.config().with_datacenter("dc1")).expect("config");
    let reg = registry
        .register(instance(&svc, "a", 7401), RegisterOptions::default())
        .await
        .expect("the management token may register");
    discover_until(&registry, &svc, &["a"], Duration::from_secs(5)).await;

    let elsewhere = ConsulRegistry::new(agent.config().with_datacenter("nowhere")).expect("config");
    let err = elsewhere
        .discover(&svc, None)
        .await
        .expect_err("an unknown datacenter is an error");
    assert!(err.to_string().contains("datacenter"), "{err}");
    reg.shutdown().await.expect("shutdown");
}

/// The `(id, address)` pairs of a set, sorted.
fn pairs(set: &[Instance]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = set
        .iter()
        .map(|i| (i.id().to_owned(), i.address().to_owned()))
        .collect();
    pairs.sort();
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_service_id_on_two_nodes_is_two_instances() {
    let agent = ConsulAgent::start().await;
    let registry = agent.registry();
    let svc = service("two-nodes");
    // The common case: each node registers `web` without an id of its own;
    // and a fyerrpc id that two nodes happen to share.
    for (node, address, meta) in [
        ("node-a", "127.0.0.11", ""),
        ("node-b", "127.0.0.12", ""),
        ("node-a", "127.0.0.11", r#","Meta":{"fyerrpc_id":"x"}"#),
        ("node-b", "127.0.0.12", r#","Meta":{"fyerrpc_id":"x"}"#),
    ] {
        let id = if meta.is_empty() { "web" } else { "fx" };
        let port = if meta.is_empty() { 80 } else { 81 };
        let body = format!(
            r#"{{"Node":"{node}","Address":"{address}","Service":{{"ID":"{id}","Service":"{svc}","Port":{port}{meta}}}}}"#
        );
        assert_eq!(
            agent.put("/v1/catalog/register", &body).await,
            200,
            "{body}"
        );
    }
    let want = vec![
        ("web@node-a".to_owned(), "127.0.0.11:80".to_owned()),
        ("web@node-b".to_owned(), "127.0.0.12:80".to_owned()),
        ("x@node-a".to_owned(), "127.0.0.11:81".to_owned()),
        ("x@node-b".to_owned(), "127.0.0.12:81".to_owned()),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = pairs(&registry.discover(&svc, None).await.expect("discover"));
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "discover = {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut w = registry.watch(&svc, None).await.expect("watch");
    let set = watch_until(
        &mut w,
        &["web@node-a", "web@node-b", "x@node-a", "x@node-b"],
        PROPAGATION,
    )
    .await;
    assert_eq!(pairs(&set), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_in_two_services_on_one_agent() {
    let agent = ConsulAgent::start().await;
    let registry = agent.registry();
    let (svc_a, svc_b) = (service("greet"), service("user"));
    let options = RegisterOptions::default().with_ttl(Duration::from_secs(3));
    let a = registry
        .register(instance(&svc_a, "pod-7", 7501), options.clone())
        .await
        .expect("register A");
    let b = registry
        .register(instance(&svc_b, "pod-7", 7502), options.clone())
        .await
        .expect("register B");
    discover_until(&registry, &svc_a, &["pod-7"], PROPAGATION).await;
    discover_until(&registry, &svc_b, &["pod-7"], PROPAGATION).await;
    // Both keepers run a few rounds: neither takes the other's place.
    tokio::time::sleep(options.keepalive_period() * 3).await;
    assert!(a.is_active() && b.is_active(), "both still kept");
    a.shutdown().await.expect("shut A down");
    discover_until(&registry, &svc_a, &[], PROPAGATION).await;
    tokio::time::sleep(options.keepalive_period() * 2).await;
    let left = registry.discover(&svc_b, None).await.expect("discover B");
    assert_eq!(ids(&left), ["pod-7"], "B survives A's shutdown");
    assert!(b.is_active());
    b.shutdown().await.expect("shut B down");
    discover_until(&registry, &svc_b, &[], PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_process_leaves_the_new_ones_registration() {
    let agent = ConsulAgent::start().await;
    // Two registries: two processes with the same instance id, as during a
    // quick restart.
    let (old_process, new_process) = (agent.registry(), agent.registry());
    let svc = service("restarted");
    let options = RegisterOptions::default().with_ttl(Duration::from_secs(3));
    let old = old_process
        .register(instance(&svc, "server-1", 7601), options.clone())
        .await
        .expect("old registers");
    discover_until(&old_process, &svc, &["server-1"], PROPAGATION).await;
    let new = new_process
        .register(instance(&svc, "server-1", 7602), options.clone())
        .await
        .expect("new registers");
    let deadline = Instant::now() + options.keepalive_period() * 3 + PROPAGATION;
    while old.is_active() {
        assert!(
            Instant::now() < deadline,
            "the old keeper did not stand down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let set = new_process.discover(&svc, None).await.expect("discover");
    assert_eq!(pairs(&set), [("server-1".into(), "127.0.0.1:7602".into())]);
    old.shutdown().await.expect("old shuts down");
    tokio::time::sleep(options.keepalive_period()).await;
    let set = new_process.discover(&svc, None).await.expect("discover");
    assert_eq!(
        pairs(&set),
        [("server-1".into(), "127.0.0.1:7602".into())],
        "the old process's shutdown left the new registration"
    );
    assert!(new.is_active());
    new.shutdown().await.expect("new shuts down");
    discover_until(&new_process, &svc, &[], PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_server_is_passing_at_once() {
    let agent = ConsulAgent::start().await;
    // Default checks: a TTL check and an HTTP check at the default interval.
    let registry = agent.registry();
    let healthy = Arc::new(AtomicBool::new(true));
    let url = health_endpoint(healthy).await;
    let svc = service("visible");
    let client = registry.client().clone();
    let reg = registry
        .register(
            instance(&svc, "fresh", 7701),
            RegisterOptions::default()
                .with_ttl(Duration::from_secs(3))
                .with_health_url(url),
        )
        .await
        .expect("register");
    let registered = Instant::now();
    loop {
        let passing = client
            .health_service(&svc, true, None)
            .await
            .expect("health");
        if !passing.value.is_empty() {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(1),
            "not passing within 1 s of registering"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("passing {:?} after registering", registered.elapsed());
    reg.shutdown().await.expect("shutdown");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_a_hung_agent_after_the_deregistration_timeout() {
    let agent = ConsulAgent::start().await;
    let registry = ConsulRegistry::new(
        agent
            .config()
            .with_deregister_timeout(Duration::from_secs(1)),
    )
    .expect("config");
    let svc = service("hung");
    let reg = registry
        .register(
            instance(&svc, "a", 7901),
            RegisterOptions::default().with_ttl(Duration::from_secs(30)),
        )
        .await
        .expect("register");
    agent.pause();
    let started = Instant::now();
    let result = reg.shutdown().await;
    let took = started.elapsed();
    agent.resume();
    let err = result.expect_err("a hung agent cannot deregister");
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");
    // The blocking-query request timeout (15 s) would be far longer.
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
}
