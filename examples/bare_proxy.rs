//! The required HTTP stack alone, as a reference point for the load harness: actix-web with
//! rustls in front, the gateway's own awc client behind (same pool, TCP_NODELAY, allocator),
//! one worker, and nothing else: no key, no limits, no allowlist, no metrics, no log, no
//! JSON parsing. A `POST` to any path goes to the same path of `--upstream` as is, and the
//! answer comes back whole, so every endpoint the harness loads (`/api/chat`,
//! `/api/generate`, `/v1/chat/completions`) has its bare figure. What the gateway costs on
//! top of this is what its features cost.
//!
//! ```text
//! cargo run --release --example bare_proxy -- --listen 127.0.0.1:8443 \
//!     --cert certs/server.pem --key certs/server-key.pem \
//!     --upstream http://127.0.0.1:11434
//! ```
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::Uri;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use ollama_gateway::config::Timeouts;
use ollama_gateway::upstream::{build_client, client_tls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: std::net::SocketAddr,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// The upstream's base URL, plain HTTP (`http://host:port`).
    #[arg(long)]
    upstream: String,
}

/// `http://host:port` of the upstream, to which each request's path is appended.
struct Upstream(String);

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    upstream: web::Data<Upstream>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let Ok(uri) = Uri::try_from(format!("{}{}", upstream.0, req.path())) else {
        return HttpResponse::BadRequest().finish();
    };
    let sent = client
        .post(uri)
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await;
    let Ok(mut answer) = sent else {
        return HttpResponse::BadGateway().finish();
    };
    match answer.body().limit(64 * 1024 * 1024).await {
        Ok(bytes) => HttpResponse::build(answer.status())
            .content_type("application/json; charset=utf-8")
            .body(bytes),
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args.cert)
        .expect("certificate file")
        .map(|c| c.expect("certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&args.key).expect("key file");
    let tls = rustls::ServerConfig::builder_with_provider(ollama_gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        first_byte: Duration::from_secs(300),
        idle: Duration::from_secs(300),
        total: Duration::from_secs(600),
    };
    let upstream = web::Data::new(Upstream(args.upstream.trim_end_matches('/').to_string()));
    let client_tls = client_tls();
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(upstream.clone())
                .app_data(web::Data::new(build_client(
                    &timeouts,
                    Arc::clone(&client_tls),
                )))
                .default_service(web::post().to(forward))
        })
        .workers(1)
        .tcp_nodelay(true)
        .bind_rustls_0_23(args.listen, tls)?;
        for addr in server.addrs() {
            println!("listening on https://{addr}");
        }
        server.run().await
    })
}
