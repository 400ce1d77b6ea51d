//! Pure protocol code, no I/O: Ollama's request and response shapes, the SSE parser, and
//! the OpenAI <-> Ollama mapping. Everything here can be tested at every byte split and
//! benchmarked on its own.

pub mod ndjson;
pub mod ollama;
pub mod openai;
pub mod sse;

/// The default longest line (NDJSON) or event (SSE) taken from an upstream stream: the
/// Ollama Go client's own line limit.
pub const DEFAULT_MAX_LINE: usize = 8 * 1024 * 1024;
