//! Logs (tracing, JSON or pretty), metrics (Prometheus), and the internal-event pattern that
//! writes both together ([`event`]).

pub mod event;
pub mod metrics;

pub use event::{InternalEvent, emit};

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::configuration::{LogFormat, LogSettings};

/// Install the global subscriber. `RUST_LOG` wins over the configured level. Calling it twice
/// (tests) keeps the first subscriber.
pub fn init_tracing(settings: &LogSettings) {
    // lapin logs every broken socket as ERROR lines of its own ("error doing IO", "Connection
    // error"), also for the connection cuts and closes the supervisor expects and handles; the
    // broker events (`broker::events`) say what happened instead. `RUST_LOG`, or a `log.level`
    // that names `lapin`, shows them again.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            if settings.level.contains("lapin") {
                EnvFilter::try_new(&settings.level)
            } else {
                EnvFilter::try_new(format!("{},lapin=off", settings.level))
            }
        })
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=off"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    };
    // Already initialised (several apps in one test process): keep the first.
    let _ = result;
}
