//! The HTTP server: listeners, TLS, and the App with its middleware, written down once.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::config::Config;
use crate::tls::{self, CertStore};
use crate::{routes, upstream};

/// State shared by all workers, built once before the server starts.
pub struct AppState {
    pub config: Arc<Config>,
}

/// A started server and what callers need to know about it.
pub struct Running {
    /// The bound HTTPS address (the real port when the config said 0).
    pub https_addr: SocketAddr,
    /// The bound plain-HTTP address, if one was configured.
    pub plain_addr: Option<SocketAddr>,
    pub cert_store: Arc<CertStore>,
    /// Await to run; use `handle()` to stop.
    pub server: actix_web::dev::Server,
}

/// Binds the listeners and builds the server; it runs when `Running::server` is awaited or spawned.
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

    let config = Arc::new(config);
    let state = web::Data::new(AppState {
        config: Arc::clone(&config),
    });
    let client_tls = upstream::client_tls();
    let timeouts = config.timeouts;
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };

    let mut server = HttpServer::new(move || {
        // One upstream client per worker: awc clients are !Send and pool per thread.
        let client = upstream::build_client(&timeouts, Arc::clone(&client_tls));
        // Middleware order: in actix the last `.wrap()` runs first. Today there is one layer:
        // the tracing span every request runs in (errors are logged in it).
        App::new()
            .app_data(state.clone())
            .app_data(web::Data::new(client))
            .wrap(TracingLogger::default())
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
    })
    .workers(workers)
    // A client that goes away must cancel its request at once, so its upstream work stops.
    .h1_allow_half_closed(false)
    .bind_rustls_0_23(config.server.listen, (*loaded.server_config).clone())?;
    if let Some(plain) = config.server.plain_listen {
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
    Ok(Running {
        https_addr,
        plain_addr,
        cert_store: loaded.store,
        server: server.run(),
    })
}
