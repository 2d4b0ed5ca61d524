//! End to end on loopback: unary `SayHello` at concurrency 1, 16 and 64
//! through a plain tonic channel to one server, plain tonic channels to each
//! of three servers taken in turn, tonic's balanced channel over the three,
//! and the fyerrpc client over the same three servers (p2c, breaker,
//! failover); then, over a second cluster of three servers serving TLS, a
//! plain tonic channel over TLS to one server, tonic's balanced channel over
//! TLS to the three and the fyerrpc client over TLS. Servers and clients
//! share one tokio runtime with a worker per core.
//!
//! Each iteration is a batch of [`BATCH`] calls spread over the concurrent
//! tasks; throughput is calls per second (wall time). The process CPU time
//! of each batch is recorded too: CPU per call (client and servers
//! together) is what decides throughput on a saturated machine, and unlike
//! wall time it is barely affected by other work on the machine. At the
//! end, a table of mean throughput, CPU per call and ratios (from this run)
//! is printed.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use fyerrpc_benches::calls::{Caller, Target};
use fyerrpc_benches::cpu;
use fyerrpc_benches::server::Cluster;
use fyerrpc_benches::table::{ratio, thousands, Table};
use fyerrpc_benches::tally::{RunMode, Tally};

/// Calls per criterion iteration (a multiple of every concurrency level).
const BATCH: u64 = 256;
const CONCURRENCY: [usize; 3] = [1, 16, 64];
const SERVERS: usize = 3;

type Key = (usize, Target);

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mode = RunMode::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cluster = rt.block_on(async { Cluster::start(SERVERS) })?;
    let tls_cluster = rt.block_on(async { Cluster::start_tls(SERVERS) })?;
    let mut callers = Vec::new();
    for target in Target::ALL.into_iter().chain(Target::TLS) {
        let c = if target.is_tls() {
            &tls_cluster
        } else {
            &cluster
        };
        callers.push((target, rt.block_on(Caller::connect(target, c))?));
    }

    let wall: Tally<Key> = Tally::default();
    let cpu: Tally<Key> = Tally::default();
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let mut group = criterion.benchmark_group("say_hello");
    group.throughput(Throughput::Elements(BATCH));
    for conc in CONCURRENCY {
        // Targets side by side at each level, so that their ratios compare
        // runs close in time.
        for (target, caller) in &callers {
            let key = (conc, *target);
            group.bench_with_input(BenchmarkId::new(target.name(), conc), &conc, |b, &c| {
                b.iter_custom(|iters| {
                    let calls = iters * BATCH;
                    let cpu0 = cpu::process();
                    let elapsed = rt
                        .block_on(caller.run(calls, c))
                        .unwrap_or_else(|status| panic!("{target} failed a call: {status}"));
                    cpu.record(&key, calls, cpu::process().saturating_sub(cpu0));
                    wall.record(&key, calls, elapsed);
                    elapsed
                });
            });
        }
    }
    group.finish();
    criterion.final_summary();

    if mode.measure {
        println!("\n{}", summary(&wall, &cpu));
    }
    drop(callers);
    drop(cluster);
    drop(tls_cluster);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn summary(wall: &Tally<Key>, cpu: &Tally<Key>) -> String {
    let mut t = Table::new([
        "concurrency",
        "tonic (calls/s)",
        "tonic each (calls/s)",
        "tonic balanced (calls/s)",
        "fyerrpc (calls/s)",
        "fyerrpc / tonic",
        "fyerrpc / tonic each",
        "fyerrpc / tonic balanced",
        "CPU µs/call: tonic",
        "tonic each",
        "tonic balanced",
        "fyerrpc",
    ]);
    for conc in CONCURRENCY {
        let rate = |target| wall.per_second(&(conc, target));
        let cell = |target| rate(target).map_or("-".to_owned(), thousands);
        let cpu_us = |target| {
            cpu.nanos_per(&(conc, target))
                .map_or("-".to_owned(), |ns| format!("{:.1}", ns / 1e3))
        };
        let f = rate(Target::Fyerrpc);
        t.row([
            conc.to_string(),
            cell(Target::Tonic),
            cell(Target::TonicEach),
            cell(Target::TonicBalanced),
            cell(Target::Fyerrpc),
            ratio(f, rate(Target::Tonic)),
            ratio(f, rate(Target::TonicEach)),
            ratio(f, rate(Target::TonicBalanced)),
            cpu_us(Target::Tonic),
            cpu_us(Target::TonicEach),
            cpu_us(Target::TonicBalanced),
            cpu_us(Target::Fyerrpc),
        ]);
    }
    let mut tls = Table::new([
        "concurrency",
        "tonic TLS (calls/s)",
        "tonic TLS balanced (calls/s)",
        "fyerrpc TLS (calls/s)",
        "fyerrpc TLS / tonic TLS",
        "fyerrpc TLS / tonic TLS balanced",
        "CPU µs/call: tonic TLS",
        "tonic TLS balanced",
        "fyerrpc TLS",
    ]);
    for conc in CONCURRENCY {
        let rate = |target| wall.per_second(&(conc, target));
        let cell = |target| rate(target).map_or("-".to_owned(), thousands);
        let cpu_us = |target| {
            cpu.nanos_per(&(conc, target))
                .map_or("-".to_owned(), |ns| format!("{:.1}", ns / 1e3))
        };
        let f = rate(Target::FyerrpcTls);
        tls.row([
            conc.to_string(),
            cell(Target::TonicTls),
            cell(Target::TonicTlsBalanced),
            cell(Target::FyerrpcTls),
            ratio(f, rate(Target::TonicTls)),
            ratio(f, rate(Target::TonicTlsBalanced)),
            cpu_us(Target::TonicTls),
            cpu_us(Target::TonicTlsBalanced),
            cpu_us(Target::FyerrpcTls),
        ]);
    }
    format!(
        "End to end, unary SayHello on loopback ({SERVERS} servers; mean over this run; \
         CPU is the whole process, clients and servers):\n\n{}\n\nOver TLS (same run):\n\n{}",
        t.render(),
        tls.render()
    )
}
