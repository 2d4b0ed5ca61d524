//! Quality of every balancer policy, printed as a table:
//!
//! - spread of picks over 10 equal instances (most over fewest, and the
//!   coefficient of variation), in a closed loop of 16 calls in flight so
//!   that load-aware policies see load;
//! - for policies that honour weights, the worst relative error of an
//!   instance's share against its weight (weights 1, 2, 3, 4, 5);
//! - for consistent hashing, the share of keys that move when an 11th
//!   instance joins 10 (ideal: 1/11 = 9.1%).
//!
//! Request keys are distinct (`user-0`, `user-1` ...), one per call. Under
//! `cargo test` the run is ten times shorter.

use fyerrpc_benches::picking::{candidates, keys, policies, weighted_candidates};
use fyerrpc_benches::quality::{
    moved_on_join, simulate, spread, weight_error, HASHING, IGNORES_WEIGHTS,
};
use fyerrpc_benches::table::Table;
use fyerrpc_benches::tally::RunMode;

const INSTANCES: usize = 10;
const IN_FLIGHT: usize = 16;
const WEIGHTS: [u32; 5] = [1, 2, 3, 4, 5];

fn main() {
    let picks = if RunMode::from_args().measure {
        100_000
    } else {
        10_000
    };
    let keys = keys(picks);
    let mut t = Table::new([
        "policy",
        "max/min (10 equal)",
        "CV (10 equal)",
        "weight error (1:2:3:4:5)",
        "keys moved on join (10 -> 11)",
    ]);
    for (name, balancer) in policies() {
        let equal = candidates(INSTANCES);
        let counts = simulate(&*balancer.build(&equal), &equal, picks, IN_FLIGHT, &keys);
        let s = spread(&counts);
        let weighted = weighted_candidates(&WEIGHTS);
        let werr = if IGNORES_WEIGHTS.contains(&name) {
            "ignores weights".to_owned()
        } else {
            let counts = simulate(
                &*balancer.build(&weighted),
                &weighted,
                picks,
                IN_FLIGHT,
                &keys,
            );
            format!("{:.1}%", 100.0 * weight_error(&counts, &WEIGHTS))
        };
        let moved = if HASHING.contains(&name) {
            let joined = candidates(INSTANCES + 1);
            format!("{:.1}%", 100.0 * moved_on_join(&*balancer, &joined, &keys))
        } else {
            "-".to_owned()
        };
        t.row([
            name.to_owned(),
            format!("{:.3}", s.max_over_min),
            format!("{:.4}", s.cv),
            werr,
            moved,
        ]);
    }
    println!(
        "Balancer quality ({picks} picks, {IN_FLIGHT} in flight, equal latency):\n\n{}",
        t.render()
    );
}
