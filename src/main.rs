//! The `policy-reconciler` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use policy_reconciler::cli::{Cli, Command, DriftCommand, JobsCommand};
use policy_reconciler::configuration::{DriftMode, Settings};
use policy_reconciler::startup::{Application, shutdown_signal};
use policy_reconciler::{ops, store, telemetry};

/// Runs the command; a failure is printed once, as one line of causes (no backtrace, even
/// with `RUST_BACKTRACE` set: these are operator mistakes and outages, not bugs), and the
/// process exits 1.
#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", causes(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined with `: `, each said once: a cause whose text its
/// parent already quotes is left out.
fn causes(error: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if said.last().is_some_and(|parent| parent.contains(&text)) {
            continue;
        }
        said.push(text);
    }
    said.join(": ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
    if let Command::Contract { schema } = &cli.command {
        // Needs no configuration either.
        print(&policy_reconciler::cli::contract(schema.as_deref())?);
        return Ok(());
    }
    #[cfg(feature = "dev-certificate")]
    if let Command::DevCertificate {
        out_dir,
        name,
        common_name,
        days,
    } = &cli.command
    {
        // Needs no configuration either.
        let cert = ops::certificate::generate(common_name, *days)?;
        let written = ops::certificate::write(out_dir, name, &cert)?;
        print(&ops::certificate::render(&written));
        return Ok(());
    }
    let sources = cli.sources();
    let settings = Settings::load(&sources).context("loading configuration")?;
    match cli.command {
        Command::CheckConfig => {
            let origins = sources
                .origins()
                .context("reading the configuration's layers")?;
            print(&settings.render_effective(&origins)?);
        }
        #[cfg(feature = "simulator")]
        Command::Demo { users, .. } => {
            // `--profile` reached the settings as a configuration override (`Cli::sources`).
            telemetry::init_tracing(&settings.log);
            let report = policy_reconciler::ops::demo::run(settings, users).await?;
            print!("{}", policy_reconciler::ops::demo::render(&report));
        }
        Command::Migrate => {
            telemetry::init_tracing(&settings.log);
            store::ensure_database(&settings.database).await?;
            let pool = store::pool(&settings.database);
            store::migrate(&pool).await.context("applying migrations")?;
            tracing::info!("migrations applied");
        }
        Command::Run(run) => {
            telemetry::init_tracing(&settings.log);
            #[cfg(feature = "simulator")]
            let (settings, _simulator) = with_simulator(settings, run.with_simulator).await?;
            #[cfg(not(feature = "simulator"))]
            let policy_reconciler::cli::RunArgs {} = run;
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await;
        }
        #[cfg(feature = "simulator")]
        Command::TenantSimulator { listen, .. } => {
            // `--profile` reached the settings as a configuration override (`Cli::sources`).
            telemetry::init_tracing(&settings.log);
            let address = listen.unwrap_or_else(|| settings.simulator.listen_address.clone());
            let listener = tokio::net::TcpListener::bind(&address)
                .await
                .with_context(|| format!("listening on {address}"))?;
            policy_reconciler::simulator::serve(listener, settings.simulator, shutdown_signal())
                .await?;
        }
        Command::Enqueue(args) => {
            let enqueued = ops::enqueue_from_csv(&settings, &args.request()).await?;
            print(&ops::render_enqueued(&enqueued));
        }
        Command::Publish { file, routing_key } => {
            let published =
                ops::enqueue::publish_file(&settings, &file, routing_key.as_deref()).await?;
            print(&format!(
                "published {} bytes with routing key {} (message_id {})\n",
                published.bytes,
                published.routing_key,
                published.message_id.as_deref().unwrap_or("none")
            ));
        }
        Command::Jobs { command } => {
            let pool = ops::connect(&settings.database).await?;
            let text = match command {
                JobsCommand::List {
                    state,
                    job_type,
                    outcome,
                    ods,
                    flag,
                    search,
                    page,
                    limit,
                } => {
                    let filter = ops::JobFilter {
                        state: ops::jobs::listed(state),
                        job_type,
                        outcome,
                        ods_code: ods,
                        flag: flag.as_deref().and_then(ops::Flag::parse),
                        search,
                    };
                    let (rows, more) = ops::search(&pool, &filter, page, limit).await?;
                    ops::render_rows(&rows, more)
                }
                JobsCommand::Show { id } => ops::render_detail(&ops::show(&pool, &id).await?),
                JobsCommand::Watch { id, every_ms } => ops::render_watched(
                    &ops::watch(
                        &pool,
                        &id,
                        std::time::Duration::from_millis(every_ms.max(100)),
                    )
                    .await?,
                ),
                JobsCommand::Pause { id, who } => {
                    action(&pool, &id, ops::Action::Pause, &who).await?
                }
                JobsCommand::Resume { id, who } => {
                    action(&pool, &id, ops::Action::Resume, &who).await?
                }
                JobsCommand::Expedite { id, who } => {
                    action(&pool, &id, ops::Action::Expedite, &who).await?
                }
                JobsCommand::Cancel { id, who } => {
                    action(&pool, &id, ops::Action::Cancel, &who).await?
                }
                JobsCommand::Approve { id, who } => {
                    action(&pool, &id, ops::Action::Approve, &who).await?
                }
                JobsCommand::Revert { id, who } => {
                    action(&pool, &id, ops::Action::Revert, &who).await?
                }
            };
            pool.close().await;
            print(&text);
        }
        Command::Drift {
            command: DriftCommand::Sweep { mode },
        } => {
            let pool = ops::connect(&settings.database).await?;
            let mode = mode.map(|m| match m.as_str() {
                "report" => DriftMode::Report,
                _ => DriftMode::Repair,
            });
            let stored = policy_reconciler::engine::drift::sweep_now(
                &pool,
                &settings.engine.drift,
                mode,
                &policy_reconciler::engine::clock::SystemClock,
            )
            .await?;
            pool.close().await;
            let mut text = format!("stored {} drift.sweep jobs\n", stored.len());
            for message_id in stored {
                text.push_str(&message_id);
                text.push('\n');
            }
            print(&text);
        }
        // Done above, before the configuration was loaded.
        Command::Permissions | Command::Contract { .. } => {}
        #[cfg(feature = "dev-certificate")]
        Command::DevCertificate { .. } => {}
    }
    Ok(())
}

/// `run --with-simulator`: the built-in tenant simulator served in this process, and the
/// tenant client pointed at it.
#[cfg(feature = "simulator")]
async fn with_simulator(
    mut settings: Settings,
    wanted: bool,
) -> anyhow::Result<(
    Settings,
    Option<policy_reconciler::simulator::SimulatorHandle>,
)> {
    if !wanted {
        return Ok((settings, None));
    }
    let handle = policy_reconciler::simulator::spawn(settings.simulator.clone())
        .await
        .context("starting the built-in tenant simulator")?;
    settings.tenant.graph_base_url = handle.base_url();
    settings.tenant.login_base_url = handle.base_url();
    tracing::info!(url = %handle.base_url(), "built-in tenant simulator serving");
    Ok((settings, Some(handle)))
}

/// Write to standard output; a closed pipe (`| head`) is not an error worth a panic.
fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `jobs pause|resume|expedite|cancel|approve`: the operator action path the console uses too.
async fn action(
    pool: &sqlx::PgPool,
    id: &str,
    action: ops::Action,
    who: &policy_reconciler::cli::Who,
) -> Result<String, ops::OpsError> {
    Ok(ops::render_action(
        &ops::act(pool, id, action, &who.operator()).await?,
    ))
}
