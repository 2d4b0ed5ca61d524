//! `greet-client`: runs the greet cluster scenarios. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use fyerrpc_demo::client::{self, ClientArgs, Console, Output};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ClientArgs::parse();
    fyerrpc_demo::logging::init("warn");
    let output = args.output;
    let console = Console::new(output == Output::Json);
    match client::run(args, console).await {
        Ok(report) => {
            match output {
                Output::Json => println!("{}", report.to_json()),
                Output::Table => print!("{}", report.to_table()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greet-client: error: {}", fyerrpc_demo::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
