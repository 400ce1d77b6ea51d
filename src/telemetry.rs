//! Logging: one tracing subscriber, text or JSON, filtered by config or `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, RawLog};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
///
/// rustls is held at `error` unless asked for: clients that send an IP address as SNI make
/// it warn on every handshake, which would flood the log.
pub fn init(log: &RawLog, rust_log: Option<&str>) {
    let directives = match rust_log {
        Some(value) if !value.trim().is_empty() => value.to_string(),
        _ => format!("{},rustls=error", log.level),
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let result = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}
