//! The HTTP server: listeners, TLS, limits, and the App with its middleware, written down once.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix_http::body::{BoxBody, MessageBody};
use actix_http::h1::H1Service;
use actix_http::{HttpService, Request, Response};
use actix_service::{
    map_config, IntoServiceFactory as _, Service, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::AppConfig;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::allowlist::Allowlist;
use crate::budget::{self, Flusher, LocalLedger};
use crate::config::Config;
use crate::keys::Keys;
use crate::limits::{AuthThrottle, LimiterPool};
use crate::listener::{self, Edge};
use crate::metrics::{Metrics, WorkerMetrics};
use crate::middleware;
use crate::reload::Reloader;
use crate::state::{AppState, Readiness};
use crate::telemetry::GatewaySpan;
use crate::tls::{self, CertStore};
use crate::{routes, upstream};

/// An `App` as the h1 dispatcher takes it: its errors turned into responses, and the
/// default `AppConfig` (routing here reads neither its host nor its scheme).
macro_rules! app_service {
    ($app:expr) => {
        map_config(
            $app.into_factory()
                .map_err(|e: actix_web::Error| e.error_response()),
            |_| AppConfig::default(),
        )
    };
}

/// The kernel's queue of connections not yet accepted, per listener (actix's default).
const LISTEN_BACKLOG: u32 = 2048;
/// How long a stop waits for requests in flight before closing their connections.
const SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// A started server and what callers need to know about it.
pub struct Running {
    /// The bound HTTPS address (the real port when the config said 0).
    pub https_addr: SocketAddr,
    /// The bound plain-HTTP address, if one was configured.
    pub plain_addr: Option<SocketAddr>,
    /// The bound admin (metrics, health) address, if one was configured.
    pub admin_addr: Option<SocketAddr>,
    pub cert_store: Arc<CertStore>,
    pub reloader: Arc<Reloader>,
    pub metrics: Arc<Metrics>,
    /// The token budgets' ledger.
    pub ledger: Arc<LocalLedger>,
    /// Writes the ledger's usage to its store once a second, and once more when dropped.
    pub flusher: Flusher,
    /// Await to run; use `handle()` to stop.
    pub server: actix_web::dev::Server,
    /// The admin listener's server, run alongside.
    pub admin: Option<actix_web::dev::Server>,
}

impl Running {
    /// Runs both servers until they stop.
    pub async fn run(self) -> std::io::Result<()> {
        let result = match self.admin {
            Some(admin) => futures_util::future::try_join(self.server, admin)
                .await
                .map(|_| ()),
            None => self.server.await,
        };
        // The last usage written before the process ends.
        drop(self.flusher);
        result
    }
}

/// Binds the listeners and builds the server; it runs when `Running::server` is awaited or
/// spawned. Must be called inside an actix system (it starts the reload task there).
pub fn start(config: Config) -> anyhow::Result<Running> {
    // awc's connector builds a default TLS config at construction, which needs a process-wide
    // provider; installing ours is a no-op if one is already there.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let loaded = tls::load(&config.tls)?;
    let (cert_path, _) = loaded.store.paths();
    if loaded.generated {
        tracing::info!(path = %cert_path.display(), fingerprint = %loaded.fingerprint, "generated a self-signed certificate");
    } else {
        tracing::info!(path = %cert_path.display(), fingerprint = %loaded.fingerprint, "loaded TLS certificate");
    }

    let pool = Arc::new(LimiterPool::default());
    let keys = Arc::new(Keys::load(
        &config.auth.keys_file,
        config.limits,
        Arc::clone(&pool),
    )?);
    let key_count = keys.table().len();
    let networks = keys.table().networks();
    if key_count == 0 && networks == 0 {
        tracing::warn!(
            path = %config.auth.keys_file.display(),
            "no API keys configured: every request is refused (401). Create one with `ollama-gateway keys new --team NAME` and add the printed [[keys]] entry to {}",
            config.auth.keys_file.display()
        );
    } else {
        tracing::info!(path = %config.auth.keys_file.display(), keys = key_count, networks, "loaded API keys");
    }
    if config.allowlist.cidrs.is_none() {
        tracing::warn!("allowlist.allow_all is set: every client address is served");
    }
    let throttle = Arc::new(AuthThrottle::new(
        config.auth.max_failures,
        config.auth.failure_window,
        config.auth.ban,
    ));
    let mut upstream_names: Vec<&str> = vec![upstream::OLLAMA];
    upstream_names.extend(config.upstreams.iter().map(|u| u.name.as_str()));
    let metrics = Arc::new(Metrics::new(config.metrics.max_models, &upstream_names));
    let reloader = Arc::new(Reloader {
        keys: Arc::clone(&keys),
        cert: Arc::clone(&loaded.store),
        pool,
        throttle: Arc::clone(&throttle),
    });
    Arc::clone(&reloader).spawn(config.server.reload_interval);

    let ledger = Arc::new(open_ledger(&config.budgets));
    let flusher = ledger.spawn_flusher(budget::FLUSH_EVERY);

    let _ = metrics
        .registry()
        .register(Box::new(crate::metrics::BudgetGauges::new(
            Arc::clone(&keys),
            Arc::clone(&ledger) as Arc<dyn budget::Ledger>,
            Arc::clone(&ledger),
        )));

    let config = Arc::new(config);
    let state = web::Data::new(AppState {
        config: Arc::clone(&config),
        keys,
        throttle,
        allowlist: Allowlist::new(&config.allowlist),
        metrics: Arc::clone(&metrics),
        readiness: Readiness::default(),
        catalog: Default::default(),
        ollama_label: upstream::OLLAMA.into(),
        ledger: Arc::clone(&ledger) as Arc<dyn budget::Ledger>,
        local_ledger: Arc::clone(&ledger),
    });
    let client_tls = upstream::client_tls();
    let timeouts = config.timeouts;
    let server_cfg = &config.server;
    let workers = match server_cfg.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };

    let public_metrics = config.metrics.public;
    let admin_state = state.clone();
    let admin_tls = Arc::clone(&client_tls);
    let hsts = config.hsts.clone();
    // Per worker: the upstream client (awc clients are !Send and pool per thread) and the
    // cache of resolved metric handles. `tls` says which listener the App serves, so that
    // only HTTPS answers carry Strict-Transport-Security.
    let make_app = move |tls: bool| {
        crate::memory::watch_worker();
        let client = upstream::build_client(&timeouts, Arc::clone(&client_tls));
        let worker_metrics = Rc::new(WorkerMetrics::new(Arc::clone(&state.metrics)));
        let hsts = hsts.clone().filter(|_| tls).map(middleware::Hsts);
        // Middleware order: in actix the last `.wrap()` runs first, so a request meets
        // TracingLogger (its span), then the edge (see `middleware`), then the route.
        let app = App::new()
            .app_data(state.clone())
            .app_data(web::Data::new(client))
            .app_data(worker_metrics);
        let app = match hsts {
            Some(hsts) => app.app_data(hsts),
            None => app,
        };
        app.wrap(from_fn(middleware::edge))
            .wrap(TracingLogger::<GatewaySpan>::new())
            .configure(|cfg| routes::configure(cfg, public_metrics))
            .default_service(web::to(routes::not_found))
    };
    let edge = Edge::new(
        Allowlist::new(&config.allowlist),
        server_cfg.max_connections_per_ip,
        server_cfg.max_tls_handshakes,
        server_cfg.tls_handshake_timeout,
        Arc::clone(&metrics),
    );
    let h1_settings = H1Settings::from(server_cfg);
    let mut builder = actix_server::Server::build()
        .workers(workers)
        .backlog(LISTEN_BACKLOG)
        // actix counts connections per worker; split the total between them.
        .max_concurrent_connections(server_cfg.max_connections.div_ceil(workers))
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);

    let (listener, https_addr) = bind(server_cfg.listen, "server.listen")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&loaded.server_config));
    {
        let edge = Arc::clone(&edge);
        let make_app = make_app.clone();
        builder = builder.listen("https", listener, move || {
            let app = make_app(true);
            listener::https(
                Arc::clone(&edge),
                acceptor.clone(),
                h1_settings.service(https_addr, app_service!(app)),
            )
        })?;
    }
    tracing::info!(address = %format!("https://{https_addr}"), "listening");
    let mut plain_addr = None;
    if let Some(plain) = server_cfg.plain_listen {
        tracing::warn!(address = %plain, "plain-HTTP listener enabled: use it only behind a TLS-terminating load balancer");
        let (listener, addr) = bind(plain, "server.plain_listen")?;
        let edge = Arc::clone(&edge);
        builder = builder.listen("http", listener, move || {
            let app = make_app(false);
            listener::plain(
                Arc::clone(&edge),
                h1_settings.service(addr, app_service!(app)),
            )
        })?;
        tracing::info!(address = %format!("http://{addr}"), "listening");
        plain_addr = Some(addr);
    }

    // The admin listener: plain HTTP, no key, meant for loopback or an internal network.
    let (admin, admin_addr) = match config.admin_listen {
        None => (None, None),
        Some(listen) => {
            let admin_timeouts = config.timeouts;
            let admin = HttpServer::new(move || {
                App::new()
                    .app_data(admin_state.clone())
                    .app_data(web::Data::new(upstream::build_client(
                        &admin_timeouts,
                        Arc::clone(&admin_tls),
                    )))
                    .configure(routes::configure_admin)
                    .default_service(web::to(routes::not_found))
            })
            .workers(1)
            .bind(listen)
            .map_err(|e| bind_error(listen, "admin.listen", &e))?;
            let addr = admin.addrs().first().copied();
            if let Some(addr) = addr {
                tracing::info!(address = %format!("http://{addr}"), "admin listener (metrics, health)");
            }
            (Some(admin.run()), addr)
        }
    };
    Ok(Running {
        https_addr,
        plain_addr,
        admin_addr,
        cert_store: loaded.store,
        reloader,
        metrics,
        ledger,
        flusher,
        server: builder.run(),
        admin,
    })
}

/// The token budgets' ledger, going on from the usage store under `[state] dir`. A store
/// that cannot be opened (another gateway holds it, the directory is not writable) is
/// logged as an error and the usage kept in memory: the gateway still serves, and the
/// error says what is lost at the next restart.
fn open_ledger(budgets: &crate::config::BudgetConfig) -> LocalLedger {
    let clock: Arc<dyn budget::Clock> = Arc::new(budget::SystemClock);
    let Some(dir) = &budgets.state_dir else {
        tracing::info!("state.dir is empty: day and month token usage is kept in memory only");
        return LocalLedger::with_memory_store(clock, budgets.calendar.clone());
    };
    let opened = budget::RedbStore::open(dir).and_then(|store| {
        let path = store.path().display().to_string();
        let store: Arc<dyn budget::UsageStore> = Arc::new(store);
        LocalLedger::open(Arc::clone(&clock), budgets.calendar.clone(), store).map(|l| (l, path))
    });
    match opened {
        Ok((ledger, path)) => {
            tracing::info!(%path, "token usage store opened");
            ledger
        }
        Err(e) => {
            tracing::error!(error = %e, "token usage is kept in memory only: day and month usage will not survive a restart");
            LocalLedger::with_memory_store(clock, budgets.calendar.clone())
        }
    }
}

/// What the HTTP/1.1 dispatcher is told on both public listeners.
#[derive(Debug, Clone, Copy)]
struct H1Settings {
    keep_alive: std::time::Duration,
    request_header_timeout: std::time::Duration,
}

impl From<&crate::config::ServerConfig> for H1Settings {
    fn from(c: &crate::config::ServerConfig) -> Self {
        Self {
            keep_alive: c.keep_alive,
            request_header_timeout: c.request_header_timeout,
        }
    }
}

impl H1Settings {
    /// The h1 dispatcher for one listener, serving `app`.
    fn service<T, S, B>(self, addr: SocketAddr, app: S) -> H1Service<T, S, B>
    where
        S: ServiceFactory<Request, Config = ()>,
        S::Error: Into<Response<BoxBody>> + 'static,
        S::InitError: std::fmt::Debug,
        S::Response: Into<Response<B>> + 'static,
        <S::Service as Service<Request>>::Future: 'static,
        B: MessageBody + 'static,
    {
        HttpService::<T, S, B>::build()
            .keep_alive(self.keep_alive)
            .client_request_timeout(self.request_header_timeout)
            .client_disconnect_timeout(std::time::Duration::from_secs(1))
            // A client that goes away must cancel its request at once, so its upstream
            // work stops.
            .h1_allow_half_closed(false)
            .local_addr(addr)
            .h1(app)
    }
}

/// Binds a listener as actix would (address reuse, a deep backlog); errors name the
/// address and the option that set it.
fn bind(addr: SocketAddr, option: &str) -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let listen = || -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(LISTEN_BACKLOG).unwrap_or(i32::MAX))?;
        Ok(socket.into())
    };
    let listener = listen().map_err(|e| bind_error(addr, option, &e))?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

fn bind_error(addr: SocketAddr, option: &str, e: &std::io::Error) -> anyhow::Error {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "the address is already in use (another process listens there)".to_string()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".to_string()
        }
        std::io::ErrorKind::AddrNotAvailable => "the address is not on this machine".to_string(),
        _ => e.to_string(),
    };
    anyhow::anyhow!("cannot listen on {addr} (`{option}`): {why}")
}
