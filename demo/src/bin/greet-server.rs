//! `greet-server`: one server of the greet cluster. See `--help`.

use std::error::Error;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use fyerrpc::server::shutdown_signal;
use fyerrpc_demo::server::{BoundServer, ServerArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServerArgs::parse();
    if let Err(e) = args.validate() {
        ServerArgs::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e)
            .exit();
    }
    fyerrpc_demo::logging::init("info");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("greet-server: error: {}", fyerrpc_demo::error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ServerArgs) -> Result<(), Box<dyn Error>> {
    let stop = shutdown_signal()?;
    let server = BoundServer::bind(args).await?;
    println!(
        "greet-server {} listening on {} (registered as {}), health on http://{}/health",
        server.instance().id(),
        server.grpc_addr(),
        server.instance().address(),
        server.http_addr(),
    );
    let stopped = server
        .run(async {
            let signal = stop.await;
            tracing::info!(%signal, "shutdown requested");
        })
        .await?;
    if let Some(e) = stopped.deregister_error {
        tracing::warn!(error = %e, "exiting without deregistering");
    }
    Ok(())
}
