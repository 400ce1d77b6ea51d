//! Prometheus metrics and the per-request record that feeds them and the request log.
//!
//! Label values come only from configuration (upstream names, key ids, teams) or from a
//! capped set (models: the first `metrics.max_models` names that an upstream answered
//! successfully; the rest are `other`). Handles are cached per worker, keyed by the
//! interned label strings' addresses, so the request path never hashes label text and no
//! chunk of a stream touches a label at all.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::budget::{Hold, Ledger};
use crate::error::{GatewayError, UpstreamFault};
use crate::keys::ApiKey;

/// Maps on the request path: foldhash instead of SipHash (their keys are addresses or
/// label text the gateway admitted; a lookup cannot be steered into a long probe).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Every reason a request can be rejected by the gateway itself (the `reason` label).
pub const REJECTION_REASONS: [&str; 20] = [
    "ip",
    "auth",
    "auth_throttled",
    "rate_limit",
    "in_flight",
    "token_budget",
    "model_not_allowed",
    "model_not_found",
    "model_not_served",
    "admin_required",
    "body_too_large",
    "header_too_large",
    "body_timeout",
    "body_read",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "upgrade",
    "upstream_no_key",
    "other",
];

/// Why a connection was closed before it carried a request (the `reason` label of
/// `gateway_connections_rejected_total`), in the order of [`ConnRejection`].
pub const CONNECTION_REJECTIONS: [&str; 6] = [
    "ip",
    "per_ip_limit",
    "plain_http",
    "tls_handshake_timeout",
    "tls_handshake_failed",
    "bad_http",
];

/// A connection closed below HTTP; indexes [`CONNECTION_REJECTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRejection {
    /// The peer is outside the allowlist (and not a trusted proxy).
    Ip = 0,
    /// The peer already holds `server.max_connections_per_ip` connections.
    PerIpLimit = 1,
    /// Plain HTTP on the HTTPS port (answered 400, then closed).
    PlainHttp = 2,
    /// No completed handshake within `server.tls_handshake_timeout`.
    HandshakeTimeout = 3,
    /// The handshake failed (no common protocol, version or cipher; not TLS at all).
    HandshakeFailed = 4,
    /// A request HTTP/1.1 cannot parse (an h2 preface, `HTTP/9.9`, conflicting lengths):
    /// answered 400 by actix-http, then closed.
    BadHttp = 5,
}

impl ConnRejection {
    pub fn as_str(self) -> &'static str {
        CONNECTION_REJECTIONS[self as usize]
    }
}

/// The label used where a dimension does not apply (a request rejected before routing).
pub const NONE: &str = "none";
/// The label for models beyond the cap or with names unfit for a label.
pub const OTHER: &str = "other";

const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const TTFT_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const TPS_BUCKETS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0,
];

/// Model names as metric labels: interned, capped.
struct ModelLabels {
    map: RwLock<HashMap<String, Arc<str>>>,
    cap: usize,
    other: Arc<str>,
}

impl ModelLabels {
    /// The interned label for `model`; new names are admitted only when `admit` (the
    /// upstream answered, so the model is real) and while under the cap.
    fn label(&self, model: &str, admit: bool) -> Arc<str> {
        if let Some(label) = self.map.read().ok().and_then(|m| m.get(model).cloned()) {
            return label;
        }
        let fit = !model.is_empty()
            && model.len() <= 100
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'));
        if !admit || !fit {
            return Arc::clone(&self.other);
        }
        let Ok(mut map) = self.map.write() else {
            return Arc::clone(&self.other);
        };
        if map.len() >= self.cap {
            return Arc::clone(&self.other);
        }
        Arc::clone(map.entry(model.to_string()).or_insert_with(|| model.into()))
    }
}

/// The gateway's metrics and their registry. Shared by all workers.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    tokens: IntCounterVec,
    ollama_load: HistogramVec,
    ollama_tps: HistogramVec,
    upstream_errors: IntCounterVec,
    in_flight: IntGaugeVec,
    rejections: Vec<IntCounter>,
    connection_rejections: Vec<IntCounter>,
    budget_charged: IntCounterVec,
    models: ModelLabels,
    none: Arc<str>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| bad_metric(name, e));
    let _ = registry.register(Box::new(vec.clone()));
    vec
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let vec = HistogramVec::new(opts, labels).unwrap_or_else(|e| bad_metric(name, e));
    let _ = registry.register(Box::new(vec.clone()));
    vec
}

/// Metric definitions are constants, checked by the unit tests; a bad one cannot reach a build.
fn bad_metric<T>(name: &str, e: prometheus::Error) -> T {
    tracing::error!(metric = name, error = %e, "invalid metric definition");
    std::process::abort()
}

impl Metrics {
    /// `upstreams` are the configured upstream names (for pre-resolved handles).
    pub fn new(max_models: usize, upstreams: &[&str]) -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "gateway_requests_total",
            "Requests answered, by endpoint, upstream, model, API key, team and HTTP status code.",
            &["endpoint", "upstream", "model", "key_id", "team", "code"],
        );
        let duration = histogram_vec(
            &registry,
            "gateway_request_duration_seconds",
            "Time from receiving a request to the end of its answer (streams: the last line).",
            &["upstream", "model"],
            &DURATION_BUCKETS,
        );
        let ttft = histogram_vec(
            &registry,
            "gateway_time_to_first_token_seconds",
            "Time from receiving a streaming request to sending its first line.",
            &["upstream", "model"],
            &TTFT_BUCKETS,
        );
        let tokens = counter_vec(
            &registry,
            "gateway_tokens_total",
            "Tokens processed as reported by the upstream: kind=prompt (in) or completion (out).",
            &["kind", "upstream", "model", "key_id", "team"],
        );
        let ollama_load = histogram_vec(
            &registry,
            "gateway_ollama_load_duration_seconds",
            "Ollama's reported model load time per answer (load_duration).",
            &["model"],
            &DURATION_BUCKETS,
        );
        let ollama_tps = histogram_vec(
            &registry,
            "gateway_ollama_generation_tokens_per_second",
            "Ollama's generation speed per answer (eval_count / eval_duration).",
            &["model"],
            &TPS_BUCKETS,
        );
        let upstream_errors = counter_vec(
            &registry,
            "gateway_upstream_errors_total",
            "Upstream failures by upstream and kind (connect, timeout, status, protocol, too_large, truncated, mid_stream).",
            &["upstream", "kind"],
        );
        let in_flight_vec = IntGaugeVec::new(
            Opts::new(
                "gateway_requests_in_flight",
                "Requests being answered now, by upstream.",
            ),
            &["upstream"],
        )
        .unwrap_or_else(|e| bad_metric("gateway_requests_in_flight", e));
        let _ = registry.register(Box::new(in_flight_vec.clone()));
        let rejections_vec = counter_vec(
            &registry,
            "gateway_rejections_total",
            "Requests the gateway refused before any upstream work, by reason.",
            &["reason"],
        );
        let rejections = REJECTION_REASONS
            .iter()
            .map(|r| rejections_vec.with_label_values(&[r]))
            .collect();
        let connection_rejections_vec = counter_vec(
            &registry,
            "gateway_connections_rejected_total",
            "Connections closed before they carried a request (allowlist, per-address cap, plain HTTP, TLS handshake) or on one that is not valid HTTP/1.1, by reason.",
            &["reason"],
        );
        let connection_rejections = CONNECTION_REJECTIONS
            .iter()
            .map(|r| connection_rejections_vec.with_label_values(&[r]))
            .collect();
        let budget_charged = counter_vec(
            &registry,
            "gateway_budget_charged_tokens_total",
            "Tokens charged to token budgets when answers ended, by team, key and basis: reported (the upstream's counts) or estimated (it reported none, or the client left first).",
            &["team", "key_id", "basis"],
        );
        let build = IntGaugeVec::new(
            Opts::new(
                "gateway_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .unwrap_or_else(|e| bad_metric("gateway_build_info", e));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let _ = registry.register(Box::new(build));
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        // Pre-create the series every dashboard panel reads, so they exist at zero.
        for upstream in upstreams {
            in_flight_vec.with_label_values(&[upstream]).set(0);
            for fault in UpstreamFault::ALL {
                upstream_errors.with_label_values(&[upstream, fault.label()]);
            }
        }
        Self {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            ollama_load,
            ollama_tps,
            upstream_errors,
            in_flight: in_flight_vec,
            rejections,
            connection_rejections,
            budget_charged,
            models: ModelLabels {
                map: RwLock::new(HashMap::default()),
                cap: max_models,
                other: OTHER.into(),
            },
            none: NONE.into(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    fn rejection_index(reason: &str) -> usize {
        REJECTION_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REJECTION_REASONS.len() - 1)
    }

    /// Counts one failure of `upstream` outside a routed request (a model list, `ps`).
    pub fn upstream_failed(&self, upstream: &str, fault: UpstreamFault) {
        self.upstream_errors
            .with_label_values(&[upstream, fault.label()])
            .inc();
    }

    /// Counts one rejection; unknown reasons count as `other`.
    pub fn rejected(&self, reason: &str) {
        if let Some(c) = self.rejections.get(Self::rejection_index(reason)) {
            c.inc();
        }
    }

    /// Counts one connection closed below HTTP.
    pub fn connection_rejected(&self, why: ConnRejection) {
        if let Some(c) = self.connection_rejections.get(why as usize) {
            c.inc();
        }
    }

    /// The count of connections closed for `why` so far.
    pub fn connection_rejections(&self, why: ConnRejection) -> u64 {
        self.connection_rejections
            .get(why as usize)
            .map_or(0, IntCounter::get)
    }

    /// The count for `reason` so far.
    pub fn rejections(&self, reason: &str) -> u64 {
        self.rejections
            .get(Self::rejection_index(reason))
            .map_or(0, IntCounter::get)
    }

    /// The label for a model name (see the module docs for the cap); `none` for a request
    /// that names no model (a blob upload).
    pub fn model_label(&self, model: &str, admit: bool) -> Arc<str> {
        if model.is_empty() {
            return Arc::clone(&self.none);
        }
        self.models.label(model, admit)
    }
}

/// The first `n` characters of `s` (all of it when shorter): a copy of a name that is
/// nearly always short, without collecting it a character at a time (~290 instructions of
/// every routed request).
fn first_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Addresses of interned label strings: cheap to hash, and the strings are kept alive by
/// the cached entry so an address is never reused for another label.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    route: &'static str,
    upstream: usize,
    model: usize,
    key: usize,
    code: u16,
}

fn addr(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}

/// Handles for one (upstream, model, key) combination.
struct Series {
    duration: Histogram,
    ttft: Histogram,
    prompt: IntCounter,
    completion: IntCounter,
    /// Ollama's own timings, by model; made on first use, so that a model that never
    /// reported them has no empty series.
    ollama_load: OnceCell<Histogram>,
    ollama_tps: OnceCell<Histogram>,
    /// The key's charged tokens, by basis ([`Basis`]); made on first use.
    charged: [OnceCell<IntCounter>; 2],
    _keep: [Arc<str>; 3],
}

/// What a request's charge was based on: the `basis` label of
/// `gateway_budget_charged_tokens_total`.
#[derive(Debug, Clone, Copy)]
enum Basis {
    /// The upstream's own counts.
    Reported = 0,
    /// The gateway's estimate.
    Estimated = 1,
}

impl Basis {
    fn label(self) -> &'static str {
        match self {
            Basis::Reported => "reported",
            Basis::Estimated => "estimated",
        }
    }
}

/// A cached request counter and the label strings whose addresses key it.
type CountedSeries = (IntCounter, [Arc<str>; 3]);
/// An upstream's in-flight gauge and error counters (one per kind), and its label.
type UpstreamHandles = (IntGauge, Rc<[IntCounter]>, Arc<str>);

/// One worker's cache of resolved handles (workers are single-threaded: no locks).
pub struct WorkerMetrics {
    shared: Arc<Metrics>,
    series: RefCell<HashMap<SeriesKey, Rc<Series>>>,
    requests: RefCell<HashMap<SeriesKey, CountedSeries>>,
    upstream: RefCell<HashMap<usize, UpstreamHandles>>,
}

impl WorkerMetrics {
    pub fn new(shared: Arc<Metrics>) -> Self {
        Self {
            shared,
            series: RefCell::default(),
            requests: RefCell::default(),
            upstream: RefCell::default(),
        }
    }

    pub fn shared(&self) -> &Metrics {
        &self.shared
    }

    fn series(
        &self,
        upstream: &Arc<str>,
        model: &Arc<str>,
        key: &Arc<str>,
        team: &Arc<str>,
    ) -> Rc<Series> {
        let k = SeriesKey {
            route: "",
            upstream: addr(upstream),
            model: addr(model),
            key: addr(key),
            code: 0,
        };
        let mut cache = self.series.borrow_mut();
        Rc::clone(cache.entry(k).or_insert_with(|| {
            let m = &self.shared;
            let (u, md) = (&**upstream, &**model);
            Rc::new(Series {
                duration: m.duration.with_label_values(&[u, md]),
                ttft: m.ttft.with_label_values(&[u, md]),
                prompt: m.tokens.with_label_values(&["prompt", u, md, key, team]),
                completion: m
                    .tokens
                    .with_label_values(&["completion", u, md, key, team]),
                ollama_load: OnceCell::new(),
                ollama_tps: OnceCell::new(),
                charged: Default::default(),
                _keep: [Arc::clone(upstream), Arc::clone(model), Arc::clone(key)],
            })
        }))
    }

    /// Counts one answered request.
    #[allow(clippy::too_many_arguments)]
    pub fn count_request(
        &self,
        route: &'static str,
        upstream: &Arc<str>,
        model: &Arc<str>,
        key: &Arc<str>,
        team: &Arc<str>,
        code: u16,
    ) {
        let k = SeriesKey {
            route,
            upstream: addr(upstream),
            model: addr(model),
            key: addr(key),
            code,
        };
        let mut cache = self.requests.borrow_mut();
        let (counter, _) = cache.entry(k).or_insert_with(|| {
            let code_text = code.to_string();
            let c = self
                .shared
                .requests
                .with_label_values(&[route, upstream, model, key, team, &code_text]);
            (
                c,
                [Arc::clone(upstream), Arc::clone(model), Arc::clone(key)],
            )
        });
        counter.inc();
    }

    fn upstream_handles(&self, upstream: &Arc<str>) -> (IntGauge, Rc<[IntCounter]>) {
        let mut cache = self.upstream.borrow_mut();
        let (gauge, errors, _) = cache.entry(addr(upstream)).or_insert_with(|| {
            let m = &self.shared;
            (
                m.in_flight.with_label_values(&[upstream]),
                UpstreamFault::ALL
                    .iter()
                    .map(|f| {
                        m.upstream_errors
                            .with_label_values(&[&**upstream, f.label()])
                    })
                    .collect(),
                Arc::clone(upstream),
            )
        });
        (gauge.clone(), Rc::clone(errors))
    }

    /// The shared "none" label.
    pub fn none(&self) -> Arc<str> {
        Arc::clone(&self.shared.none)
    }
}

/// Token counts of one answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

/// Ollama's own timings of one answer (nanoseconds), when the upstream is Ollama.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OllamaTimings {
    pub load_duration: u64,
    pub eval_count: u64,
    pub eval_duration: u64,
}

/// How an answer ended, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// Failed after the first byte (mid-stream).
    Failed {
        fault: UpstreamFault,
        message: String,
    },
}

/// Follows one routed request from routing to the end of its answer: keeps the in-flight
/// gauge, and on completion records metrics and writes the request's log line. Dropped
/// unfinished (the client went away), it records status 499 as nginx does.
pub struct RequestRecord {
    worker: Rc<WorkerMetrics>,
    started: Instant,
    request_id: Arc<str>,
    route: &'static str,
    upstream: Arc<str>,
    model: String,
    key_id: Arc<str>,
    team: Arc<str>,
    is_ollama: bool,
    in_flight: IntGauge,
    upstream_errors: Rc<[IntCounter]>,
    first_byte: Option<Instant>,
    streaming: bool,
    done: bool,
    /// Answered by the gateway without asking the upstream (see `answered_locally`).
    local: bool,
    /// For an identity with budgets or caps: what its answer spends.
    spent: Option<Box<Spent>>,
}

/// What a budgeted request's answer spends.
#[derive(Default)]
struct Spent {
    /// The token budget reservation this answer settles when it ends.
    charge: Option<Charge>,
    /// Content chunks streamed so far (an estimate of the tokens generated).
    generated: u64,
    /// The counts the upstream reported so far (a stream's first event may give them).
    so_far: Tokens,
    /// The output and context limits the gateway set on the request, for the log line.
    caps: Caps,
}

/// A request's token budget reservation and what its estimate was made of.
pub struct Charge {
    pub ledger: Arc<dyn Ledger>,
    pub hold: Hold,
    /// The prompt's estimated tokens.
    pub prompt: u64,
    /// The output reserved.
    pub output: u64,
}

/// Limits the gateway wrote into a request (`max_output_tokens`, `max_context`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub output: Option<u64>,
    pub context: Option<u64>,
}

impl RequestRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        worker: Rc<WorkerMetrics>,
        route: &'static str,
        started: Instant,
        request_id: Arc<str>,
        upstream: Arc<str>,
        is_ollama: bool,
        model: &str,
        key: Option<&ApiKey>,
        streaming: bool,
    ) -> Self {
        let (in_flight, upstream_errors) = worker.upstream_handles(&upstream);
        in_flight.inc();
        crate::memory::upstream_started();
        let none = worker.none();
        Self {
            started,
            request_id,
            route,
            model: first_chars(model, 200).to_owned(),
            key_id: key.map_or_else(|| Arc::clone(&none), |k| Arc::clone(&k.id)),
            team: key.map_or(none, |k| Arc::clone(&k.team)),
            is_ollama,
            in_flight,
            upstream_errors,
            first_byte: None,
            streaming,
            done: false,
            local: false,
            spent: None,
            upstream,
            worker,
        }
    }

    /// When the request came in: what its upstream deadline (`timeouts.total`) counts from.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request's upstream deadline: `total` (`timeouts.total`) after it came in.
    pub fn deadline(&self, total: std::time::Duration) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started) + total
    }

    /// The reservation this answer settles when it ends.
    pub fn charge(&mut self, charge: Charge) {
        self.spent.get_or_insert_with(Box::default).charge = Some(charge);
    }

    /// The limits the gateway set on the request.
    pub fn caps(&mut self, caps: Caps) {
        if caps != Caps::default() {
            self.spent.get_or_insert_with(Box::default).caps = caps;
        }
    }

    /// Whether the answer's progress is wanted ([`Self::progress`]): it settles a budget.
    pub fn budgeted(&self) -> bool {
        self.spent.as_ref().is_some_and(|s| s.charge.is_some())
    }

    /// Content chunks streamed so far (one token each, for an answer without counts), and
    /// the counts reported so far: what a client that leaves now is charged.
    pub fn progress(&mut self, chunks: u64, so_far: Tokens) {
        if let Some(spent) = &mut self.spent {
            spent.generated = chunks;
            spent.so_far = so_far;
        }
    }

    /// The first byte of a streamed answer is going out.
    pub fn first_byte(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
    }

    fn upstream_error(&self, fault: UpstreamFault) {
        if let Some(i) = UpstreamFault::ALL.iter().position(|f| *f == fault) {
            if let Some(c) = self.upstream_errors.get(i) {
                c.inc();
            }
        }
    }

    /// The request failed before any byte of an answer: record it, hand the error back.
    pub fn fail(mut self, error: GatewayError) -> GatewayError {
        use actix_web::ResponseError as _;
        match error.fault() {
            Some(fault) => self.upstream_error(fault),
            None => self.worker.shared.rejected(error.kind()),
        }
        let status = error.status_code().as_u16();
        let message = error.to_string();
        self.complete(
            status,
            Tokens::default(),
            None,
            error.kind(),
            Some(&message),
        );
        error
    }

    /// The answer ended: `status` as sent, the tokens and timings the upstream reported.
    pub fn finish(
        mut self,
        status: u16,
        tokens: Tokens,
        ollama: Option<OllamaTimings>,
        ending: &Ending,
    ) {
        let relayed;
        let (outcome, error) = match ending {
            Ending::Failed { fault, message } => {
                self.upstream_error(*fault);
                (fault.outcome(), Some(message.as_str()))
            }
            // An upstream's own error status, relayed as is.
            Ending::Complete if status >= 400 => {
                self.upstream_error(UpstreamFault::Status);
                relayed = format!("upstream {} answered {status}", self.upstream);
                ("upstream_status", Some(relayed.as_str()))
            }
            Ending::Complete => ("complete", None),
        };
        self.complete(status, tokens, ollama, outcome, error);
    }

    /// The gateway answered 200 itself, with nothing to ask the upstream (a load for an
    /// OpenAI-compatible upstream, nothing to embed): outcome `answered_locally`, and the
    /// model is not admitted as a label, since no upstream vouched for it.
    pub fn answered_locally(mut self) {
        self.local = true;
        self.complete(200, Tokens::default(), None, "answered_locally", None);
    }

    /// Counts and logs the answer once; `error` is what the client was told, if it failed.
    fn complete(
        &mut self,
        status: u16,
        tokens: Tokens,
        ollama: Option<OllamaTimings>,
        outcome: &'static str,
        error: Option<&str>,
    ) {
        if self.done {
            return;
        }
        self.done = true;
        self.in_flight.dec();
        crate::memory::upstream_ended();
        let elapsed = self.started.elapsed();
        let success = (200..300).contains(&status) && error.is_none();
        // A request about no model (a version) has the `none` label, not `other`.
        let model = if self.model.is_empty() {
            self.worker.none()
        } else {
            self.worker
                .shared
                .model_label(&self.model, success && !self.local)
        };
        self.worker.count_request(
            self.route,
            &self.upstream,
            &model,
            &self.key_id,
            &self.team,
            status,
        );
        let series = self
            .worker
            .series(&self.upstream, &model, &self.key_id, &self.team);
        series.duration.observe(elapsed.as_secs_f64());
        let ttfb = self.first_byte.map(|t| t - self.started);
        if let (true, Some(ttfb)) = (self.streaming, ttfb) {
            series.ttft.observe(ttfb.as_secs_f64());
        }
        series.prompt.inc_by(tokens.prompt);
        series.completion.inc_by(tokens.completion);
        let charged = self.settle(status, tokens, outcome, &series);
        let caps = self.spent.as_ref().map(|s| s.caps).unwrap_or_default();
        if let (true, Some(t)) = (self.is_ollama, ollama) {
            let shared = &self.worker.shared;
            if t.load_duration > 0 {
                series
                    .ollama_load
                    .get_or_init(|| shared.ollama_load.with_label_values(&[&model]))
                    .observe(t.load_duration as f64 / 1e9);
            }
            if t.eval_count > 0 && t.eval_duration > 0 {
                series
                    .ollama_tps
                    .get_or_init(|| shared.ollama_tps.with_label_values(&[&model]))
                    .observe(t.eval_count as f64 * 1e9 / t.eval_duration as f64);
            }
        }
        let ttfb_ms = ttfb.map(crate::telemetry::millis);
        // A failed answer's line is a warning and says why; the fields are the same. Each
        // field is named once, for both writers: straight into the log sink when the log is
        // JSON, through tracing otherwise.
        macro_rules! request_line {
            ($($kind:ident $name:ident = $value:expr),* $(,)?) => {
                let enabled = if success {
                    tracing::enabled!(tracing::Level::INFO)
                } else {
                    tracing::enabled!(tracing::Level::WARN)
                };
                let level = if success { tracing::Level::INFO } else { tracing::Level::WARN };
                if enabled
                    && !crate::telemetry::request_line(level, "request", |line| {
                        $(line.$kind(crate::line_key!($name), $value);)*
                    })
                {
                    if success {
                        tracing::info!($($name = $value,)* "request");
                    } else {
                        tracing::warn!($($name = $value,)* "request");
                    }
                }
            };
        }
        request_line!(
            str request_id = &*self.request_id,
            str endpoint = self.route,
            str key_id = &*self.key_id,
            str team = &*self.team,
            str model = self.model.as_str(),
            str upstream = &*self.upstream,
            u64 status = u64::from(status),
            str outcome = outcome,
            f64 duration_ms = crate::telemetry::millis(elapsed),
            opt_f64 ttfb_ms = ttfb_ms,
            u64 prompt_tokens = tokens.prompt,
            u64 completion_tokens = tokens.completion,
            opt_u64 charged_tokens = charged,
            opt_u64 output_cap = caps.output,
            opt_u64 context_cap = caps.context,
            opt_str error = error,
        );
    }
}

impl RequestRecord {
    /// Replaces the reservation by what the answer cost: the upstream's counts; without
    /// them, the estimate (the prompt's, and one token per content chunk streamed, or the
    /// output reserved for a whole answer); nothing for an answer that never came (an
    /// upstream error status, a failure before the first byte). Returns the tokens charged.
    fn settle(
        &mut self,
        status: u16,
        tokens: Tokens,
        outcome: &str,
        series: &Series,
    ) -> Option<u64> {
        let spent = self.spent.as_mut()?;
        let generated = spent.generated;
        let so_far = spent.so_far;
        let charge = spent.charge.take()?;
        let reported = tokens.prompt.saturating_add(tokens.completion);
        let complete = outcome == "complete" && (200..300).contains(&status);
        let (charged, basis) = if complete && reported > 0 {
            (reported, Basis::Reported)
        } else if complete {
            let output = if self.streaming {
                generated
            } else {
                charge.output
            };
            (charge.prompt.saturating_add(output), Basis::Estimated)
        } else if outcome == "client_closed"
            || generated > 0
            || reported > 0
            || so_far != Tokens::default()
        {
            // The client left, or the stream broke, after work was done: what the
            // upstream reported so far (Anthropic's stream gives the input at its start),
            // the estimate for the rest.
            let prompt = match tokens.prompt.max(so_far.prompt) {
                0 => charge.prompt,
                n => n,
            };
            let output = tokens.completion.max(so_far.completion).max(generated);
            (prompt.saturating_add(output), Basis::Estimated)
        } else {
            (0, Basis::Reported)
        };
        charge.ledger.settle(charge.hold, charged);
        if charged > 0 {
            let shared = &self.worker.shared;
            series.charged[basis as usize]
                .get_or_init(|| {
                    shared.budget_charged.with_label_values(&[
                        &self.team,
                        &self.key_id,
                        basis.label(),
                    ])
                })
                .inc_by(charged);
        }
        Some(charged)
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.done {
            self.complete(
                499,
                Tokens::default(),
                None,
                "client_closed",
                Some("the client went away before the answer ended"),
            );
        }
    }
}

/// The budgets' state, read at scrape time: per team and per identity, each configured
/// window's used, limit and remaining tokens; and the usage store's writes.
pub struct BudgetGauges {
    keys: Arc<crate::keys::Keys>,
    ledger: Arc<dyn Ledger>,
    store: Arc<crate::budget::LocalLedger>,
    descs: Vec<prometheus::core::Desc>,
}

const TEAM_GAUGES: [(&str, &str); 3] = [
    (
        "gateway_team_budget_used_tokens",
        "Tokens a team's budget window holds now: settled usage plus reservations in flight (the minute bucket: what it lacks of full).",
    ),
    (
        "gateway_team_budget_limit_tokens",
        "A team's token budget per window, as the keys file sets it.",
    ),
    (
        "gateway_team_budget_remaining_tokens",
        "Tokens left in a team's budget window now.",
    ),
];
const KEY_GAUGES: [(&str, &str); 3] = [
    (
        "gateway_key_budget_used_tokens",
        "Tokens an identity's own budget window holds now: settled usage plus reservations in flight.",
    ),
    (
        "gateway_key_budget_limit_tokens",
        "An identity's own token budget per window, as the keys file sets it.",
    ),
    (
        "gateway_key_budget_remaining_tokens",
        "Tokens left in an identity's own budget window now.",
    ),
];
const STORE_COUNTERS: [(&str, &str); 2] = [
    (
        "gateway_budget_store_writes_total",
        "Batches of day and month token usage written to the state store.",
    ),
    (
        "gateway_budget_store_errors_total",
        "Failed writes of token usage to the state store (retried on the next flush).",
    ),
];

impl BudgetGauges {
    pub fn new(
        keys: Arc<crate::keys::Keys>,
        ledger: Arc<dyn Ledger>,
        store: Arc<crate::budget::LocalLedger>,
    ) -> Self {
        let mut descs = Vec::new();
        for (name, help) in TEAM_GAUGES {
            descs.extend(
                prometheus::core::Collector::desc(&team_vec(name, help))
                    .into_iter()
                    .cloned(),
            );
        }
        for (name, help) in KEY_GAUGES {
            descs.extend(
                prometheus::core::Collector::desc(&key_vec(name, help))
                    .into_iter()
                    .cloned(),
            );
        }
        for (name, help) in STORE_COUNTERS {
            if let Ok(c) = IntCounter::new(name, help) {
                descs.extend(prometheus::core::Collector::desc(&c).into_iter().cloned());
            }
        }
        Self {
            keys,
            ledger,
            store,
            descs,
        }
    }
}

fn team_vec(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &["team", "window"])
        .unwrap_or_else(|e| bad_metric(name, e))
}

fn key_vec(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &["key_id", "team", "window"])
        .unwrap_or_else(|e| bad_metric(name, e))
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl prometheus::core::Collector for BudgetGauges {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let table = self.keys.table();
        let teams: Vec<IntGaugeVec> = TEAM_GAUGES.iter().map(|(n, h)| team_vec(n, h)).collect();
        for (team, windows) in table.teams() {
            for state in self.ledger.read(windows) {
                let labels = [&**team, state.spec.window.field()];
                let values = [state.used, state.spec.limit, state.remaining()];
                for (vec, v) in teams.iter().zip(values) {
                    vec.with_label_values(&labels).set(gauge_value(v));
                }
            }
        }
        let keys: Vec<IntGaugeVec> = KEY_GAUGES.iter().map(|(n, h)| key_vec(n, h)).collect();
        for identity in table.identities() {
            let own: Vec<_> = identity.budget.own().cloned().collect();
            for state in self.ledger.read(&own) {
                let labels = [&*identity.id, &*identity.team, state.spec.window.field()];
                let values = [state.used, state.spec.limit, state.remaining()];
                for (vec, v) in keys.iter().zip(values) {
                    vec.with_label_values(&labels).set(gauge_value(v));
                }
            }
        }
        let (writes, errors) = self.store.store_writes();
        let mut out: Vec<prometheus::proto::MetricFamily> = Vec::new();
        for vec in teams.iter().chain(keys.iter()) {
            out.extend(prometheus::core::Collector::collect(vec));
        }
        for ((name, help), value) in STORE_COUNTERS.iter().zip([writes, errors]) {
            if let Ok(c) = IntCounter::new(*name, *help) {
                c.inc_by(value);
                out.extend(prometheus::core::Collector::collect(&c));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_chars_cuts_at_a_character_not_a_byte() {
        assert_eq!(first_chars("llama3:8b", 200), "llama3:8b");
        assert_eq!(first_chars("llama3:8b", 6), "llama3");
        assert_eq!(first_chars("", 3), "");
        let wide = "模型".repeat(100);
        assert_eq!(first_chars(&wide, 3), "模型模");
        assert_eq!(first_chars(&wide, 200), wide);
        assert_eq!(first_chars(&wide, 250), wide);
        let long = "m".repeat(300);
        assert_eq!(first_chars(&long, 200).len(), 200);
    }

    #[test]
    fn counts_by_reason_and_renders() {
        let m = Metrics::new(2, &["ollama", "openai"]);
        m.rejected("auth");
        m.rejected("auth");
        m.rejected("nonsense");
        assert_eq!(m.rejections("auth"), 2);
        assert_eq!(m.rejections("other"), 1);
        assert_eq!(m.rejections("ip"), 0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("gateway_rejections_total{reason=\"auth\"} 2"),
            "{text}"
        );
        assert!(text.contains("gateway_build_info{version="));
        assert!(text.contains("gateway_requests_in_flight{upstream=\"openai\"} 0"));
    }

    #[test]
    fn model_labels_are_capped_and_only_admitted_on_success() {
        let m = Metrics::new(2, &[]);
        assert_eq!(
            &*m.model_label("llama3", false),
            "other",
            "not admitted on failure"
        );
        assert_eq!(&*m.model_label("llama3", true), "llama3");
        assert_eq!(
            &*m.model_label("llama3", false),
            "llama3",
            "known names stay"
        );
        assert_eq!(&*m.model_label("bad name\n", true), "other");
        assert_eq!(
            &*m.model_label("openai/gpt-4o-mini", true),
            "openai/gpt-4o-mini"
        );
        assert_eq!(&*m.model_label("third", true), "other", "cap reached");
        assert_eq!(&*m.model_label("", true), "none", "no model named");
        assert!(Arc::ptr_eq(
            &m.model_label("llama3", true),
            &m.model_label("llama3", true)
        ));
    }

    #[test]
    fn record_counts_once_and_client_close_is_499() {
        let shared = Arc::new(Metrics::new(10, &["ollama"]));
        let worker = Rc::new(WorkerMetrics::new(Arc::clone(&shared)));
        let up: Arc<str> = "ollama".into();
        let r = RequestRecord::start(
            Rc::clone(&worker),
            "/api/chat",
            Instant::now(),
            "id".into(),
            Arc::clone(&up),
            true,
            "llama3",
            None,
            true,
        );
        r.finish(
            200,
            Tokens {
                prompt: 3,
                completion: 5,
            },
            Some(OllamaTimings {
                load_duration: 1_000_000_000,
                eval_count: 10,
                eval_duration: 500_000_000,
            }),
            &Ending::Complete,
        );
        let r = RequestRecord::start(
            Rc::clone(&worker),
            "/api/chat",
            Instant::now(),
            "id2".into(),
            Arc::clone(&up),
            true,
            "llama3",
            None,
            true,
        );
        drop(r);
        let text = String::from_utf8(shared.render()).unwrap();
        for needle in [
            "gateway_requests_total{code=\"200\",endpoint=\"/api/chat\",key_id=\"none\",model=\"llama3\",team=\"none\",upstream=\"ollama\"} 1",
            "gateway_requests_total{code=\"499\",endpoint=\"/api/chat\",key_id=\"none\",model=\"llama3\",team=\"none\",upstream=\"ollama\"} 1",
            "gateway_tokens_total{key_id=\"none\",kind=\"completion\",model=\"llama3\",team=\"none\",upstream=\"ollama\"} 5",
            "gateway_requests_in_flight{upstream=\"ollama\"} 0",
            "gateway_ollama_generation_tokens_per_second_sum{model=\"llama3\"} 20",
            "gateway_ollama_load_duration_seconds_sum{model=\"llama3\"} 1",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
    }
}
