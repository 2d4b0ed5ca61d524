//! Pick cost of every balancer policy at 3, 100 and 10,000 instances: one
//! thread picking, and two threads picking at once from one shared picker.
//!
//! Every pick carries a request hash key (cycling through 4,096 keys), so
//! the consistent-hashing policies walk their ring or table as in real use;
//! every instance is eligible and loads are idle.
//!
//! Times are thread CPU time, not wall time, so that other work on a busy
//! machine does not inflate them: contention on shared cache lines costs CPU
//! time and shows; no picker takes a lock that could put a thread to sleep.
//! Two-thread times are per pick per thread (the larger CPU time of two
//! threads doing `iters` picks each at once), so perfect scaling shows the
//! same time as one thread and twice the throughput. At the end, a table of
//! mean times (this run) is printed.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use fyerrpc::balance::Picker;
use fyerrpc_benches::picking::{candidates, keys, pick_loop, pick_two_threads, policies, SIZES};
use fyerrpc_benches::table::Table;
use fyerrpc_benches::tally::{RunMode, Tally};

const KEYS: usize = 4096;

type Key = (&'static str, usize, u8);

fn main() {
    let mode = RunMode::from_args();
    let keys = keys(KEYS);
    let tally: Tally<Key> = Tally::default();
    let mut criterion = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let policies = policies();
    for (name, balancer) in &policies {
        let mut group = criterion.benchmark_group(format!("pick/{name}"));
        for n in SIZES {
            let picker: Arc<dyn Picker> = balancer.build(&candidates(n));
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new("1_thread", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let t = pick_loop(&*picker, &keys, iters);
                    tally.record(&(*name, n, 1), iters, t);
                    t
                });
            });
            group.throughput(Throughput::Elements(2));
            group.bench_with_input(BenchmarkId::new("2_threads", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let t = pick_two_threads(&picker, &keys, iters);
                    tally.record(&(*name, n, 2), iters, t);
                    t
                });
            });
        }
        group.finish();
    }
    criterion.final_summary();

    if mode.measure {
        let names: Vec<&'static str> = policies.iter().map(|(name, _)| *name).collect();
        println!("\n{}", summary(&tally, &names));
    }
}

fn summary(tally: &Tally<Key>, names: &[&'static str]) -> String {
    let mut header = vec!["policy".to_owned()];
    for threads in [1, 2] {
        for n in SIZES {
            header.push(format!("{n} inst, {threads} thr (ns)"));
        }
    }
    header.push("2-thread speed-up at 10,000".to_owned());
    let mut t = Table::new(header);
    for &name in names {
        let ns = |n: usize, threads: u8| tally.nanos_per(&(name, n, threads));
        if SIZES
            .iter()
            .all(|&n| ns(n, 1).is_none() && ns(n, 2).is_none())
        {
            continue; // filtered out of this run
        }
        let mut row = vec![name.to_owned()];
        for threads in [1, 2] {
            for n in SIZES {
                row.push(ns(n, threads).map_or("-".to_owned(), |v| format!("{v:.1}")));
            }
        }
        let big = SIZES[SIZES.len() - 1];
        row.push(match (ns(big, 1), ns(big, 2)) {
            (Some(one), Some(two)) if two > 0.0 => format!("{:.2}x", 2.0 * one / two),
            _ => "-".to_owned(),
        });
        t.row(row);
    }
    format!(
        "Pick cost, mean CPU ns per pick (per thread with 2 threads; this run):\n\n{}",
        t.render()
    )
}
