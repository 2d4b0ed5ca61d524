use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::*;
use crate::registry::MemoryRegistry;

const LIMIT: Duration = Duration::from_secs(10);

struct Running {
    registry: Arc<dyn Registry>,
    address: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Stopped, ServeError>>,
}

async fn start(flag: Option<HealthFlag>, drain: Duration) -> Running {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let instance = Instance::new("s1", "Svc", address.clone()).unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let mut lifecycle = Lifecycle::new(registry.clone(), instance)
        .health(reporter, ["Svc"])
        .lame_duck(Duration::from_millis(400))
        .drain_timeout(drain);
    if let Some(flag) = flag {
        lifecycle = lifecycle.health_flag(flag);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(lifecycle.serve(router, listener, stopped));
    let mut watch = registry.watch("Svc", None).await.unwrap();
    timeout(LIMIT, async {
        while watch.next().await.unwrap().unwrap().is_empty() {}
    })
    .await
    .unwrap();
    Running {
        registry,
        address,
        stop,
        task,
    }
}

async fn health_client(address: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn check(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    let req = HealthCheckRequest {
        service: service.into(),
    };
    client.check(req).await.unwrap().into_inner().status
}

#[tokio::test]
async fn reports_a_port_in_use_when_binding() {
    let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = bind(addr).await.unwrap_err();
    assert!(matches!(err, ServeError::Bind { .. }));
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn a_deregistered_server_keeps_answering_for_the_lame_duck_delay() {
    let run = start(None, Duration::from_secs(5)).await;
    let mut client = health_client(&run.address).await;
    run.stop.send(()).unwrap();
    // Gone from the registry at once ...
    timeout(LIMIT, async {
        while !run.registry.discover("Svc", None).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    // ... but still answering (NOT_SERVING) on the open connection, and on
    // a new one, while clients learn of the departure.
    assert_eq!(check(&mut client, "").await, Wire::NotServing as i32);
    let mut fresh = health_client(&run.address).await;
    assert_eq!(check(&mut fresh, "Svc").await, Wire::NotServing as i32);
    assert!(!run.task.is_finished(), "still in its lame-duck delay");
    let stopped = timeout(LIMIT, run.task).await.unwrap().unwrap().unwrap();
    assert!(stopped.drained);
}

#[tokio::test]
async fn registers_serves_and_deregisters_before_not_serving() {
    let run = start(None, Duration::from_secs(5)).await;
    let mut client = health_client(&run.address).await;
    assert_eq!(check(&mut client, "Svc").await, Wire::Serving as i32);

    // A watch call stays in flight across the shutdown and sees the order.
    let req = HealthCheckRequest {
        service: "Svc".into(),
    };
    let mut statuses = client.watch(req).await.unwrap().into_inner();
    assert_eq!(
        statuses.message().await.unwrap().unwrap().status,
        Wire::Serving as i32
    );
    let mut changes = run.registry.watch("Svc", None).await.unwrap();
    assert_eq!(changes.next().await.unwrap().unwrap().len(), 1);

    run.stop.send(()).unwrap();
    let next = timeout(LIMIT, statuses.message()).await.unwrap();
    assert_eq!(next.unwrap().unwrap().status, Wire::NotServing as i32);
    // By the time NOT_SERVING is visible, the entry is gone.
    assert!(run.registry.discover("Svc", None).await.unwrap().is_empty());
    drop(statuses);
    drop(client);

    let report = timeout(LIMIT, run.task).await.unwrap().unwrap().unwrap();
    assert!(report.deregister_error.is_none());
    assert!(report.drained);
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(&run.address).await.is_err());
}

#[tokio::test]
async fn gives_up_draining_after_the_timeout() {
    let run = start(None, Duration::from_millis(200)).await;
    let mut client = health_client(&run.address).await;
    let req = HealthCheckRequest {
        service: "Svc".into(),
    };
    // A watch stream never ends by itself: it cannot drain.
    let mut statuses = client.watch(req).await.unwrap().into_inner();
    statuses.message().await.unwrap();
    run.stop.send(()).unwrap();
    let report = timeout(LIMIT, run.task).await.unwrap().unwrap().unwrap();
    assert!(!report.drained);
}

#[tokio::test]
async fn mirrors_the_health_flag() {
    let flag = HealthFlag::new(true);
    let run = start(Some(flag.clone()), Duration::from_secs(5)).await;
    let mut client = health_client(&run.address).await;
    assert_eq!(check(&mut client, "Svc").await, Wire::Serving as i32);
    assert_eq!(check(&mut client, "").await, Wire::Serving as i32);

    flag.set(false);
    timeout(LIMIT, async {
        while check(&mut client, "Svc").await != Wire::NotServing as i32 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    flag.set(true);
    timeout(LIMIT, async {
        while check(&mut client, "Svc").await != Wire::Serving as i32 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    drop(client);
    run.stop.send(()).unwrap();
    assert!(timeout(LIMIT, run.task).await.unwrap().unwrap().is_ok());
}

/// A registry that is down.
struct Refusing;
#[async_trait::async_trait]
impl Registry for Refusing {
    async fn register(
        &self,
        _: Instance,
        _: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        Err(RegistryError::Unavailable("down".into()))
    }
    async fn deregister(&self, _: &Instance) -> Result<(), RegistryError> {
        Ok(())
    }
    async fn discover(&self, _: &str, _: Option<&str>) -> Result<Vec<Instance>, RegistryError> {
        Ok(vec![])
    }
    async fn watch(
        &self,
        _: &str,
        _: Option<&str>,
    ) -> Result<crate::registry::WatchStream, RegistryError> {
        Err(RegistryError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn fails_without_serving_when_registration_fails() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let instance = Instance::new("s1", "Svc", address.to_string()).unwrap();
    let router =
        tonic::transport::Server::builder().add_service(tonic_health::server::health_reporter().1);
    let result = Lifecycle::new(Arc::new(Refusing), instance)
        .serve(router, listener, std::future::pending::<()>())
        .await;
    let err = result.unwrap_err();
    assert!(matches!(err, ServeError::Register { .. }), "{err}");
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
}

#[tokio::test]
async fn serves_while_the_registry_is_down_when_registering_in_the_background() {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let instance = Instance::new("s1", "Svc", address.clone()).unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Lifecycle::new(Arc::new(Refusing), instance)
            .health(reporter, ["Svc"])
            .register_in_background(true)
            .drain_timeout(Duration::from_secs(1))
            .serve(router, listener, stopped),
    );
    let mut client = timeout(LIMIT, async {
        loop {
            if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{address}"))
                .unwrap()
                .connect()
                .await
            {
                return HealthClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(check(&mut client, "Svc").await, Wire::Serving as i32);
    drop(client);
    stop.send(()).unwrap();
    let stopped = timeout(LIMIT, task).await.unwrap().unwrap().unwrap();
    assert!(stopped.deregister_error.is_none());
}
