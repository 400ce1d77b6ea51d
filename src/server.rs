//! The HTTP server: listeners, TLS, limits, and the App with its middleware, written down once.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::config::Config;
use crate::keys::Keys;
use crate::limits::{AuthThrottle, LimiterPool};
use crate::metrics::{Metrics, WorkerMetrics};
use crate::middleware;
use crate::middleware::allowlist::Allowlist;
use crate::reload::Reloader;
use crate::routes::health::Readiness;
use crate::telemetry::GatewaySpan;
use crate::tls::{self, CertStore};
use crate::{routes, upstream};

/// State shared by all workers, built once before the server starts.
pub struct AppState {
    pub config: Arc<Config>,
    pub keys: Arc<Keys>,
    pub throttle: Arc<AuthThrottle>,
    pub allowlist: Allowlist,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The Ollama upstream's name, interned once for metric labels.
    pub ollama_label: Arc<str>,
}

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
    /// Await to run; use `handle()` to stop.
    pub server: actix_web::dev::Server,
    /// The admin listener's server, run alongside.
    pub admin: Option<actix_web::dev::Server>,
}

impl Running {
    /// Runs both servers until they stop.
    pub async fn run(self) -> std::io::Result<()> {
        match self.admin {
            Some(admin) => futures_util::future::try_join(self.server, admin)
                .await
                .map(|_| ()),
            None => self.server.await,
        }
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
    if key_count == 0 {
        tracing::warn!(
            path = %config.auth.keys_file.display(),
            "no API keys configured: every request is refused (401). Create one with `ollama-gateway keys new --team NAME` and add the printed [[keys]] entry to {}",
            config.auth.keys_file.display()
        );
    } else {
        tracing::info!(path = %config.auth.keys_file.display(), keys = key_count, "loaded API keys");
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

    let config = Arc::new(config);
    let state = web::Data::new(AppState {
        config: Arc::clone(&config),
        keys,
        throttle,
        allowlist: Allowlist::new(&config.allowlist),
        metrics: Arc::clone(&metrics),
        readiness: Readiness::default(),
        ollama_label: upstream::OLLAMA.into(),
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
    let mut server = HttpServer::new(move || {
        // Per worker: the upstream client (awc clients are !Send and pool per thread) and
        // the cache of resolved metric handles.
        let client = upstream::build_client(&timeouts, Arc::clone(&client_tls));
        let worker_metrics = Rc::new(WorkerMetrics::new(Arc::clone(&state.metrics)));
        // Middleware order: in actix the last `.wrap()` runs first, so a request meets
        // TracingLogger (its span), then the edge (see `middleware`), then the route.
        App::new()
            .app_data(state.clone())
            .app_data(web::Data::new(client))
            .app_data(worker_metrics)
            .wrap(from_fn(middleware::edge))
            .wrap(TracingLogger::<GatewaySpan>::new())
            .configure(|cfg| routes::configure(cfg, public_metrics))
            .default_service(web::to(routes::not_found))
    })
    .workers(workers)
    // actix counts connections per worker; split the total between them.
    .max_connections(server_cfg.max_connections.div_ceil(workers))
    .client_request_timeout(server_cfg.request_header_timeout)
    .client_disconnect_timeout(std::time::Duration::from_secs(1))
    .tls_handshake_timeout(server_cfg.tls_handshake_timeout)
    .keep_alive(server_cfg.keep_alive)
    // Small writes (one NDJSON line) go out at once, not after Nagle's 40 ms.
    .tcp_nodelay(true)
    // A client that goes away must cancel its request at once, so its upstream work stops.
    .h1_allow_half_closed(false)
    .bind_rustls_0_23(server_cfg.listen, (*loaded.server_config).clone())?;
    if let Some(plain) = server_cfg.plain_listen {
        tracing::warn!(address = %plain, "plain-HTTP listener enabled: use it only behind a TLS-terminating load balancer");
        server = server.bind(plain)?;
    }
    let mut https_addr = None;
    let mut plain_addr = None;
    for (addr, scheme) in server.addrs_with_scheme() {
        tracing::info!(address = %format!("{scheme}://{addr}"), "listening");
        match scheme {
            "https" => https_addr = https_addr.or(Some(addr)),
            _ => plain_addr = plain_addr.or(Some(addr)),
        }
    }
    let https_addr =
        https_addr.ok_or_else(|| anyhow::anyhow!("the HTTPS listener did not bind"))?;

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
            .bind(listen)?;
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
        server: server.run(),
        admin,
    })
}
