//! Logging: journald under systemd, a file with `-T file=`, stderr otherwise.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

use crate::{Config, DaemonError};

fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

pub fn init(config: &Config) -> Result<(), DaemonError> {
    // RUST_LOG refines the level set by -v/-q (e.g. RUST_LOG=pr_helper=trace).
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::from_level(config.log_level).into())
        .from_env_lossy();
    let registry = tracing_subscriber::registry().with(filter);
    if let Some(path) = &config.log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                DaemonError::Logging(format!("cannot open log file {}: {e}", path.display()))
            })?;
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Mutex::new(file))
                    .with_ansi(false),
            )
            .try_init()
            .map_err(|e| DaemonError::Logging(e.to_string()))
    } else if under_journald() {
        let layer = tracing_journald::layer()
            .map_err(|e| DaemonError::Logging(format!("cannot reach journald: {e}")))?
            .with_syslog_identifier("pr-helper".into());
        registry
            .with(layer)
            .try_init()
            .map_err(|e| DaemonError::Logging(e.to_string()))
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    // Colour only on a terminal: logs redirected to a file stay plain text.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init()
            .map_err(|e| DaemonError::Logging(e.to_string()))
    }
}
