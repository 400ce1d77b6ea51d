//! ollama-gateway: a hardened HTTPS edge proxy in front of Ollama and OpenAI-compatible
//! upstreams, speaking Ollama's `/api/chat` to clients.

pub mod allowlist;
pub mod body;
pub mod budget;
pub mod catalog;
pub mod config;
pub mod error;
pub mod keys;
pub mod limits;
pub mod listener;
pub mod log_sink;
pub mod memory;
pub mod metrics;
pub mod middleware;
pub mod reload;
pub mod routes;
pub mod secret;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod upstream;
