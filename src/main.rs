//! The `ollama-gateway` command: wiring only.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ollama_gateway::budget::{report, store, RedbStore, SystemClock};
use ollama_gateway::config::{Config, DEFAULT_CONFIG_PATH};
use ollama_gateway::keys::{self, Keys};
use ollama_gateway::limits::LimiterPool;
use ollama_gateway::{server, telemetry};

/// jemalloc, with its background thread purging freed pages (dirty pages decay over 10 s)
/// and idle workers giving back what a burst left (`memory::enable`): RSS comes back down
/// after a burst of streams (measured with glibc's malloc: it stayed at the peak; scenario S5
/// in BENCHMARKS.md), and less memory per open stream.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "A hardened HTTPS gateway in front of Ollama and OpenAI-compatible upstreams",
    // `--config` before a subcommand would be read by none: it belongs to the default
    // command (serve) only; `serve` and `check-config` take their own.
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Only the commands that read the configuration take `--config`.
#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file (TOML); default config/gateway.toml when it exists.
    #[arg(long, value_name = "PATH", env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve(ConfigArg),
    /// Check everything `serve` checks before it binds (the configuration, RUST_LOG, the
    /// TLS files or the self-signed certificate's directory, the keys file) without binding
    /// or leaving anything; print the effective configuration, secrets redacted.
    CheckConfig(ConfigArg),
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
        #[command(flatten)]
        config: ConfigArg,
        /// A plain-HTTP URL; default: /healthz on the admin listener, `admin.listen` as
        /// `serve` reads it (the configuration file, then GATEWAY_ADMIN_LISTEN), an
        /// unspecified address such as 0.0.0.0 probed on loopback.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print every team's and key's token budgets: used, limit, remaining and reset time
    /// of each window. Asks the running gateway's admin listener (GET /usage); when
    /// nothing listens there, or the admin listener is off, reads the usage store under
    /// `[state] dir` and the keys file. Says on stderr which source it used.
    Usage {
        #[command(flatten)]
        config: ConfigArg,
        /// The admin listener, `http://HOST:PORT` (`/usage` is appended unless the URL
        /// ends in it); default: found as `health` finds it.
        #[arg(long)]
        url: Option<String>,
        /// Print the JSON of GET /usage instead of the table.
        #[arg(long)]
        json: bool,
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
        /// `admin`: the key may also manage models (pull, push, create, copy, delete,
        /// blobs); default: an ordinary key.
        #[arg(long, value_parser = ["admin"])]
        role: Option<String>,
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
        Some(_) => "invalid configuration".to_string(),
        None => "invalid configuration (built-in defaults and the environment; no config/gateway.toml here)".to_string(),
    })?;
    Ok(config)
}

/// Standard output went away (`check-config | head`): not a failure, nothing to report.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
struct StdoutClosed;

/// Writes to stdout; a closed pipe becomes [`StdoutClosed`], which `main` ends quietly on.
fn print(
    write: impl FnOnce(&mut std::io::StdoutLock<'_>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other?),
    }
}

fn keys_new(
    team: &str,
    id: Option<String>,
    append: Option<&Path>,
    role: Option<&str>,
) -> anyhow::Result<()> {
    let id = match id {
        Some(id) => id,
        None => format!("{team}-{}", keys::random_suffix()?),
    };
    let role = keys::Role::parse(role).context("unknown role")?;
    let key = keys::generate_key()?;
    let entry = keys::entry_toml(&id, team, &key) + role.toml_line();
    let defaults = Config::load(None, &HashMap::new())?.limits;
    let pool = LimiterPool::default();
    // Check the entry the way the gateway will read it, before anyone relies on it.
    keys::KeyTable::parse(&entry, Path::new("new entry"), defaults, &pool)?;
    let joined = match append {
        Some(path) => Some((
            path,
            keys::append_text(path, &id, &entry, defaults, &pool).context("nothing written")?,
        )),
        None => None,
    };
    // Printed before anything is written: a key that cannot be shown must not be added.
    // (Not `print`: here a closed stdout is an error, not a quiet end.)
    let mut out = std::io::stdout().lock();
    writeln!(out, "{key}\n\n{entry}")
        .and_then(|()| out.flush())
        .context("cannot print the new key; nothing written")?;
    if let Some((path, text)) = joined {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("appended the entry for {id} to {}", path.display());
    }
    Ok(())
}

fn certs_new(out: &Path, names: &[String], force: bool) -> anyhow::Result<()> {
    let files = ollama_gateway::tls::generate_ca_and_server(out, names, force)?;
    print(|stdout| {
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
        writeln!(stdout, "server certificate SHA-256: {}", files.fingerprint)
    })
}

/// Where `health` looks: `url`, or else the /healthz of the admin listener that `serve`
/// with the same configuration (`config`, then the environment) listens on.
fn health_url(url: Option<String>, config: Option<PathBuf>) -> anyhow::Result<String> {
    if let Some(url) = url {
        return Ok(url);
    }
    let Some(listen) = load_config(config)?.admin_listen else {
        anyhow::bail!(
            "the admin listener is off (admin.listen = \"\"), so there is no /healthz to probe: pass --url"
        );
    };
    Ok(format!("{}/healthz", admin_base(listen)))
}

/// `http://HOST:PORT` of an admin listener bound to `listen`, an unspecified address such
/// as 0.0.0.0 reached on loopback.
fn admin_base(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}

/// `ollama-gateway usage`: the report from the running gateway, else from its store.
fn usage(url: Option<String>, config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    // With --url the configuration is read only if the gateway does not answer there.
    let (url, loaded) = match url {
        Some(url) => {
            let base = url.trim_end_matches('/');
            let url = if base.ends_with("/usage") {
                base.to_string()
            } else {
                format!("{base}/usage")
            };
            (Some(url), None)
        }
        None => {
            let loaded = load_config(config.clone())?;
            let url = loaded
                .admin_listen
                .map(|listen| format!("{}/usage", admin_base(listen)));
            (url, Some(loaded))
        }
    };
    let asked = match &url {
        Some(url) => fetch_usage(url)?.map(|report| (report, url)),
        None => None,
    };
    let report = match asked {
        Some((report, url)) => {
            eprintln!("usage from the running gateway at {url}");
            report
        }
        None => {
            let why = match &url {
                Some(url) => format!("nothing listens at {url}"),
                None => "the admin listener is off (admin.listen = \"\")".to_string(),
            };
            let config = match loaded {
                Some(c) => c,
                None => load_config(config)?,
            };
            stored_usage(&config, &why)?
        }
    };
    print(|out| {
        if json {
            let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
            writeln!(out, "{text}")
        } else {
            out.write_all(report.table().as_bytes())
        }
    })
}

/// GET `url` for the usage report; `None` when nothing listens there (connection refused).
fn fetch_usage(url: &str) -> anyhow::Result<Option<report::Report>> {
    // awc's connector wants a process-wide TLS provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    actix_web::rt::System::new().block_on(async {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .finish();
        let mut resp = match client.get(url).send().await {
            Ok(resp) => resp,
            Err(awc::error::SendRequestError::Connect(awc::error::ConnectError::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                return Ok(None)
            }
            Err(e) => anyhow::bail!("{url}: {e}"),
        };
        anyhow::ensure!(
            resp.status().is_success(),
            "{url} answered {} (a gateway without GET /usage?)",
            resp.status()
        );
        let body = resp
            .body()
            .limit(64 << 20)
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let report = serde_json::from_slice(&body)
            .with_context(|| format!("{url} did not answer a usage report"))?;
        Ok(Some(report))
    })
}

/// The report of a stopped gateway: its usage store (read-only, without the writer's
/// lock) and its keys file, counted in its calendar.
fn stored_usage(config: &Config, why: &str) -> anyhow::Result<report::Report> {
    let keys = Keys::load(
        &config.auth.keys_file,
        config.limits,
        Arc::new(LimiterPool::default()),
    )?;
    let rows = match &config.budgets.state_dir {
        Some(dir) => {
            let path = dir.join(store::FILE_NAME);
            let rows = RedbStore::read_file(&path).context(
                "cannot read the stored usage (while a gateway runs on this state directory it holds the store: ask that gateway with --url)",
            )?;
            eprintln!(
                "usage from the store file {} and the keys file {} ({why})",
                path.display(),
                config.auth.keys_file.display()
            );
            rows
        }
        None => {
            eprintln!(
                "no usage is stored ([state] dir is empty: it lived in the gateway's memory) and {why}: the budgets of the keys file {} with nothing used",
                config.auth.keys_file.display()
            );
            Vec::new()
        }
    };
    Ok(report::from_stored(
        &keys.table(),
        &rows,
        Arc::new(SystemClock),
        config.budgets.calendar.clone(),
    )?)
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
    print(|out| writeln!(out, "{}", keys::to_hex(&keys::hash_key(key))))
}

/// `check-config`: what `serve` checks before it binds, in the same code, without binding a
/// port or leaving a file (a self-signed certificate that `serve` would generate is only
/// announced, once its directory is known to be writable).
fn check_config(config: &Config) -> anyhow::Result<()> {
    let tls = match ollama_gateway::tls::check(&config.tls)? {
        Some(fingerprint) => format!("TLS certificate SHA-256 {fingerprint}"),
        None => format!(
            "a self-signed TLS certificate is generated at start (there is none yet, or it expires within {} days)",
            ollama_gateway::tls::RENEW_WITHIN_DAYS
        ),
    };
    let keys_file = &config.auth.keys_file;
    let keys = Keys::load(keys_file, config.limits, Arc::new(LimiterPool::default()))?;
    if !keys_file.exists() {
        eprintln!(
            "warning: keys file {} does not exist: every request will be refused (401); create a key with `ollama-gateway keys new --team NAME --append {}`",
            keys_file.display(),
            keys_file.display()
        );
    }
    for warning in report::never_fitting(
        &keys.table(),
        &config.limits.tokens,
        config.budgets.default_output_reservation,
    ) {
        eprintln!("warning: {warning}");
    }
    print(|out| {
        writeln!(
            out,
            "# configuration is valid; {} API key(s) and {} trusted network(s) in {}; {tls}; effective values (secrets redacted):",
            keys.table().len(),
            keys.table().networks(),
            keys_file.display()
        )?;
        out.write_all(config.to_redacted_toml().as_bytes())
    })
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once: many error types (thiserror's
/// `#[from]` with `{0}`, rustls' PEM errors) repeat their source in their own message,
/// which anyhow's chain would print again.
fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (config_arg, serve) = match cli.command {
        None => (cli.config, true),
        Some(Command::Serve(arg)) => (arg, true),
        Some(Command::CheckConfig(arg)) => (arg, false),
        Some(Command::Keys { command }) => {
            return match command {
                KeysCommand::New {
                    team,
                    id,
                    append,
                    role,
                } => keys_new(&team, id, append.as_deref(), role.as_deref()),
                KeysCommand::Hash => keys_hash(),
            }
        }
        Some(Command::Certs {
            command: CertsCommand::New { out, names, force },
        }) => return certs_new(&out, &names, force),
        Some(Command::Health { config, url }) => return health(&health_url(url, config.config)?),
        Some(Command::Usage { config, url, json }) => return usage(url, config.config, json),
    };
    let config = load_config(config_arg.config)?;
    if !serve {
        return check_config(&config);
    }
    ollama_gateway::memory::enable();
    let _log_writer = telemetry::init(&config.log, std::env::var("RUST_LOG").ok().as_deref());
    actix_web::rt::System::new().block_on(async move {
        let running = server::start(config)?;
        spawn_sighup(Arc::clone(&running.reloader));
        running.run().await.context("server failed")
    })
}

/// SIGHUP reloads the keys file and the certificate at once (they are also polled). The
/// handler is installed here, before the listeners take traffic, not in the task: until it
/// is, a SIGHUP terminates the process.
fn spawn_sighup(reloader: Arc<ollama_gateway::reload::Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; relying on periodic reload");
            return;
        };
        actix_web::rt::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: checking the keys file and certificate");
                reloader.check();
            }
        });
    }
}
