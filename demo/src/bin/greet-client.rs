//! `greet-client`: runs the greet cluster scenarios. See `--help`.

use std::process::ExitCode;

use clap::Parser;
use fyerrpc_demo::client::{self, ClientArgs, Console, Output, Scenario};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ClientArgs::parse();
    fyerrpc_demo::logging::init("warn");
    let output = args.output;
    let console = Console::new(output == Output::Json);
    let printed = if args.scenario == Scenario::Compare {
        client::compare::run(&args, console)
            .await
            .map(|c| (c.to_json(), c.to_table()))
    } else {
        client::run(args, console)
            .await
            .map(|r| (r.to_json(), r.to_table()))
    };
    match printed {
        Ok((json, table)) => {
            match output {
                Output::Json => println!("{json}"),
                Output::Table => print!("{table}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("greet-client: error: {}", fyerrpc_demo::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
