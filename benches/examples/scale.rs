//! The client at 1,000 / 10,000 / 100,000 instances: build time, resident
//! memory per idle instance, and the CPU time to apply one added and one
//! removed instance, for the default policy (least request) and ring hash.
//!
//! ```sh
//! cargo run --release -p fyerrpc-benches --example scale            # all sizes
//! cargo run --release -p fyerrpc-benches --example scale -- 1000 10000
//! ```
//!
//! Everything runs on one current-thread tokio runtime, so the thread's CPU
//! time (`CLOCK_THREAD_CPUTIME_ID`) is all the work of delivering an event
//! and applying it, whatever else runs on the machine. The registry is a
//! channel: each event is a whole instance set (as every backend delivers),
//! copied before the clock starts; receiving, comparing and dropping it is
//! counted. Instances point at addresses where nothing listens; no
//! connection is made (channels are created on first use).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fyerrpc::balance::{Balancer, Candidate, LeastRequest, RingHash};
use fyerrpc::registry::{RegisterOptions, Registration, RegistryError, WatchStream};
use fyerrpc::{Client, Instance, Registry};
use fyerrpc_benches::cpu;
use fyerrpc_benches::table::{thousands, Table};
use tokio::sync::mpsc;
use tokio::sync::Mutex;

const SERVICE: &str = "Scale";

/// A registry whose one watch is fed by the benchmark.
struct Feed(Mutex<Option<mpsc::UnboundedReceiver<Vec<Instance>>>>);

#[async_trait]
impl Registry for Feed {
    async fn register(
        &self,
        _: Instance,
        _: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        Err(RegistryError::Other("read-only".into()))
    }
    async fn deregister(&self, _: &Instance) -> Result<(), RegistryError> {
        Ok(())
    }
    async fn discover(&self, _: &str, _: Option<&str>) -> Result<Vec<Instance>, RegistryError> {
        Ok(Vec::new())
    }
    async fn watch(&self, _: &str, _: Option<&str>) -> Result<WatchStream, RegistryError> {
        let rx = self.0.lock().await.take();
        let stream = futures_util::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let set = rx.recv().await?;
            Some((Ok(set), Some(rx)))
        });
        Ok(Box::pin(stream))
    }
}

fn instance(i: usize) -> Instance {
    let address = format!("10.{}.{}.{}:{}", (i >> 16) & 255, (i >> 8) & 255, i & 255, 9000 + i % 1000);
    Instance::new(format!("scale-{i:06}"), SERVICE, address).expect("valid instance")
}

/// Resident memory of the process, bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).unwrap_or(4096)
}

/// Lets the client's discovery task run until it shows `n` instances.
async fn settle(client: &Client, n: usize) {
    while client.instance_count() != n {
        tokio::task::yield_now().await;
    }
}

struct Row {
    build: Duration,
    bytes_per_instance: f64,
    add: Duration,
    remove: Duration,
    rebuild: Option<Duration>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn measure(n: usize, balancer: Arc<dyn Balancer>, ring: bool) -> Row {
    let base: Vec<Instance> = (0..n).map(instance).collect();
    let samples = if n >= 100_000 { 5 } else { 15 };
    // Every event copied up front: the registry's work is not the client's.
    let mut events: Vec<(Vec<Instance>, Vec<Instance>)> = (0..samples)
        .map(|k| {
            let mut plus = base.clone();
            plus.push(instance(n + k));
            (plus, base.clone())
        })
        .collect();
    let first = base.clone();

    let (tx, rx) = mpsc::unbounded_channel();
    let registry: Arc<dyn Registry> = Arc::new(Feed(Mutex::new(Some(rx))));
    let rss0 = resident();
    let t0 = Instant::now();
    let client = Client::builder(SERVICE, registry)
        .balancer(balancer)
        .build()
        .await
        .expect("client builds");
    let _ = tx.send(first);
    settle(&client, n).await;
    let build = t0.elapsed();
    let rss1 = resident();
    let bytes_per_instance = rss1.saturating_sub(rss0) as f64 / n as f64;

    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for (plus, minus) in events.drain(..) {
        let c0 = cpu::thread();
        let _ = tx.send(plus);
        settle(&client, n + 1).await;
        let c1 = cpu::thread();
        let _ = tx.send(minus);
        settle(&client, n).await;
        let c2 = cpu::thread();
        adds.push(c1 - c0);
        removes.push(c2 - c1);
    }
    let rebuild = ring.then(|| {
        let candidates: Vec<Candidate> = base
            .iter()
            .map(|i| Candidate::new(Arc::new(i.clone())))
            .collect();
        let t = cpu::thread();
        let picker = RingHash::default().build(&candidates);
        let took = cpu::thread() - t;
        drop(picker);
        took
    });
    drop(client);
    Row {
        build,
        bytes_per_instance,
        add: median(adds),
        remove: median(removes),
        rebuild,
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.replace([',', '_'], "").parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        sizes
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut table = Table::new([
        "policy",
        "instances",
        "client build",
        "resident memory per idle instance",
        "CPU per added instance",
        "CPU per removed instance",
        "table rebuild (background)",
    ]);
    for &n in &sizes {
        for (name, balancer, ring) in [
            ("least_request (default)", Arc::new(LeastRequest) as Arc<dyn Balancer>, false),
            ("ring_hash", Arc::new(RingHash::default()) as Arc<dyn Balancer>, true),
        ] {
            let row = runtime.block_on(measure(n, balancer, ring));
            eprintln!("{name} {n}: done");
            table.row([
                name.to_owned(),
                thousands(n as f64),
                format!("{:.0} ms", row.build.as_secs_f64() * 1e3),
                format!("{:.2} KiB", row.bytes_per_instance / 1024.0),
                micros(row.add),
                micros(row.remove),
                row.rebuild
                    .map_or("-".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
            ]);
        }
    }
    println!("{}", table.render());
}
