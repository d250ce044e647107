//! The `policy-reconciler` binary: parse the command line and hand over to the library.

use anyhow::Context;
use clap::Parser;
use policy_reconciler::cli::{Cli, Command};
use policy_reconciler::configuration::Settings;
use policy_reconciler::startup::{Application, shutdown_signal};
use policy_reconciler::{simulator, store, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Permissions = cli.command {
        // Needs no configuration. A closed pipe (`| head`) is not an error worth a panic.
        use std::io::Write;
        let _ = write!(
            std::io::stdout().lock(),
            "{}",
            policy_reconciler::cli::permissions()
        );
        return Ok(());
    }
    let settings = Settings::load(&cli.sources()).context("loading configuration")?;
    match cli.command {
        Command::CheckConfig => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout().lock(), "{settings:#?}");
        }
        Command::Migrate => {
            telemetry::init_tracing(&settings.log);
            store::ensure_database(&settings.database).await?;
            let pool = store::pool(&settings.database);
            store::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
        }
        Command::Run { with_simulator } => {
            telemetry::init_tracing(&settings.log);
            let mut settings = settings;
            let _simulator = if with_simulator {
                let handle = simulator::spawn(settings.simulator.clone())
                    .await
                    .context("starting the built-in tenant simulator")?;
                settings.tenant.graph_base_url = handle.base_url();
                settings.tenant.login_base_url = handle.base_url();
                tracing::info!(url = %handle.base_url(), "built-in tenant simulator serving");
                Some(handle)
            } else {
                None
            };
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await;
        }
        Command::TenantSimulator { listen } => {
            telemetry::init_tracing(&settings.log);
            let address = listen.unwrap_or_else(|| settings.simulator.listen_address.clone());
            let listener = tokio::net::TcpListener::bind(&address)
                .await
                .with_context(|| format!("listening on {address}"))?;
            simulator::serve(listener, settings.simulator, shutdown_signal()).await?;
        }
        // Printed above, before the configuration was loaded.
        Command::Permissions => {}
    }
    Ok(())
}
