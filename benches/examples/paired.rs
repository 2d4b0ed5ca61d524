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
//!
//! Each target's line gives its median calls per second, CPU per call
//! (the whole process: client and servers) and, where the kernel counts
//! them, write system calls per call (both sides of the connections, and
//! the runtime's wake-ups of parked workers: see `fyerrpc_benches::writes`).
//!
//! A target named twice gets two clients, measured as two targets: an A/A
//! check of the harness (`paired 2000 21 16 64 fyerrpc fyerrpc`). The ratio
//! column compares each target with the first fyerrpc target, or with the
//! first target when there is none.

use std::time::Duration;

use fyerrpc_benches::calls::{Caller, Target};
use fyerrpc_benches::server::Cluster;
use fyerrpc_benches::{cpu, writes};

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
    // Targets in the order named (which is the order their clients are
    // built in), each as often as it is named: a target named twice is
    // measured twice, an A/A check of the harness itself (two identical
    // clients should come out level).
    let targets: Vec<Target> = rest
        .iter()
        .filter_map(|a| all.iter().find(|t| t.name() == a).copied())
        .collect();
    for a in rest
        .iter()
        .filter(|a| a.parse::<usize>().is_err() && *a != "tls")
    {
        if all.iter().any(|t| t.name() == a) {
            continue;
        }
        let other: &[Target] = if tls { &Target::ALL } else { &Target::TLS };
        return Err(if other.iter().any(|t| t.name() == a) {
            let kind = if tls { "plaintext" } else { "TLS" };
            format!("{a} is a {kind} target: add or drop `tls`")
        } else {
            format!("{a:?} is neither a concurrency level, `tls` nor a target")
        }
        .into());
    }
    let targets = if targets.is_empty() {
        all.to_vec()
    } else {
        targets
    };
    // `WORKERS=N`: the runtime's worker threads (one per core by default).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = fyerrpc_benches::env_count("WORKERS", "threads")? {
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
        let mut writes_per_call: Vec<Vec<f64>> = vec![Vec::new(); callers.len()];
        for round in 0..=rounds {
            // Each round starts with the next target, so that no target
            // always follows the same one (whatever a batch leaves behind,
            // say its connections' last frames, falls on every target alike).
            for k in 0..callers.len() {
                let i = (round + k) % callers.len();
                let caller = &callers[i].1;
                let (c0, w0) = (cpu::process(), writes::count());
                let elapsed: Duration = rt.block_on(caller.run(calls, conc))?;
                let (c1, w1) = (cpu::process(), writes::count());
                if round > 0 {
                    wall[i].push(calls as f64 / elapsed.as_secs_f64());
                    cpu_us[i].push((c1 - c0).as_secs_f64() * 1e6 / calls as f64);
                    if let (Some(w0), Some(w1)) = (w0, w1) {
                        writes_per_call[i].push(w1.saturating_sub(w0) as f64 / calls as f64);
                    }
                }
            }
        }
        // The reference: the first fyerrpc target, or else the first target.
        let f = targets
            .iter()
            .position(|t| matches!(t, Target::Fyerrpc | Target::FyerrpcTls))
            .or((!targets.is_empty()).then_some(0));
        let reference = f.map_or("", |f| targets[f].name());
        println!("concurrency {conc}, {rounds} rounds of {calls} calls:");
        for (i, t) in targets.iter().enumerate() {
            // A target named twice: its second client is "name#2".
            let copy = targets[..i].iter().filter(|o| *o == t).count();
            let label = match copy {
                0 => t.name().to_owned(),
                k => format!("{}#{}", t.name(), k + 1),
            };
            let thr = median(&mut wall[i].clone());
            let cpu = median(&mut cpu_us[i].clone());
            let w = if writes_per_call[i].is_empty() {
                String::new()
            } else {
                format!("  writes {:4.2}", median(&mut writes_per_call[i].clone()))
            };
            let ratio = f.map(|f| {
                let mut r: Vec<f64> = wall[f].iter().zip(&wall[i]).map(|(a, b)| a / b).collect();
                r.sort_by(f64::total_cmp);
                format!(
                    "{reference}/this {:.3} (q1 {:.3}, q3 {:.3})",
                    r[r.len() / 2],
                    r[r.len() / 4],
                    r[3 * r.len() / 4]
                )
            });
            println!(
                "  {:18} {:9.0} calls/s  cpu {:6.1} µs{w}  {}",
                label,
                thr,
                cpu,
                ratio.unwrap_or_default()
            );
        }
    }
    Ok(())
}
