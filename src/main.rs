//! The `ollama-gateway` command: wiring only.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ollama_gateway::config::{Config, DEFAULT_CONFIG_PATH};
use ollama_gateway::{server, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "A hardened HTTPS gateway in front of Ollama and OpenAI-compatible upstreams"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
}

fn load_config(explicit: Option<PathBuf>) -> anyhow::Result<Config> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let default = PathBuf::from(DEFAULT_CONFIG_PATH);
    let path = match explicit {
        Some(path) => Some(path),
        None if default.is_file() => Some(default),
        None => None,
    };
    let config = Config::load(path.as_deref(), &env).with_context(|| match &path {
        Some(p) => format!("configuration from {}", p.display()),
        None => "configuration (built-in defaults; no config/gateway.toml here)".to_string(),
    })?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = load_config(cli.config)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "# configuration is valid; effective values (secrets redacted):"
            )?;
            out.write_all(config.to_redacted_toml().as_bytes())?;
            Ok(())
        }
        Command::Serve => {
            telemetry::init(&config.log, std::env::var("RUST_LOG").ok().as_deref());
            actix_web::rt::System::new().block_on(async move {
                let running = server::start(config)?;
                running.server.await.context("server failed")
            })
        }
    }
}
