//! The `kaching` binary: parse the command line, run, map errors to exit 1.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = kaching::cli::Cli::parse();
    match kaching::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kaching: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
