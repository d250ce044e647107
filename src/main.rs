//! The `policy-reconciler` binary: parse the command line and hand over to the library.

use anyhow::Context;
use clap::Parser;
use policy_reconciler::cli::{Cli, Command};
use policy_reconciler::configuration::Settings;
use policy_reconciler::startup::{Application, shutdown_signal};
use policy_reconciler::{store, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(&cli.sources()).context("loading configuration")?;
    match cli.command {
        Command::CheckConfig => {
            println!("{settings:#?}");
        }
        Command::Migrate => {
            telemetry::init_tracing(&settings.log);
            store::ensure_database(&settings.database).await?;
            let pool = store::pool(&settings.database);
            store::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
        }
        Command::Run => {
            telemetry::init_tracing(&settings.log);
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await;
        }
    }
    Ok(())
}
