//! projectvm-operator: thin entry point; everything lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = projectvm::config::Config::parse();
    projectvm::telemetry::init(config.log_format);
    projectvm::run(config).await
}
