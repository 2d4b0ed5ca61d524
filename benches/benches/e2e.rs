//! End to end on loopback: unary `SayHello` at concurrency 1, 16 and 64
//! through a plain tonic channel to one server, tonic's balanced channel
//! over three servers, and the fyerrpc client over the same three servers
//! (p2c, breaker, failover). Servers and clients share one tokio runtime
//! with a worker per core.
//!
//! Each iteration is a batch of [`BATCH`] calls spread over the concurrent
//! tasks; throughput is calls per second. At the end, a table of mean
//! throughput and ratios (from this run) is printed.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use fyerrpc_benches::calls::{Caller, Target};
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
    let mut callers = Vec::new();
    for target in Target::ALL {
        callers.push((target, rt.block_on(Caller::connect(target, &cluster))?));
    }

    let tally: Tally<Key> = Tally::default();
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
                    let elapsed = rt
                        .block_on(caller.run(calls, c))
                        .unwrap_or_else(|status| panic!("{target} failed a call: {status}"));
                    tally.record(&key, calls, elapsed);
                    elapsed
                });
            });
        }
    }
    group.finish();
    criterion.final_summary();

    if mode.measure {
        println!("\n{}", summary(&tally));
    }
    drop(callers);
    drop(cluster);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn summary(tally: &Tally<Key>) -> String {
    let mut t = Table::new([
        "concurrency",
        "tonic (calls/s)",
        "tonic balanced (calls/s)",
        "fyerrpc (calls/s)",
        "fyerrpc / tonic",
        "fyerrpc / tonic balanced",
    ]);
    for conc in CONCURRENCY {
        let rate = |target| tally.per_second(&(conc, target));
        let cell = |target| rate(target).map_or("-".to_owned(), thousands);
        let f = rate(Target::Fyerrpc);
        t.row([
            conc.to_string(),
            cell(Target::Tonic),
            cell(Target::TonicBalanced),
            cell(Target::Fyerrpc),
            ratio(f, rate(Target::Tonic)),
            ratio(f, rate(Target::TonicBalanced)),
        ]);
    }
    format!(
        "End to end, unary SayHello on loopback ({SERVERS} servers; mean over this run):\n\n{}",
        t.render()
    )
}
