//! The client at 1,000 / 10,000 / 100,000 instances: build time, resident
//! memory per idle instance, and the CPU time to apply one added and one
//! removed instance, for the default policy (least request) and ring hash.
//!
//! ```sh
//! cargo run --release -p fyerrpc-benches --example scale            # all sizes
//! cargo run --release -p fyerrpc-benches --example scale -- 1000 10000
//! ```
//!
//! Each (size, policy) runs in a process of its own (the example starts
//! itself again), so that memory freed by one measurement does not flatter
//! the next. Everything runs on one current-thread tokio runtime, so the
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) is all the work of taking an
//! event from the registry and applying it, whatever else runs on the
//! machine. The registry is a channel fed by the benchmark, every event made
//! before the clock starts (a whole set just before, a delta up front). A change is measured twice: as a delta event (a
//! backend that learns of changes one by one) and as a whole-set event (as
//! every backend reports by default), where receiving, comparing and dropping
//! the set is counted. Instances point at addresses where nothing listens;
//! no connection is made (channels are created on first use). Resident
//! memory is taken after `malloc_trim`, before and after the first set is
//! applied, divided by the number of instances.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fyerrpc::balance::{Balancer, Candidate, LeastRequest, RingHash};
use fyerrpc::registry::feed::FedRegistry;
use fyerrpc::{Client, Instance, Registry, WatchEvent};
use fyerrpc_benches::cpu;
use fyerrpc_benches::table::{thousands, Table};

const SERVICE: &str = "Scale";

fn instance(i: usize) -> Instance {
    let address = format!(
        "10.{}.{}.{}:{}",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        9000 + i % 1000
    );
    Instance::new(format!("scale-{i:06}"), SERVICE, address).expect("valid instance")
}

/// Resident memory of the process, bytes, after giving free heap memory
/// back to the system.
fn resident() -> usize {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
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
    build_cpu: Duration,
    bytes_per_instance: f64,
    add_delta: Duration,
    remove_delta: Duration,
    add_full: Duration,
    remove_full: Duration,
    rebuild: Option<Duration>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn measure(n: usize, balancer: Arc<dyn Balancer>, ring: bool) -> Row {
    let base: Vec<Instance> = (0..n).map(instance).collect();
    let full_samples = if n >= 100_000 { 5 } else { 15 };
    let mut delta_events: Vec<(WatchEvent, WatchEvent)> = (0..50)
        .map(|k| {
            let extra = instance(n + 1_000 + k);
            let id = extra.id().to_owned();
            (
                WatchEvent::Delta {
                    upserted: vec![extra],
                    removed: Vec::new(),
                },
                WatchEvent::Delta {
                    upserted: Vec::new(),
                    removed: vec![id],
                },
            )
        })
        .collect();
    let first = base.clone();

    let (registry, tx) = FedRegistry::new();
    let registry: Arc<dyn Registry> = Arc::new(registry);
    let rss0 = resident();
    let t0 = Instant::now();
    let c0 = cpu::thread();
    let client = Client::builder(SERVICE, registry)
        .balancer(balancer)
        .build()
        .await
        .expect("client builds");
    let _ = tx.send(WatchEvent::Full(first));
    settle(&client, n).await;
    let build = t0.elapsed();
    let build_cpu = cpu::thread() - c0;
    let rss1 = resident();
    let bytes_per_instance = rss1.saturating_sub(rss0) as f64 / n as f64;

    let timed = |event: WatchEvent, want: usize| {
        let tx = tx.clone();
        let client = client.clone();
        async move {
            let c0 = cpu::thread();
            let _ = tx.send(event);
            settle(&client, want).await;
            cpu::thread() - c0
        }
    };
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for (plus, minus) in delta_events.drain(..) {
        adds.push(timed(plus, n + 1).await);
        removes.push(timed(minus, n).await);
    }
    let (add_delta, remove_delta) = (median(adds), median(removes));
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for k in 0..full_samples {
        // Made just before it is sent, as a backend decodes a set just
        // before it reports it, but not timed: the registry's work is not
        // the client's.
        let mut plus = base.clone();
        plus.push(instance(n + k));
        adds.push(timed(WatchEvent::Full(plus), n + 1).await);
        let minus = base.clone();
        removes.push(timed(WatchEvent::Full(minus), n).await);
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
        build_cpu,
        bytes_per_instance,
        add_delta,
        remove_delta,
        add_full: median(adds),
        remove_full: median(removes),
        rebuild,
    }
}

fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

const POLICIES: [&str; 2] = ["least_request", "ring_hash"];

/// Measures one (size, policy) in this process and prints one line.
fn one(n: usize, policy: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (balancer, ring): (Arc<dyn Balancer>, bool) = if policy == "ring_hash" {
        (Arc::new(RingHash::default()), true)
    } else {
        (Arc::new(LeastRequest), false)
    };
    let row = runtime.block_on(measure(n, balancer, ring));
    let nanos = |d: Duration| d.as_nanos().to_string();
    println!(
        "RESULT {} {} {} {} {} {} {} {}",
        nanos(row.build),
        row.bytes_per_instance,
        nanos(row.add_delta),
        nanos(row.remove_delta),
        nanos(row.add_full),
        nanos(row.remove_full),
        row.rebuild.map_or("-".to_owned(), nanos),
        nanos(row.build_cpu),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
        one(n, args.get(2).map_or("least_request", String::as_str));
        return;
    }
    let sizes: Vec<usize> = args
        .iter()
        .filter_map(|a| a.replace([',', '_'], "").parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        sizes
    };
    let exe = std::env::current_exe().expect("own path");
    let mut table = Table::new([
        "policy",
        "instances",
        "client build (wall)",
        "client build (CPU)",
        "memory per idle instance",
        "add (delta event)",
        "remove (delta event)",
        "add (whole-set event)",
        "remove (whole-set event)",
        "table rebuild (background)",
    ]);
    for &n in &sizes {
        for policy in POLICIES {
            let out = Command::new(&exe)
                .args(["--one", &n.to_string(), policy])
                .output()
                .expect("runs itself");
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
                eprintln!(
                    "{policy} {n}: no result: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            };
            let f: Vec<&str> = line.split(' ').collect();
            let dur = |i: usize| {
                f.get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_nanos)
            };
            let cell = |i: usize| dur(i).map_or("-".to_owned(), micros);
            let kib = f
                .get(1)
                .and_then(|v| v.parse::<f64>().ok())
                .map_or("-".to_owned(), |b| format!("{:.2} KiB", b / 1024.0));
            let name = if policy == "least_request" {
                "least_request (default)"
            } else {
                policy
            };
            eprintln!("{name} {n}: done");
            table.row([
                name.to_owned(),
                thousands(n as f64),
                dur(0).map_or("-".to_owned(), |d| {
                    format!("{:.0} ms", d.as_secs_f64() * 1e3)
                }),
                dur(7).map_or("-".to_owned(), |d| {
                    format!("{:.0} ms", d.as_secs_f64() * 1e3)
                }),
                kib,
                cell(2),
                cell(3),
                cell(4),
                cell(5),
                dur(6).map_or("-".to_owned(), |d| {
                    format!("{:.0} ms", d.as_secs_f64() * 1e3)
                }),
            ]);
        }
    }
    println!("{}", table.render());
}
