//! Configuration: compiled defaults < TOML file < environment, parsed once into [`Config`].
//!
//! The raw, serde-facing shape ([`RawConfig`]) denies unknown keys at every level so a typo
//! is a start-up error naming the key. [`Config::from_raw`] turns it into validated values
//! (socket addresses, URLs, durations) so nothing downstream re-checks them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::secret::{Scrubber, Secret};

/// Where the gateway reads its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";

/// The default `server.max_blob_bytes`: 256 GiB, room for the largest single-file models
/// people create from (a 405B model at Q4_K_M is about 230 GiB; 70B at Q8_0 about 70 GiB).
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 256 << 30;

/// Prefix of the long-form environment overrides: `GATEWAY__<SECTION>__<KEY>`.
const ENV_PREFIX: &str = "GATEWAY";
const ENV_SEPARATOR: &str = "__";

/// Short environment names that docker compose users set, and the key each one overrides.
/// The long form of the same key wins when both are set.
pub const SHORT_ENV: [(&str, &str); 10] = [
    ("OLLAMA_BASE_URL", "OLLAMA__BASE_URL"),
    ("OPENAI_API_KEY", "UPSTREAMS__OPENAI__API_KEY"),
    ("OPENAI_BASE_URL", "UPSTREAMS__OPENAI__BASE_URL"),
    ("GATEWAY_LISTEN", "SERVER__LISTEN"),
    ("GATEWAY_TLS_CERT", "TLS__CERT"),
    ("GATEWAY_TLS_KEY", "TLS__KEY"),
    ("GATEWAY_LOG_FORMAT", "LOG__FORMAT"),
    ("GATEWAY_KEYS_FILE", "AUTH__KEYS_FILE"),
    ("GATEWAY_ADMIN_LISTEN", "ADMIN__LISTEN"),
    ("GATEWAY_STATE_DIR", "STATE__DIR"),
];

/// Keys whose environment value is a comma-separated list.
const ENV_LIST_KEYS: [&str; 2] = ["allowlist.cidrs", "allowlist.trusted_proxies"];

/// A configuration problem, reported at start-up. No variant has a `source`: each message
/// already says everything, so an error chain prints it once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or parsed, a key is unknown, or a value has the wrong type.
    #[error("{0}")]
    Load(config::ConfigError),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// The bad value came from this environment variable (which wins over the file).
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    /// The bad value came from this file.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        Self::Load(e)
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The configuration as written by the user (file and environment), before validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub tls: RawTls,
    pub ollama: RawOllama,
    /// OpenAI-compatible upstreams by name; a model `<prefix><model>` goes to that upstream.
    pub upstreams: BTreeMap<String, RawOpenAi>,
    /// What the gateway accepts from every upstream, Ollama included.
    pub upstream: RawUpstream,
    pub catalog: RawCatalog,
    pub timeouts: RawTimeouts,
    pub auth: RawAuth,
    pub limits: RawLimits,
    pub allowlist: RawAllowlist,
    pub admin: RawAdmin,
    pub metrics: RawMetrics,
    pub log: RawLog,
    pub budgets: RawBudgets,
    pub state: RawState,
}

impl Default for RawConfig {
    fn default() -> Self {
        let mut upstreams = BTreeMap::new();
        upstreams.insert(
            "openai".to_string(),
            RawOpenAi {
                prefix: "openai/".into(),
                base_url: "https://api.openai.com/v1".into(),
                ..RawOpenAi::default()
            },
        );
        Self {
            server: RawServer::default(),
            tls: RawTls::default(),
            ollama: RawOllama::default(),
            upstreams,
            upstream: RawUpstream::default(),
            catalog: RawCatalog::default(),
            timeouts: RawTimeouts::default(),
            auth: RawAuth::default(),
            limits: RawLimits::default(),
            allowlist: RawAllowlist::default(),
            admin: RawAdmin::default(),
            metrics: RawMetrics::default(),
            log: RawLog::default(),
            budgets: RawBudgets::default(),
            state: RawState::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// HTTPS listener, host:port; port 0 picks a free port (the bound address is logged).
    pub listen: String,
    /// Optional plain-HTTP listener, for use behind a TLS-terminating load balancer only.
    pub plain_listen: String,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Largest blob (`POST /api/blobs/:digest`, a model file) in bytes; streamed, never held.
    pub max_blob_bytes: u64,
    /// Most request headers accepted (the HTTP parser's own hard cap is 96).
    pub max_headers: usize,
    /// Most bytes of request headers (names plus values) accepted.
    pub max_header_bytes: usize,
    /// Most open client connections, all workers together.
    pub max_connections: usize,
    /// Most connections one client address may hold, pending TLS handshakes included;
    /// further ones are closed at accept. 0 = no cap (behind a load balancer, where every
    /// connection comes from the balancer).
    pub max_connections_per_ip: usize,
    /// Most TLS handshakes in progress at once, all workers together; a connection past
    /// it waits (within `tls_handshake_timeout`) for one to finish. 0 = `max_connections`.
    pub max_tls_handshakes: usize,
    /// Time a client has to send the request head (slowloris guard); 408 after it.
    #[serde(with = "humantime_serde")]
    pub request_header_timeout: Duration,
    /// Time a client has to send the whole request body; 408 after it.
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// Time a client has to complete the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Idle time after which a keep-alive connection is closed.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// How often the keys file and the certificate files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            plain_listen: String::new(),
            workers: 0,
            max_body_bytes: 20 * 1024 * 1024,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            max_headers: 64,
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 512,
            max_tls_handshakes: 0,
            request_header_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(75),
            reload_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// The API keys file (TOML, `[[keys]]` entries holding SHA-256 hashes).
    pub keys_file: String,
    /// Failed authentications an IP may make within `failure_window` before it is banned.
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// How long a banned IP gets 429 for every request.
    #[serde(with = "humantime_serde")]
    pub ban: Duration,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            keys_file: "config/keys.toml".into(),
            max_failures: 10,
            failure_window: Duration::from_secs(60),
            ban: Duration::from_secs(300),
        }
    }
}

/// Per-key defaults; each key may override them in the keys file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub requests_per_minute: u32,
    pub burst: u32,
    pub max_in_flight: u32,
    /// The separate bucket of cheap reads (`middleware::rate_limit::is_cheap_read`), which
    /// take no in-flight slot: sustained rate and burst.
    pub reads_per_minute: u32,
    pub read_burst: u32,
    /// Token budgets of a key that names none in the keys file (absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    /// The most output a request may ask for (absent: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// The largest `options.num_ctx` a request may ask for (absent: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<u64>,
    /// The output a budgeted request reserves when it asks for no limit and its key has
    /// no `max_output_tokens`.
    pub default_output_reservation: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            requests_per_minute: 120,
            burst: 20,
            max_in_flight: 4,
            // A UI polling tags, ps and version every few seconds, with several tabs open.
            reads_per_minute: 600,
            read_burst: 60,
            tokens_per_minute: None,
            tokens_per_day: None,
            tokens_per_month: None,
            max_output_tokens: None,
            max_context: None,
            default_output_reservation: 1024,
        }
    }
}

/// How token budgets count time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBudgets {
    /// The time zone whose calendar days and months the day and month budgets follow.
    pub timezone: String,
}

impl Default for RawBudgets {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
        }
    }
}

/// Where the gateway keeps what outlives a restart (day and month token usage).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    /// The directory of the usage store (`usage.redb`); empty keeps usage in memory only.
    pub dir: String,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            dir: "state".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAllowlist {
    /// Serve every address; required to run with an empty `cidrs` list.
    pub allow_all: bool,
    /// Client networks allowed in (IPv4 and IPv6 CIDRs).
    pub cidrs: Vec<String>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<String>,
}

impl Default for RawAllowlist {
    fn default() -> Self {
        Self {
            allow_all: false,
            cidrs: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .map(String::from)
            .to_vec(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain; empty means a self-signed certificate in `self_signed_dir`.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Where the self-signed certificate is generated and reused.
    pub self_signed_dir: String,
    /// `Strict-Transport-Security` value sent on every HTTPS answer; empty sends none.
    pub hsts: String,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            cert: String::new(),
            key: String::new(),
            self_signed_dir: "certs".into(),
            hsts: "max-age=31536000".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOllama {
    /// Base URL of Ollama; each endpoint's path (`/api/chat`, ...) is appended.
    pub base_url: String,
}

impl Default for RawOllama {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:11434".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOpenAi {
    /// Model prefix that selects this upstream; empty means `<name>/`.
    pub prefix: String,
    /// Base URL as the OpenAI SDKs take it; `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer` to this upstream only.
    pub api_key: Secret,
    /// Whether the upstream needs `api_key` (default true): without one its requests get
    /// 503 and it is not contacted. `false` (a local vLLM) sends none when it is empty.
    pub requires_api_key: Option<bool>,
    /// Ask for usage in streams (`stream_options.include_usage`); some servers reject it.
    pub stream_usage: Option<bool>,
    /// Which parameter carries `num_predict`: `max_tokens` or `max_completion_tokens`.
    pub max_tokens_param: Option<String>,
    /// Set to false to switch the upstream off without deleting it.
    pub enabled: Option<bool>,
    /// The models it serves, for servers that cannot list them: when set, `/api/tags` shows
    /// these (under the prefix) instead of asking `GET {base_url}/models`.
    pub models: Option<Vec<String>>,
    /// What its models can do, as `/api/tags` and `/api/show` report it (Ollama's names:
    /// `completion`, `tools`, `vision`, `thinking`, `embedding`).
    pub capabilities: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCatalog {
    /// How long an OpenAI-compatible upstream's model list (`GET {base_url}/models`) is
    /// reused; Ollama's own list is asked for every time.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Longest wait for a model list, `show`, `ps` or `version` from an upstream.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RawCatalog {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    /// Longest line (Ollama NDJSON) or event (SSE) of a streamed answer; a longer one ends
    /// the stream with an error line and drops the upstream connection.
    pub max_stream_line_bytes: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            max_stream_line_bytes: crate::translate::DEFAULT_MAX_LINE,
        }
    }
}

/// The smallest `upstream.max_stream_line_bytes`: below it, ordinary lines would not fit.
const MIN_STREAM_LINE_BYTES: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    /// TCP (and TLS) connect to an upstream.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From sending the request to the upstream's response headers (covers a cold model load).
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// Longest silence between two chunks of a response body.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Whole exchange with the upstream, first byte to last.
    #[serde(with = "humantime_serde")]
    pub total: Duration,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(600),
            idle: Duration::from_secs(300),
            total: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Plain-HTTP listener for /metrics, /healthz and /readyz; empty means none.
    pub listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Also serve /metrics on the public listener, behind an API key.
    pub public: bool,
    /// Distinct model names kept as label values; further models count as `other`.
    pub max_models: usize,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            public: false,
            max_models: 50,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// By hand, so that a wrong value is answered with the allowed ones (serde's derive says
/// "enum LogFormat does not have variant constructor xml").
impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(serde::de::Error::custom(format!(
                "{value:?} is not a log format: use \"text\" or \"json\""
            ))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A tracing filter (`info`, `ollama_gateway=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub ollama: OllamaConfig,
    /// Sorted by prefix length, longest first, so the most specific prefix wins.
    pub upstreams: Vec<OpenAiConfig>,
    pub upstream: RawUpstream,
    pub catalog: RawCatalog,
    pub timeouts: Timeouts,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub budgets: BudgetConfig,
    pub allowlist: AllowlistConfig,
    /// The admin listener (metrics, health), if any.
    pub admin_listen: Option<SocketAddr>,
    pub metrics: RawMetrics,
    pub log: RawLog,
    /// `Strict-Transport-Security` for HTTPS answers, if any.
    pub hsts: Option<actix_web::http::header::HeaderValue>,
    /// Removes every upstream's `api_key` (enabled or not) from upstream text.
    pub scrubber: Scrubber,
    raw: RawConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub plain_listen: Option<SocketAddr>,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub max_blob_bytes: u64,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// 0 = no cap.
    pub max_connections_per_ip: usize,
    /// Resolved: never 0.
    pub max_tls_handshakes: usize,
    pub request_header_timeout: Duration,
    pub request_body_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub keep_alive: Duration,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub keys_file: PathBuf,
    pub max_failures: u32,
    pub failure_window: Duration,
    pub ban: Duration,
}

/// A token bucket and an in-flight cap, and the bucket of cheap reads (all values > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    pub requests_per_minute: u32,
    pub burst: u32,
    pub max_in_flight: u32,
    pub reads_per_minute: u32,
    pub read_burst: u32,
    /// Token budgets and caps (each optional).
    pub tokens: TokenLimits,
}

/// An identity's token budgets and caps, each optional (absent: unlimited, no cap); every
/// value given is greater than 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TokenLimits {
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub tokens_per_month: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_context: Option<u64>,
}

impl TokenLimits {
    /// Each field named as the keys file names it, with its value.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("tokens_per_minute", self.tokens_per_minute),
            ("tokens_per_day", self.tokens_per_day),
            ("tokens_per_month", self.tokens_per_month),
            ("max_output_tokens", self.max_output_tokens),
            ("max_context", self.max_context),
        ]
    }

    /// The budgets per minute, per day and per month, in the order of `budget::Window::ALL`.
    pub fn windows(&self) -> [Option<u64>; 3] {
        [
            self.tokens_per_minute,
            self.tokens_per_day,
            self.tokens_per_month,
        ]
    }

    /// Refuses a 0 (write nothing for unlimited); `within` names where the values are.
    pub fn check(&self, within: &str) -> Result<(), String> {
        match self.fields().iter().find(|(_, v)| *v == Some(0)) {
            Some((name, _)) => Err(format!(
                "{within}{name} must be greater than 0 (leave it out for no limit)"
            )),
            None => Ok(()),
        }
    }
}

/// The token budgets' settings.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// Whose days and months the calendar windows are.
    pub calendar: crate::budget::clock::Calendar,
    pub default_output_reservation: u64,
    /// The usage store's directory; `None` keeps usage in memory.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AllowlistConfig {
    /// `None` means every address is allowed (`allow_all`).
    pub cidrs: Option<Vec<ipnet::IpNet>>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub enum TlsConfig {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct OllamaConfig {
    /// `base_url` without a trailing `/`: `{base}/api/...` is every endpoint.
    pub base: String,
    /// `{base_url}/api/chat`, parsed once.
    pub chat_uri: awc::http::Uri,
    /// `{base_url}/api/generate`, `/api/embed` and `/api/embeddings`, parsed once.
    pub generate_uri: awc::http::Uri,
    pub embed_uri: awc::http::Uri,
    pub embeddings_uri: awc::http::Uri,
    /// `{base_url}/v1/messages`, Ollama's Anthropic Messages API, parsed once.
    pub messages_uri: awc::http::Uri,
    /// `{base_url}/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`: Ollama's
    /// own OpenAI-compatible layer, where OpenAI's API is relayed.
    pub v1_chat_uri: awc::http::Uri,
    pub v1_completions_uri: awc::http::Uri,
    pub v1_embeddings_uri: awc::http::Uri,
    /// `{base_url}/api/version`, the readiness probe.
    pub version_url: String,
    /// The `Host` header of every request to it, made once: see [`host_header`].
    pub host: HeaderValue,
}

/// Which OpenAI parameter carries Ollama's `num_predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensParam {
    MaxTokens,
    MaxCompletionTokens,
}

impl MaxTokensParam {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub name: String,
    /// `name`, interned once for metric labels.
    pub label: std::sync::Arc<str>,
    pub prefix: String,
    /// `{base_url}/chat/completions`, parsed once.
    pub chat_uri: awc::http::Uri,
    /// The `Host` header of every request to it, made once: see [`host_header`].
    pub host: HeaderValue,
    /// `{base_url}/embeddings`, parsed once.
    pub embeddings_uri: awc::http::Uri,
    /// `{base_url}/completions` (legacy completions), parsed once.
    pub completions_uri: awc::http::Uri,
    pub api_key: Secret,
    /// An empty `api_key` means requests get 503 instead of going out without credentials.
    pub requires_api_key: bool,
    pub stream_usage: bool,
    pub max_tokens_param: MaxTokensParam,
    /// `{base_url}/models`, where its model list is asked for.
    pub models_uri: awc::http::Uri,
    /// Its models as configured (`models`), instead of asking `models_uri`.
    pub models: Option<Vec<String>>,
    /// What its models can do (`capabilities`), in Ollama's words.
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl Config {
    /// Loads defaults, then `file` (which must exist when given), then `env`.
    ///
    /// `env` is passed in rather than read here so tests never touch the process environment.
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let defaults = config::Config::try_from(&RawConfig::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a file", path.display()),
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let mut env_source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .list_separator(",")
            .source(Some(expand_short_env(env)));
        for key in ENV_LIST_KEYS {
            env_source = env_source.with_list_parse_key(key);
        }
        let loaded = builder
            .add_source(env_source)
            .build()
            .and_then(config::Config::try_deserialize::<RawConfig>);
        let config = loaded
            .map_err(ConfigError::from)
            .and_then(Self::from_raw)
            .map_err(|e| locate(e, file, env))?;
        if let Some(filter) = env.get("RUST_LOG").filter(|v| !v.trim().is_empty()) {
            check_filter(filter).map_err(|reason| ConfigError::Env {
                var: "RUST_LOG".into(),
                reason: format!("{filter:?} is not a tracing filter: {reason}"),
            })?;
        }
        Ok(config)
    }

    /// Validates a raw configuration.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let server = ServerConfig {
            listen: parse_addr("server.listen", &raw.server.listen)?,
            plain_listen: match raw.server.plain_listen.trim() {
                "" => None,
                addr => Some(parse_addr("server.plain_listen", addr)?),
            },
            workers: raw.server.workers,
            max_body_bytes: positive("server.max_body_bytes", raw.server.max_body_bytes)?,
            max_blob_bytes: positive("server.max_blob_bytes", raw.server.max_blob_bytes)?,
            max_headers: match raw.server.max_headers {
                n @ 1..=96 => n,
                _ => return Err(invalid("server.max_headers", "must be between 1 and 96")),
            },
            max_header_bytes: positive("server.max_header_bytes", raw.server.max_header_bytes)?,
            max_connections: positive("server.max_connections", raw.server.max_connections)?,
            max_connections_per_ip: raw.server.max_connections_per_ip,
            max_tls_handshakes: match raw.server.max_tls_handshakes {
                0 => raw.server.max_connections,
                n => n,
            },
            request_header_timeout: nonzero(
                "server.request_header_timeout",
                raw.server.request_header_timeout,
            )?,
            request_body_timeout: nonzero(
                "server.request_body_timeout",
                raw.server.request_body_timeout,
            )?,
            tls_handshake_timeout: nonzero(
                "server.tls_handshake_timeout",
                raw.server.tls_handshake_timeout,
            )?,
            keep_alive: raw.server.keep_alive,
            reload_interval: nonzero("server.reload_interval", raw.server.reload_interval)?,
        };
        let tls = match (raw.tls.cert.trim(), raw.tls.key.trim()) {
            ("", "") => TlsConfig::SelfSigned {
                dir: PathBuf::from(&raw.tls.self_signed_dir),
            },
            ("", _) | (_, "") => {
                return Err(invalid(
                    "tls.cert",
                    "tls.cert and tls.key must be set together (or both left empty for a self-signed certificate)",
                ))
            }
            (cert, key) => TlsConfig::Files {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            },
        };
        let ollama_base = parse_base_url("ollama.base_url", &raw.ollama.base_url)?;
        let chat_uri = parse_uri("ollama.base_url", &format!("{ollama_base}/api/chat"))?;
        let ollama = OllamaConfig {
            base: ollama_base.to_string(),
            host: host_header("ollama.base_url", &chat_uri)?,
            chat_uri,
            generate_uri: parse_uri("ollama.base_url", &format!("{ollama_base}/api/generate"))?,
            embed_uri: parse_uri("ollama.base_url", &format!("{ollama_base}/api/embed"))?,
            embeddings_uri: parse_uri("ollama.base_url", &format!("{ollama_base}/api/embeddings"))?,
            messages_uri: parse_uri("ollama.base_url", &format!("{ollama_base}/v1/messages"))?,
            v1_chat_uri: parse_uri(
                "ollama.base_url",
                &format!("{ollama_base}/v1/chat/completions"),
            )?,
            v1_completions_uri: parse_uri(
                "ollama.base_url",
                &format!("{ollama_base}/v1/completions"),
            )?,
            v1_embeddings_uri: parse_uri(
                "ollama.base_url",
                &format!("{ollama_base}/v1/embeddings"),
            )?,
            version_url: format!("{ollama_base}/api/version"),
        };
        let mut upstreams = Vec::new();
        for (name, up) in &raw.upstreams {
            if up.enabled == Some(false) {
                continue;
            }
            upstreams.push(validate_openai(name, up)?);
        }
        upstreams.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.name.cmp(&b.name))
        });
        for pair in upstreams.windows(2) {
            if pair[0].prefix == pair[1].prefix {
                return Err(invalid(
                    format!("upstreams.{}.prefix", pair[1].name),
                    format!(
                        "prefix {:?} is also used by upstream {}",
                        pair[1].prefix, pair[0].name
                    ),
                ));
            }
        }
        let upstream = raw.upstream;
        if upstream.max_stream_line_bytes < MIN_STREAM_LINE_BYTES {
            return Err(invalid(
                "upstream.max_stream_line_bytes",
                format!("must be at least {MIN_STREAM_LINE_BYTES}"),
            ));
        }
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            connect: nonzero("timeouts.connect", t.connect)?,
            first_byte: nonzero("timeouts.first_byte", t.first_byte)?,
            idle: nonzero("timeouts.idle", t.idle)?,
            total: nonzero("timeouts.total", t.total)?,
        };
        let auth = AuthConfig {
            keys_file: match raw.auth.keys_file.trim() {
                "" => return Err(invalid("auth.keys_file", "is required")),
                path => PathBuf::from(path),
            },
            max_failures: positive("auth.max_failures", raw.auth.max_failures)?,
            failure_window: nonzero("auth.failure_window", raw.auth.failure_window)?,
            ban: nonzero("auth.ban", raw.auth.ban)?,
        };
        let limits = Limits {
            requests_per_minute: positive(
                "limits.requests_per_minute",
                raw.limits.requests_per_minute,
            )?,
            burst: positive("limits.burst", raw.limits.burst)?,
            max_in_flight: positive("limits.max_in_flight", raw.limits.max_in_flight)?,
            reads_per_minute: positive("limits.reads_per_minute", raw.limits.reads_per_minute)?,
            read_burst: positive("limits.read_burst", raw.limits.read_burst)?,
            tokens: TokenLimits {
                tokens_per_minute: raw.limits.tokens_per_minute,
                tokens_per_day: raw.limits.tokens_per_day,
                tokens_per_month: raw.limits.tokens_per_month,
                max_output_tokens: raw.limits.max_output_tokens,
                max_context: raw.limits.max_context,
            },
        };
        limits.tokens.check("limits.").map_err(|reason| {
            let (key, why) = reason.split_once(' ').unwrap_or((&reason, ""));
            invalid(key, why.to_string())
        })?;
        let budgets = BudgetConfig {
            calendar: crate::budget::clock::Calendar::named(&raw.budgets.timezone)
                .map_err(|reason| invalid("budgets.timezone", reason))?,
            default_output_reservation: positive(
                "limits.default_output_reservation",
                raw.limits.default_output_reservation,
            )?,
            state_dir: match raw.state.dir.trim() {
                "" => None,
                dir => Some(PathBuf::from(dir)),
            },
        };
        let allowlist = AllowlistConfig {
            cidrs: match (raw.allowlist.allow_all, raw.allowlist.cidrs.is_empty()) {
                (true, _) => None,
                (false, true) => {
                    return Err(invalid(
                        "allowlist.cidrs",
                        "is empty, which would refuse everyone; list the client networks, or set allowlist.allow_all = true to serve every address",
                    ))
                }
                (false, false) => Some(parse_nets("allowlist.cidrs", &raw.allowlist.cidrs)?),
            },
            trusted_proxies: parse_nets("allowlist.trusted_proxies", &raw.allowlist.trusted_proxies)?,
        };
        check_filter(&raw.log.level).map_err(|reason| {
            invalid(
                "log.level",
                format!("{:?} is not a tracing filter: {reason}", raw.log.level),
            )
        })?;
        let admin_listen = match raw.admin.listen.trim() {
            "" => None,
            addr => Some(parse_addr("admin.listen", addr)?),
        };
        let hsts = match raw.tls.hsts.trim() {
            "" => None,
            value => Some(
                actix_web::http::header::HeaderValue::from_str(value).map_err(|_| {
                    invalid(
                        "tls.hsts",
                        "must be a valid header value, e.g. max-age=31536000",
                    )
                })?,
            ),
        };
        Ok(Self {
            server,
            tls,
            ollama,
            upstreams,
            upstream,
            catalog: RawCatalog {
                cache_ttl: raw.catalog.cache_ttl,
                timeout: nonzero("catalog.timeout", raw.catalog.timeout)?,
            },
            timeouts,
            auth,
            limits,
            budgets,
            allowlist,
            admin_listen,
            metrics: raw.metrics.clone(),
            log: raw.log.clone(),
            hsts,
            scrubber: Scrubber::new(raw.upstreams.values().map(|u| &u.api_key)),
            raw,
        })
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(&self.raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn positive<T: PartialEq + Default>(key: &str, value: T) -> Result<T, ConfigError> {
    if value == T::default() {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(value)
}

fn nonzero(key: &str, value: Duration) -> Result<Duration, ConfigError> {
    positive(key, value)
}

/// Parses CIDRs; a bare address means a single host (/32 or /128).
fn parse_nets(key: &str, values: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    values
        .iter()
        .map(|v| {
            let v = v.trim();
            v.parse::<ipnet::IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    invalid(
                        key,
                        format!("{v:?} is not an IP network like 10.0.0.0/8 or 2001:db8::/32"),
                    )
                })
        })
        .collect()
}

/// Checks a tracing filter (`log.level`, `RUST_LOG`) the way the subscriber parses it.
fn check_filter(directives: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(directives)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The environment variable that set `key` (`server.listen`), if one did: the long form
/// (`GATEWAY__SERVER__LISTEN`), else its short name (`GATEWAY_LISTEN`).
fn env_var_for(key: &str, env: &HashMap<String, String>) -> Option<String> {
    let key = key.split('[').next().unwrap_or(key);
    let suffix = key.replace('.', ENV_SEPARATOR).to_ascii_uppercase();
    let long = format!("{ENV_PREFIX}{ENV_SEPARATOR}{suffix}");
    if let Some(var) = env.keys().find(|k| k.eq_ignore_ascii_case(&long)) {
        return Some(var.clone());
    }
    SHORT_ENV
        .iter()
        .find(|(short, long)| *long == suffix && env.contains_key(*short))
        .map(|(short, _)| short.to_string())
}

/// The field an "unknown field `idel`, expected one of ..." message is about.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
}

/// The key (dotted) an error is about when it says, and whether it already names where
/// the value came from.
fn error_key(e: &ConfigError) -> (Option<String>, bool) {
    use config::ConfigError as E;
    match e {
        ConfigError::Invalid { key, .. } => (Some(key.clone()), false),
        ConfigError::Load(E::Type { key, origin, .. }) => (key.clone(), origin.is_some()),
        ConfigError::Load(E::At { error, key, origin }) => {
            // "unknown field `idel`, ... for key `timeouts`": what was set is `timeouts.idel`.
            let message = error.to_string();
            let key = match (key, unknown_field(&message)) {
                (Some(key), Some(field)) => Some(format!("{key}.{field}")),
                (key, _) => key.clone(),
            };
            (key, origin.is_some())
        }
        ConfigError::Load(E::Message(message)) => (unknown_field(message).map(String::from), false),
        ConfigError::Load(_) | ConfigError::Env { .. } | ConfigError::File { .. } => (None, true),
    }
}

/// Says where a bad value came from: the environment variable that set the key the error
/// is about (the environment wins over the file), else the file, unless the error says.
fn locate(e: ConfigError, file: Option<&Path>, env: &HashMap<String, String>) -> ConfigError {
    let (key, located) = error_key(&e);
    if let Some(var) = key.as_deref().and_then(|key| env_var_for(key, env)) {
        return ConfigError::Env {
            var,
            reason: e.to_string(),
        };
    }
    match file {
        Some(path) if !located => ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        _ => e,
    }
}

/// Rewrites the short names (`OLLAMA_BASE_URL`, ...) into the long form, which wins if both exist.
fn expand_short_env(env: &HashMap<String, String>) -> config::Map<String, String> {
    let mut out: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("GATEWAY__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (short, long) in SHORT_ENV {
        if let Some(value) = env.get(short) {
            out.entry(format!("{ENV_PREFIX}{ENV_SEPARATOR}{long}"))
                .or_insert_with(|| value.clone());
        }
    }
    out
}

/// The environment variable that sets upstream `name`'s `api_key`: its short name when it
/// has one (`OPENAI_API_KEY`), else the long form.
pub fn api_key_env(name: &str) -> String {
    let long = format!("UPSTREAMS__{}__API_KEY", name.to_ascii_uppercase());
    SHORT_ENV.iter().find(|(_, l)| *l == long).map_or_else(
        || format!("{ENV_PREFIX}{ENV_SEPARATOR}{long}"),
        |(short, _)| short.to_string(),
    )
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not a host:port socket address (for example 0.0.0.0:8443)"),
        )
    })
}

/// Checks an http(s) base URL and returns it without a trailing slash.
fn parse_base_url(key: &str, value: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim().trim_end_matches('/');
    let uri: awc::http::Uri = trimmed
        .parse()
        .map_err(|e| invalid(key, format!("{value:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(invalid(
                key,
                format!("{value:?} must start with http:// or https://"),
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("{value:?} has no host")));
    }
    if uri.query().is_some() {
        return Err(invalid(
            key,
            format!("{value:?} must not have a query string"),
        ));
    }
    Ok(trimmed.to_string())
}

/// The `Host` header awc would write for `uri`: its host, and its port unless that is
/// none, 80 or 443. Made once per upstream and set on each request, so that awc does not
/// format it again for every one (a `write!` into a fresh buffer, ~900 instructions).
fn host_header(key: &str, uri: &awc::http::Uri) -> Result<HeaderValue, ConfigError> {
    let host = uri.host().unwrap_or_default();
    let text = match uri.port_u16() {
        None | Some(80) | Some(443) => host.to_string(),
        Some(port) => format!("{host}:{port}"),
    };
    HeaderValue::from_str(&text)
        .map_err(|_| invalid(key, format!("{host:?} cannot be sent as a Host header")))
}

fn parse_uri(key: &str, url: &str) -> Result<awc::http::Uri, ConfigError> {
    url.parse()
        .map_err(|e| invalid(key, format!("{url:?} is not a URL: {e}")))
}

fn validate_openai(name: &str, up: &RawOpenAi) -> Result<OpenAiConfig, ConfigError> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            format!("upstreams.{name}"),
            "upstream names may use only letters, digits, '-' and '_'",
        ));
    }
    let prefix = match up.prefix.trim() {
        "" => format!("{name}/"),
        p => p.to_string(),
    };
    if up.base_url.trim().is_empty() {
        return Err(invalid(key("base_url"), "is required"));
    }
    let base = parse_base_url(&key("base_url"), &up.base_url)?;
    let max_tokens_param = match up.max_tokens_param.as_deref().unwrap_or("max_tokens") {
        "max_tokens" => MaxTokensParam::MaxTokens,
        "max_completion_tokens" => MaxTokensParam::MaxCompletionTokens,
        other => {
            return Err(invalid(
                key("max_tokens_param"),
                format!("{other:?} is neither \"max_tokens\" nor \"max_completion_tokens\""),
            ))
        }
    };
    let chat_uri = parse_uri(&key("base_url"), &format!("{base}/chat/completions"))?;
    Ok(OpenAiConfig {
        name: name.to_string(),
        label: name.into(),
        prefix,
        host: host_header(&key("base_url"), &chat_uri)?,
        chat_uri,
        embeddings_uri: parse_uri(&key("base_url"), &format!("{base}/embeddings"))?,
        completions_uri: parse_uri(&key("base_url"), &format!("{base}/completions"))?,
        api_key: up.api_key.clone(),
        requires_api_key: up.requires_api_key.unwrap_or(true),
        stream_usage: up.stream_usage.unwrap_or(true),
        max_tokens_param,
        models_uri: parse_uri(&key("base_url"), &format!("{base}/models"))?,
        models: up.models.clone(),
        capabilities: up
            .capabilities
            .clone()
            .unwrap_or_else(|| vec!["completion".into(), "tools".into()]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(content: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    /// A tiny self-cleaning temp dir, enough for these tests.
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "ogw-config-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8443");
        assert!(c.server.plain_listen.is_none());
        assert_eq!(c.ollama.chat_uri, "http://127.0.0.1:11434/api/chat");
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].prefix, "openai/");
        assert_eq!(
            c.upstreams[0].chat_uri,
            "https://api.openai.com/v1/chat/completions"
        );
        assert!(matches!(c.tls, TlsConfig::SelfSigned { .. }));
    }

    #[test]
    fn host_header_is_what_awc_would_write() {
        let host = |url: &str| {
            let uri: awc::http::Uri = url.parse().unwrap();
            host_header("k", &uri).unwrap()
        };
        // The port only when it is not the scheme's usual one (awc's rule, 80 or 443).
        assert_eq!(host("http://ollama:11434/api/chat"), "ollama:11434");
        assert_eq!(host("http://ollama/api/chat"), "ollama");
        assert_eq!(host("http://ollama:80/api/chat"), "ollama");
        assert_eq!(host("https://api.openai.com/v1/models"), "api.openai.com");
        assert_eq!(
            host("https://api.openai.com:443/v1/models"),
            "api.openai.com"
        );
        assert_eq!(host("https://gpu-1.lan:8443/v1"), "gpu-1.lan:8443");
        assert_eq!(host("http://[::1]:11434/api/chat"), "[::1]:11434");
        assert_eq!(host("http://user:pw@ollama:11434/api/chat"), "ollama:11434");
        let c = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(c.ollama.host, "127.0.0.1:11434");
        assert_eq!(c.upstreams[0].host, "api.openai.com");
    }

    #[test]
    fn committed_config_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        Config::load(Some(&path), &HashMap::new()).unwrap();
    }

    #[test]
    fn file_then_env_override_defaults() {
        let (_d, path) = write(
            "[server]\nlisten = \"127.0.0.1:9000\"\n[upstreams.groq]\nbase_url = \"http://127.0.0.1:1/openai/v1/\"\n",
        );
        let c = Config::load(
            Some(&path),
            &env(&[
                ("GATEWAY__SERVER__LISTEN", "127.0.0.1:9100"),
                ("GATEWAY__TIMEOUTS__IDLE", "7s"),
                ("OLLAMA_BASE_URL", "http://ollama:11434/"),
                ("OPENAI_API_KEY", "sk-test-1234"),
                ("OPENAI_BASE_URL", "http://127.0.0.1:2/v1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9100);
        assert_eq!(c.timeouts.idle, Duration::from_secs(7));
        assert_eq!(c.ollama.chat_uri, "http://ollama:11434/api/chat");
        let groq = c.upstreams.iter().find(|u| u.name == "groq").unwrap();
        assert_eq!(groq.prefix, "groq/");
        assert_eq!(
            groq.chat_uri,
            "http://127.0.0.1:1/openai/v1/chat/completions"
        );
        assert_eq!(
            groq.embeddings_uri,
            "http://127.0.0.1:1/openai/v1/embeddings"
        );
        assert_eq!(c.ollama.generate_uri, "http://ollama:11434/api/generate");
        assert_eq!(c.ollama.embed_uri, "http://ollama:11434/api/embed");
        assert_eq!(c.ollama.messages_uri, "http://ollama:11434/v1/messages");
        assert_eq!(
            c.ollama.embeddings_uri,
            "http://ollama:11434/api/embeddings"
        );
        assert_eq!(
            c.ollama.v1_chat_uri,
            "http://ollama:11434/v1/chat/completions"
        );
        assert_eq!(
            c.ollama.v1_completions_uri,
            "http://ollama:11434/v1/completions"
        );
        assert_eq!(
            c.ollama.v1_embeddings_uri,
            "http://ollama:11434/v1/embeddings"
        );
        assert_eq!(
            groq.completions_uri,
            "http://127.0.0.1:1/openai/v1/completions"
        );
        let openai = c.upstreams.iter().find(|u| u.name == "openai").unwrap();
        assert_eq!(openai.api_key.expose(), "sk-test-1234");
        assert_eq!(openai.chat_uri, "http://127.0.0.1:2/v1/chat/completions");
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("sk-test-1234"), "{printed}");
        assert!(printed.contains("*****"));
    }

    #[test]
    fn long_env_name_beats_short_one() {
        let c = Config::load(
            None,
            &env(&[
                ("GATEWAY_LISTEN", "127.0.0.1:1"),
                ("GATEWAY__SERVER__LISTEN", "127.0.0.1:2"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 2);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let (_d, path) = write("[server]\nlistn = \"127.0.0.1:9000\"\n");
        let err = Config::load(Some(&path), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
        let err = Config::load(None, &env(&[("GATEWAY__TIMEOUTS__IDEL", "1s")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("idel"), "{err}");
        let (_d, path) = write("[nonsense]\na = 1\n");
        let err = Config::load(Some(&path), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonsense"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        for (k, v, needle) in [
            ("GATEWAY__SERVER__LISTEN", "nope", "server.listen"),
            ("GATEWAY__OLLAMA__BASE_URL", "ftp://x", "ollama.base_url"),
            ("GATEWAY__TIMEOUTS__CONNECT", "0s", "timeouts.connect"),
            ("GATEWAY__TLS__CERT", "/x.pem", "tls.cert"),
            (
                "GATEWAY__UPSTREAMS__OPENAI__MAX_TOKENS_PARAM",
                "n",
                "max_tokens_param",
            ),
        ] {
            let err = Config::load(None, &env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(needle), "{k}={v}: {err}");
        }
    }

    #[test]
    fn errors_name_the_variable_or_the_file_the_value_came_from() {
        let (_d, path) = write("[server]\nlisten = \"127.0.0.1:1\"\n");
        for (k, v, var) in [
            ("GATEWAY_LISTEN", "nope", "GATEWAY_LISTEN"),
            ("GATEWAY__SERVER__LISTEN", "nope", "GATEWAY__SERVER__LISTEN"),
            (
                "GATEWAY__SERVER__WORKERS",
                "many",
                "GATEWAY__SERVER__WORKERS",
            ),
            ("GATEWAY__TIMEOUTS__IDLE", "soon", "GATEWAY__TIMEOUTS__IDLE"),
            ("GATEWAY__TIMEOUTS__IDEL", "1s", "GATEWAY__TIMEOUTS__IDEL"),
            ("GATEWAY__NOPE", "1", "GATEWAY__NOPE"),
            ("GATEWAY_TLS_CERT", "/x.pem", "GATEWAY_TLS_CERT"),
        ] {
            let err = Config::load(Some(&path), &env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("environment variable {var}: ")),
                "{k}={v}: {err}"
            );
            assert!(!err.contains("gateway.toml"), "{k}={v}: {err}");
        }
        for text in [
            "[server]\nlisten = \"nope\"\n",
            "[server]\nlistn = 1\n",
            "[log]\nformat = \"xml\"\n",
        ] {
            let (_d, path) = write(text);
            let err = Config::load(Some(&path), &HashMap::new())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&*path.to_string_lossy()), "{text}: {err}");
            assert!(!err.contains("environment"), "{text}: {err}");
        }
    }

    #[test]
    fn log_format_and_filters_are_checked_naming_the_allowed_values() {
        let err = Config::load(None, &env(&[("GATEWAY_LOG_FORMAT", "xml")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GATEWAY_LOG_FORMAT") && err.contains("\"text\" or \"json\""),
            "{err}"
        );
        assert!(!err.contains("variant"), "{err}");
        for (k, v, needle) in [
            ("RUST_LOG", "info,foo=loud", "environment variable RUST_LOG"),
            ("RUST_LOG", "[", "environment variable RUST_LOG"),
            ("GATEWAY__LOG__LEVEL", "info,foo=loud", "log.level"),
        ] {
            let err = Config::load(None, &env(&[(k, v)])).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("tracing filter"),
                "{k}={v}: {err}"
            );
        }
        for ok in ["debug", "ollama_gateway=debug,info", "  "] {
            Config::load(None, &env(&[("RUST_LOG", ok)])).unwrap();
        }
    }

    #[test]
    fn allowlist_lists_from_env_and_empty_list_needs_allow_all() {
        let c = Config::load(
            None,
            &env(&[
                (
                    "GATEWAY__ALLOWLIST__CIDRS",
                    "10.0.0.0/8, 2001:db8::/32,192.0.2.1",
                ),
                ("GATEWAY__ALLOWLIST__TRUSTED_PROXIES", "172.18.0.2"),
                ("GATEWAY_KEYS_FILE", "/etc/gateway/keys.toml"),
            ]),
        )
        .unwrap();
        let cidrs: Vec<String> = c
            .allowlist
            .cidrs
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"]);
        assert_eq!(c.allowlist.trusted_proxies[0].to_string(), "172.18.0.2/32");
        assert_eq!(c.auth.keys_file, PathBuf::from("/etc/gateway/keys.toml"));

        let mut raw = RawConfig::default();
        raw.allowlist.cidrs.clear();
        let err = Config::from_raw(raw.clone()).unwrap_err().to_string();
        assert!(
            err.contains("allowlist.cidrs") && err.contains("allow_all"),
            "{err}"
        );
        raw.allowlist.allow_all = true;
        assert!(Config::from_raw(raw.clone())
            .unwrap()
            .allowlist
            .cidrs
            .is_none());
        raw.allowlist.cidrs = vec!["10.0.0.0/33".into()];
        raw.allowlist.allow_all = false;
        assert!(Config::from_raw(raw)
            .unwrap_err()
            .to_string()
            .contains("10.0.0.0/33"));
    }

    #[test]
    fn edge_limits_are_validated() {
        for (k, v, needle) in [
            ("GATEWAY__LIMITS__BURST", "0", "limits.burst"),
            ("GATEWAY__LIMITS__READ_BURST", "0", "limits.read_burst"),
            (
                "GATEWAY__LIMITS__READS_PER_MINUTE",
                "0",
                "limits.reads_per_minute",
            ),
            (
                "GATEWAY__UPSTREAM__MAX_STREAM_LINE_BYTES",
                "1023",
                "upstream.max_stream_line_bytes",
            ),
            ("GATEWAY__SERVER__MAX_HEADERS", "97", "server.max_headers"),
            ("GATEWAY__AUTH__MAX_FAILURES", "0", "auth.max_failures"),
            (
                "GATEWAY__SERVER__REQUEST_HEADER_TIMEOUT",
                "0s",
                "request_header_timeout",
            ),
        ] {
            let err = Config::load(None, &env(&[(k, v)])).unwrap_err().to_string();
            assert!(err.contains(needle), "{k}={v}: {err}");
        }
    }

    #[test]
    fn the_api_key_variable_is_named_per_upstream() {
        assert_eq!(api_key_env("openai"), "OPENAI_API_KEY");
        assert_eq!(api_key_env("groq"), "GATEWAY__UPSTREAMS__GROQ__API_KEY");
        let c = Config::load(
            None,
            &env(&[
                (
                    "GATEWAY__UPSTREAMS__VLLM__BASE_URL",
                    "http://127.0.0.1:1/v1",
                ),
                ("GATEWAY__UPSTREAMS__VLLM__REQUIRES_API_KEY", "false"),
            ]),
        )
        .unwrap();
        let by_name = |n: &str| c.upstreams.iter().find(|u| u.name == n).unwrap();
        assert!(!by_name("vllm").requires_api_key);
        assert!(by_name("openai").requires_api_key, "the default");
    }

    #[test]
    fn longest_prefix_first_and_duplicates_rejected() {
        let mut raw = RawConfig::default();
        raw.upstreams.insert(
            "deep".into(),
            RawOpenAi {
                prefix: "openai/deep/".into(),
                base_url: "http://127.0.0.1:1".into(),
                ..RawOpenAi::default()
            },
        );
        let c = Config::from_raw(raw.clone()).unwrap();
        assert_eq!(c.upstreams[0].name, "deep");
        raw.upstreams.get_mut("deep").unwrap().prefix = "openai/".into();
        assert!(Config::from_raw(raw)
            .unwrap_err()
            .to_string()
            .contains("prefix"));
    }
}
