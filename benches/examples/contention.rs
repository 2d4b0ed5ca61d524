//! Contention: 1, 2 and 16 tasks calling through ONE fyerrpc client on a
//! multi-thread runtime (a worker per core), so that the client's shared
//! state (retry budget, breakers, method table, balancer) is hit from every
//! worker at once.
//!
//! `cargo run --release -p fyerrpc-benches --example contention [calls] [rounds]`
//!
//! Two measurements, each the median of `rounds` rounds:
//!
//! * end to end: `SayHello` through the client to three greet servers in
//!   the same process; process CPU time per call (client and servers);
//! * shared bookkeeping only: what every call does to the client's shared
//!   state, without I/O (a retry-budget deposit, a breaker permit and a
//!   successful outcome on a closed consecutive-failure breaker), from the
//!   same numbers of tasks; process CPU per call. A lock or a contended
//!   write here would make 16 tasks cost more per call than one.

use std::sync::Arc;
use std::time::Duration;

use fyerrpc::breaker::{Breaker, ConsecutiveFailures, Permit};
use fyerrpc::failover::RetryBudget;
use fyerrpc_benches::calls::{Caller, Target};
use fyerrpc_benches::cpu;
use fyerrpc_benches::server::Cluster;
use fyerrpc_benches::table::Table;
use tokio::task::JoinSet;

const TASKS: [usize; 3] = [1, 2, 16];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2}")
}

/// What one call does to the client's shared state, `n` times.
async fn bookkeeping(budget: Arc<RetryBudget>, breakers: Arc<Vec<Box<dyn Breaker>>>, n: u64) {
    for i in 0..n {
        budget.deposit();
        let b = &breakers[(i % breakers.len() as u64) as usize];
        if let (Some(permit), _) = b.try_acquire() {
            assert_eq!(permit, Permit::Closed);
            b.record(permit, true);
        }
        if i % 64 == 63 {
            // Let the tasks interleave on the workers, as calls do.
            tokio::task::yield_now().await;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cluster = rt.block_on(async { Cluster::start(3) })?;
    let caller = rt.block_on(Caller::connect(Target::Fyerrpc, &cluster))?;

    let mut e2e = Table::new([
        "tasks",
        "CPU µs per call (median)",
        "spread",
        "wall µs per call (median)",
        "CPU per call / 1 task",
    ]);
    let mut base = None;
    for tasks in TASKS {
        rt.block_on(caller.run(calls / 10, tasks))?;
        let mut cpu_us = Vec::new();
        let mut wall_us = Vec::new();
        for _ in 0..rounds {
            let c0 = cpu::process();
            let wall = rt.block_on(caller.run(calls, tasks))?;
            let c = cpu::process().saturating_sub(c0);
            cpu_us.push(c.as_secs_f64() * 1e6 / calls as f64);
            wall_us.push(wall.as_secs_f64() * 1e6 / calls as f64);
        }
        let m = median(cpu_us.clone());
        let b = *base.get_or_insert(m);
        e2e.row([
            tasks.to_string(),
            format!("{m:.2}"),
            spread(&cpu_us),
            format!("{:.2}", median(wall_us)),
            format!("{:.2}", m / b),
        ]);
    }

    let ops = calls * 50;
    let budget = Arc::new(RetryBudget::new(0.2, 10, Duration::from_secs(10)));
    let policy = ConsecutiveFailures::new(5);
    let breakers: Arc<Vec<Box<dyn Breaker>>> = Arc::new(
        (0..3)
            .map(|_| fyerrpc::breaker::BreakerPolicy::build(&policy))
            .collect(),
    );
    let mut book = Table::new([
        "tasks",
        "CPU ns per call (median)",
        "spread",
        "CPU per call / 1 task",
    ]);
    let mut base = None;
    for tasks in TASKS {
        let mut ns = Vec::new();
        for _ in 0..rounds {
            let c0 = cpu::process();
            rt.block_on(async {
                let mut set = JoinSet::new();
                for k in 0..tasks as u64 {
                    let n = ops / tasks as u64 + u64::from(k < ops % tasks as u64);
                    set.spawn(bookkeeping(Arc::clone(&budget), Arc::clone(&breakers), n));
                }
                while set.join_next().await.is_some() {}
            });
            let c = cpu::process().saturating_sub(c0);
            ns.push(c.as_secs_f64() * 1e9 / ops as f64);
        }
        let m = median(ns.clone());
        let b = *base.get_or_insert(m);
        book.row([
            tasks.to_string(),
            format!("{m:.1}"),
            spread(&ns),
            format!("{:.2}", m / b),
        ]);
    }
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "One fyerrpc client, multi-thread runtime ({workers} workers), median of {rounds} \
         rounds.\n\nEnd to end, {calls} SayHello calls per round (process CPU: client and \
         three servers):\n\n{}\nShared bookkeeping per call, {ops} calls per round (budget \
         deposit, breaker permit, success recorded):\n\n{}",
        e2e.render(),
        book.render()
    );
    drop(caller);
    drop(cluster);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
