//! projectvm-operator: thin entry point; everything lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() {
    let config = projectvm::config::Config::parse();
    projectvm::telemetry::init(config.log_format);
    // Exit at once either way: a replica that lost leadership must not linger on tasks the
    // runtime would otherwise wait for.
    match projectvm::run(config).await {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "operator stopped");
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
}
