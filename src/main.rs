//! The `ollama-gateway` command: wiring only.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ollama_gateway::config::{Config, DEFAULT_CONFIG_PATH};
use ollama_gateway::keys::{self, Keys};
use ollama_gateway::limits::LimiterPool;
use ollama_gateway::{server, telemetry};

/// jemalloc, with its background thread purging freed pages (dirty pages decay over 10 s):
/// RSS comes back down after a burst of streams (measured with glibc's malloc: it stayed at
/// the peak; scenario S5 in BENCHMARKS.md), and less memory per open stream.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "A hardened HTTPS gateway in front of Ollama and OpenAI-compatible upstreams"
)]
struct Cli {
    /// Configuration file (TOML); default config/gateway.toml when it exists.
    #[arg(long, global = true, value_name = "PATH", env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the configuration and the keys file; print the configuration, secrets redacted.
    CheckConfig,
    /// Create and hash API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Make TLS certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Exit 0 when the gateway at URL answers 2xx (for container health checks).
    Health {
        /// A plain-HTTP URL; default: /healthz on the admin listener (GATEWAY_ADMIN_LISTEN,
        /// an unspecified address such as 0.0.0.0 probed on loopback; 127.0.0.1:9464 if unset).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a local CA and a server certificate signed by it.
    New {
        /// Directory to write ca.pem, ca-key.pem, server.pem (chain) and server-key.pem.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Names the server answers to (DNS names or IPs); repeat the flag.
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        names: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key: prints the key alone on the first line, then its [[keys]] entry.
    New {
        /// The team the key belongs to (a metrics label).
        #[arg(long)]
        team: String,
        /// The key's id (a metrics label); default: <team>-<6 random hex digits>.
        #[arg(long)]
        id: Option<String>,
        /// Also append the entry to this keys file (created if missing).
        #[arg(long, value_name = "PATH")]
        append: Option<PathBuf>,
    },
    /// Read a key on stdin and print its SHA-256, as the keys file wants it.
    Hash,
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

fn keys_new(team: &str, id: Option<String>, append: Option<&Path>) -> anyhow::Result<()> {
    let id = match id {
        Some(id) => id,
        None => format!("{team}-{}", keys::random_suffix()?),
    };
    let key = keys::generate_key()?;
    let entry = keys::entry_toml(&id, team, &key);
    // Check the entry the way the gateway will read it, before anyone relies on it.
    keys::KeyTable::parse(
        &entry,
        Path::new("new entry"),
        Config::load(None, &HashMap::new())?.limits,
        &LimiterPool::default(),
    )?;
    if let Some(path) = append {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(file, "\n{entry}")?;
        eprintln!("appended the entry for {id} to {}", path.display());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}")?;
    writeln!(out, "\n{entry}")?;
    Ok(())
}

fn certs_new(out: &Path, names: &[String], force: bool) -> anyhow::Result<()> {
    let files = ollama_gateway::tls::generate_ca_and_server(out, names, force)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "CA certificate (give it to clients, e.g. GATEWAY_CA): {}",
        files.ca.display()
    )?;
    writeln!(
        stdout,
        "server chain (tls.cert / GATEWAY_TLS_CERT): {}",
        files.server_cert.display()
    )?;
    writeln!(
        stdout,
        "server key (tls.key / GATEWAY_TLS_KEY): {}",
        files.server_key.display()
    )?;
    writeln!(stdout, "server certificate SHA-256: {}", files.fingerprint)?;
    Ok(())
}

/// Where `health` looks by default: the admin listener's /healthz.
fn health_url(url: Option<String>) -> String {
    if let Some(url) = url {
        return url;
    }
    let listen = std::env::var("GATEWAY_ADMIN_LISTEN")
        .ok()
        .and_then(|v| v.trim().parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9464)));
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!(
        "http://{}/healthz",
        std::net::SocketAddr::new(ip, listen.port())
    )
}

/// A liveness probe without curl in the image: GET `url`, succeed on 2xx.
fn health(url: &str) -> anyhow::Result<()> {
    // awc's connector wants a process-wide TLS provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    actix_web::rt::System::new().block_on(async {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .finish();
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        anyhow::ensure!(
            resp.status().is_success(),
            "{url} answered {}",
            resp.status()
        );
        Ok(())
    })
}

fn keys_hash() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let key = input.trim();
    anyhow::ensure!(!key.is_empty(), "no key on stdin");
    writeln!(
        std::io::stdout().lock(),
        "{}",
        keys::to_hex(&keys::hash_key(key))
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    match &command {
        Command::Keys { command } => {
            return match command {
                KeysCommand::New { team, id, append } => {
                    keys_new(team, id.clone(), append.as_deref())
                }
                KeysCommand::Hash => keys_hash(),
            }
        }
        Command::Certs {
            command: CertsCommand::New { out, names, force },
        } => return certs_new(out, names, *force),
        Command::Health { url } => return health(&health_url(url.clone())),
        Command::Serve | Command::CheckConfig => {}
    }
    let config = load_config(cli.config)?;
    match command {
        Command::CheckConfig => {
            let keys = Keys::load(
                &config.auth.keys_file,
                config.limits,
                Arc::new(LimiterPool::default()),
            )?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "# configuration is valid; {} API key(s) in {}; effective values (secrets redacted):",
                keys.table().len(),
                config.auth.keys_file.display()
            )?;
            out.write_all(config.to_redacted_toml().as_bytes())?;
            Ok(())
        }
        Command::Serve | Command::Keys { .. } | Command::Certs { .. } | Command::Health { .. } => {
            if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
                eprintln!("warning: jemalloc background thread not started ({e}); freed memory returns to the OS more slowly");
            }
            let _log_writer =
                telemetry::init(&config.log, std::env::var("RUST_LOG").ok().as_deref());
            actix_web::rt::System::new().block_on(async move {
                let running = server::start(config)?;
                spawn_sighup(Arc::clone(&running.reloader));
                running.run().await.context("server failed")
            })
        }
    }
}

/// SIGHUP reloads the keys file and the certificate at once (they are also polled).
fn spawn_sighup(reloader: Arc<ollama_gateway::reload::Reloader>) {
    #[cfg(unix)]
    actix_web::rt::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; relying on periodic reload");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: checking the keys file and certificate");
            reloader.check();
        }
    });
}
