//! Checks a `greet-client --output json` report: fails (exit status 1) when a
//! phase in which every call is expected to succeed had failed calls.
//!
//! ```sh
//! scripts/start_cluster.sh --output json > report.json
//! cargo run -p fyerrpc-demo --example check_report -- report.json
//! ```
//!
//! Without a file argument the report is read from standard input.

use std::io::Read;
use std::process::ExitCode;

use fyerrpc_demo::client::report::check_json;

fn main() -> ExitCode {
    let path = std::env::args().nth(1);
    let text = match &path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}")),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map(|_| s)
                .map_err(|e| format!("cannot read standard input: {e}"))
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("check_report: {e}");
            return ExitCode::FAILURE;
        }
    };
    match check_json(&text) {
        Ok(phases) => {
            for p in &phases {
                let note = if p.failures_expected {
                    " (failures expected)"
                } else {
                    ""
                };
                println!("check_report: {p}{note}");
            }
            println!("check_report: no unexpected failed call");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("check_report: {e}");
            ExitCode::FAILURE
        }
    }
}
