//! Per-call cost of each transport on one thread: time and heap allocations
//! per unary `SayHello`, client and server together (everything runs on one
//! current-thread runtime, so the differences are the clients' own costs).
//!
//! `cargo run --release -p fyerrpc-benches --example overhead [calls] [concurrency] [target...]`
//!
//! With `tls` among the targets, the TLS targets run instead, on a TLS
//! cluster; `SERVERS=N` in the environment runs N greeter servers instead of
//! three (with one, every target carries its calls on one connection).
//!
//! With `--multi-thread`, the runtime has a worker per core instead (the
//! CPU column is then the whole process's). With `--prometheus`, a Prometheus recorder is installed
//! first (as a service exporting its client metrics would), so the cost of
//! the client's per-call metrics is included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use fyerrpc_benches::calls::{Caller, Target};
use fyerrpc_benches::cpu;
use fyerrpc_benches::server::Cluster;
use fyerrpc_benches::table::Table;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Removes `flag` from `args`; whether it was there.
fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let at = args.iter().position(|a| a == flag);
    at.map(|i| args.remove(i)).is_some()
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let mut only: Vec<String> = args.collect();
    if take_flag(&mut only, "--prometheus") {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::set_global_recorder(recorder)?;
    }
    let multi = take_flag(&mut only, "--multi-thread");
    let tls = take_flag(&mut only, "tls");
    let all: &[Target] = if tls { &Target::TLS } else { &Target::ALL };
    let targets: Vec<Target> = all
        .iter()
        .copied()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t.name()))
        .collect();
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()?;
    let cpu_now = if multi { cpu::process } else { cpu::thread };
    let cluster = rt.block_on(async { Cluster::start_from_env(tls) })?;
    let mut t = Table::new([
        "target",
        "µs per call (wall)",
        "µs per call (CPU)",
        "allocations per call",
        "bytes allocated per call",
    ]);
    for round in 0..2 {
        for &target in &targets {
            let caller = rt.block_on(Caller::connect(target, &cluster))?;
            rt.block_on(caller.run(calls / 10, concurrency))?;
            let (a0, b0) = (
                ALLOCS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
            let cpu0 = cpu_now();
            let elapsed = rt.block_on(caller.run(calls, concurrency))?;
            let cpu1 = cpu_now();
            let (a1, b1) = (
                ALLOCS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
            if round == 1 {
                let per = |v: u64| format!("{:.1}", v as f64 / calls as f64);
                t.row([
                    target.name().to_owned(),
                    format!("{:.2}", elapsed.as_secs_f64() * 1e6 / calls as f64),
                    format!("{:.2}", (cpu1 - cpu0).as_secs_f64() * 1e6 / calls as f64),
                    per(a1 - a0),
                    per(b1 - b0),
                ]);
            }
        }
    }
    println!(
        "{calls} calls at concurrency {concurrency}, one thread:\n\n{}",
        t.render()
    );
    Ok(())
}
