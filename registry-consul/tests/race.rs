//! A shutdown that races a recovery, held at a deterministic point by the
//! keeper's test hook (feature `testing`).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::ConsulAgent;
use fyerrpc::registry::RegisterOptions;
use fyerrpc::{Instance, Registry};
use fyerrpc_registry_consul::service_id;
use tokio::time::Instant;

async fn discover_none(r: &dyn Registry, service: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !r
        .discover(service, None)
        .await
        .map(|s| s.is_empty())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "{service} still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_racing_a_recovery_leaves_nothing_behind() {
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::{Notify, Semaphore};

    let agent = ConsulAgent::start().await;
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let recoveries = Arc::new(AtomicUsize::new(0));
    let registry = {
        let (entered, release, recoveries) = (
            Arc::clone(&entered),
            Arc::clone(&release),
            Arc::clone(&recoveries),
        );
        agent.registry().with_restore_hook(move || {
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            recoveries.fetch_add(1, Ordering::SeqCst);
            async move {
                entered.notify_one();
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
            }
        })
    };
    let svc = format!("race-{:06x}", fastrand::u32(..0xff_ffff));
    let inst = Instance::new("racer", svc.as_str(), "127.0.0.1:7801").expect("instance");
    let reg = registry
        .register(
            inst.clone(),
            RegisterOptions::default().with_ttl(Duration::from_secs(3)),
        )
        .await
        .expect("register");
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry
        .discover(&svc, None)
        .await
        .map(|s| s.len())
        .unwrap_or(0)
        != 1
    {
        assert!(Instant::now() < deadline, "not registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Deleted from outside: the keeper's next round starts a recovery, which
    // the hook holds just before it registers again.
    registry
        .deregister(&inst)
        .await
        .expect("delete from outside");
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the keeper starts a recovery");
    // Ask for the shutdown while the recovery is held...
    let mut shutdown = Box::pin(reg.shutdown());
    assert!(futures_util::poll!(&mut shutdown).is_pending());
    // ...then let the recovery register again.
    release.add_permits(1);
    shutdown.await.expect("shutdown");

    let id = service_id(&inst);
    let client = registry.client();
    assert!(
        !client.agent_has_service(&id).await.expect("ask the agent"),
        "the recovery outlived the shutdown"
    );
    // Nothing comes back later either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!client.agent_has_service(&id).await.expect("ask the agent"));
    discover_none(&registry, &svc).await;
    assert_eq!(recoveries.load(Ordering::SeqCst), 1, "one recovery ran");
}
