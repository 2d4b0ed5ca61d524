//! # fyerrpc-benches
//!
//! Benchmarks of fyerrpc (run with `cargo bench -p fyerrpc-benches`; see
//! the crate's README for what each measures and the latest results):
//!
//! | bench | measures |
//! |---|---|
//! | `pick` | cost of one pick, every policy, 3 / 100 / 10,000 instances, 1 and 2 threads |
//! | `quality` | spread of picks, error against weights, keys moved by a ring-hash join |
//! | `e2e` | unary `SayHello` on loopback: plain tonic, tonic balanced, fyerrpc |
//!
//! This library holds what the benchmarks share: a greet cluster on
//! loopback ([`server`]), the three ways of calling it ([`calls`]), the
//! balancer fixtures ([`picking`]) and quality measures ([`quality`]), and
//! the summary tables printed at the end of a run ([`tally`], [`table`]),
//! and the process's count of write system calls ([`writes`]).

#![warn(missing_docs)]

pub mod calls;
pub mod cpu;
pub mod picking;
pub mod quality;
pub mod server;
pub mod table;
pub mod tally;
pub mod writes;

/// A count from the environment variable `name`, `None` when it is unset.
/// A value that is not a number is an error naming the variable and `what`
/// it counts (`SERVERS=x` and `WORKERS=x` of the examples).
///
/// ```
/// assert_eq!(fyerrpc_benches::env_count("FYERRPC_BENCHES_UNSET_COUNT", "things"), Ok(None));
/// ```
pub fn env_count(name: &str, what: &str) -> Result<Option<usize>, String> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}={v:?} is not a number of {what}: {e}")),
        Err(_) => Ok(None),
    }
}
