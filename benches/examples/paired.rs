//! Targets measured in turn, batch by batch, in one process: each round
//! runs one batch of every target back to back, so that the machine's slow
//! phases hit every target alike, and a ratio is taken within each round.
//! The order turns by one target each round.
//!
//! `cargo run --release -p fyerrpc-benches --example paired -- [calls per batch] [rounds] [concurrency...] [target...]`
//!
//! With `tls` among the arguments, the TLS targets run instead, on a TLS
//! cluster. `SERVERS=N` in the environment runs N greeter servers instead of three
//! (with one, every target calls the same server over one connection), and
//! `WORKERS=N` gives the runtime N worker threads instead of one per core.

use std::time::Duration;

use fyerrpc_benches::calls::{Caller, Target};
use fyerrpc_benches::cpu;
use fyerrpc_benches::server::Cluster;

/// The middle value (the upper one of an even count; 0 for none).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(15), |a| a.parse())?.max(1);
    let rest: Vec<String> = args.collect();
    let mut levels: Vec<usize> = rest.iter().filter_map(|a| a.parse().ok()).collect();
    if levels.is_empty() {
        levels = vec![1, 16, 64];
    }
    // `tls` measures the TLS targets (on a TLS cluster) instead.
    let tls = rest.iter().any(|a| a == "tls");
    let all: &[Target] = if tls { &Target::TLS } else { &Target::ALL };
    let targets: Vec<Target> = all
        .iter()
        .copied()
        .filter(|t| {
            rest.iter()
                .all(|a| a.parse::<usize>().is_ok() || a == "tls")
                || rest.iter().any(|o| o == t.name())
        })
        .collect();
    // `WORKERS=N`: the runtime's worker threads (one per core by default).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Ok(v) = std::env::var("WORKERS") {
        let n: usize = v
            .parse()
            .map_err(|e| format!("WORKERS={v:?} is not a number of threads: {e}"))?;
        builder.worker_threads(n.max(1));
    }
    let rt = builder.enable_all().build()?;
    let cluster = rt.block_on(async { Cluster::start_from_env(tls) })?;
    let mut callers = Vec::new();
    for &t in &targets {
        callers.push((t, rt.block_on(Caller::connect(t, &cluster))?));
    }
    for conc in levels {
        let mut wall: Vec<Vec<f64>> = vec![Vec::new(); callers.len()];
        let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); callers.len()];
        for round in 0..=rounds {
            // Each round starts with the next target, so that no target
            // always follows the same one (whatever a batch leaves behind,
            // say its connections' last frames, falls on every target alike).
            for k in 0..callers.len() {
                let i = (round + k) % callers.len();
                let caller = &callers[i].1;
                let c0 = cpu::process();
                let elapsed: Duration = rt.block_on(caller.run(calls, conc))?;
                let c1 = cpu::process();
                if round > 0 {
                    wall[i].push(calls as f64 / elapsed.as_secs_f64());
                    cpu_us[i].push((c1 - c0).as_secs_f64() * 1e6 / calls as f64);
                }
            }
        }
        let f = targets
            .iter()
            .position(|t| matches!(t, Target::Fyerrpc | Target::FyerrpcTls));
        println!("concurrency {conc}, {rounds} rounds of {calls} calls:");
        for (i, t) in targets.iter().enumerate() {
            let thr = median(&mut wall[i].clone());
            let cpu = median(&mut cpu_us[i].clone());
            let ratio = f.map(|f| {
                let mut r: Vec<f64> = wall[f].iter().zip(&wall[i]).map(|(a, b)| a / b).collect();
                r.sort_by(f64::total_cmp);
                format!(
                    "fyerrpc/this {:.3} (q1 {:.3}, q3 {:.3})",
                    r[r.len() / 2],
                    r[r.len() / 4],
                    r[3 * r.len() / 4]
                )
            });
            println!(
                "  {:18} {:9.0} calls/s  cpu {:6.1} µs  {}",
                t.name(),
                thr,
                cpu,
                ratio.unwrap_or_default()
            );
        }
    }
    Ok(())
}
