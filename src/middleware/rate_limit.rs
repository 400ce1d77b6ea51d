//! Per-key limits: an in-flight slot (held until the response body ends) and a token from
//! the key's bucket; or, for a cheap read ([`is_cheap_read`]), a token from the key's
//! bucket of reads and no slot, so that a UI polling its model list never makes the same
//! key's inference wait or 429. Answers carry the IETF draft `RateLimit-Policy` /
//! `RateLimit` headers of the bucket they drew on, and on `/v1` OpenAI's
//! `x-ratelimit-*-requests` too.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use bytes::{Bytes, BytesMut};

use std::sync::Arc;

use actix_web::{web, HttpMessage as _};

use crate::budget::clock::until;
use crate::budget::{Budget, Ledger, WindowState};
use crate::error::{write_go_duration, Api, GatewayError, RatePolicy, RATELIMIT, RATELIMIT_POLICY};
use crate::keys::ApiKey;
use crate::limits::{self, InFlight};
use crate::middleware::context::RequestContext;
use crate::state::AppState;

pin_project_lite::pin_project! {
    /// A response body that holds its request's in-flight slot until it is dropped.
    struct Guarded<B> {
        #[pin]
        body: B,
        slot: InFlight,
    }
}

impl<B: MessageBody> MessageBody for Guarded<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }
}

/// Adds OpenAI's `x-ratelimit-{limit,remaining,reset}-requests` for `policy`: what OpenAI
/// clients and dashboards read, beside the draft's `RateLimit` headers. Only on `/v1`.
pub fn add_openai_headers(headers: &mut HeaderMap, policy: &RatePolicy) {
    put_openai_headers(headers, &mut Values::new(), policy);
}

/// Whether a request is a cheap read: one that UIs poll, that costs the upstream next to
/// nothing, and that answers at once. These take no in-flight slot and draw on the key's
/// bucket of reads (`reads_per_minute`, `read_burst`) instead of its inference bucket. The
/// one place that says which requests they are.
pub fn is_cheap_read(method: &Method, path: &str) -> bool {
    let get_or_head = method == Method::GET || method == Method::HEAD;
    match path {
        "/" | "/api/tags" | "/api/version" | "/v1/models" => get_or_head,
        "/api/ps" => method == Method::GET,
        // `GET /v1/models/{model}`: a model id may hold slashes.
        _ => {
            get_or_head
                && path
                    .strip_prefix("/v1/models/")
                    .is_some_and(|m| !m.is_empty())
        }
    }
}

/// What a request admitted by the limits holds: its in-flight slot (none for a cheap read)
/// and the state of the bucket it drew on (neither on public paths, which carry no key and
/// are not limited).
pub struct Admission {
    slot: Option<InFlight>,
    policy: Option<RatePolicy>,
    /// The identity, when it has token budgets (its answers carry their headers).
    budgeted: Option<Arc<ApiKey>>,
}

/// Takes the key's in-flight slot, then a token from its bucket; for a cheap read, only a
/// token from its bucket of reads. The slot comes first, so a request refused for
/// concurrency does not spend a token.
pub fn admit(key: Option<&Arc<ApiKey>>, cheap_read: bool) -> Result<Admission, GatewayError> {
    let Some(key) = key else {
        return Ok(Admission {
            slot: None,
            policy: None,
            budgeted: None,
        });
    };
    let (slot, policy) = if cheap_read {
        (None, limits::take_read(&key.quota)?)
    } else {
        let slot = InFlight::acquire(&key.quota)?;
        (Some(slot), limits::take(&key.quota)?)
    };
    Ok(Admission {
        slot,
        policy: Some(policy),
        budgeted: key.budget.is_limited().then(|| Arc::clone(key)),
    })
}

const X_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const X_REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const X_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// An answer's header values, written one after another into one buffer and split off it:
/// its RateLimit and token headers cost two allocations together (the buffer, and its
/// sharing at the first split) instead of one or two each (measured: six a request).
struct Values(BytesMut);

/// Room for every value [`Admission::apply`] writes (about 130 bytes; ~150 on `/v1`).
const VALUES_CAPACITY: usize = 192;

impl Values {
    /// Allocates nothing until the first value.
    fn new() -> Self {
        Self(BytesMut::new())
    }

    /// What `write` appends, as a header value (none if it is not a valid one).
    fn value(&mut self, write: impl FnOnce(&mut BytesMut)) -> Option<HeaderValue> {
        if self.0.capacity() == 0 {
            self.0.reserve(VALUES_CAPACITY);
        }
        write(&mut self.0);
        HeaderValue::from_maybe_shared(self.0.split().freeze()).ok()
    }

    fn number(&mut self, n: u64) -> Option<HeaderValue> {
        self.value(|out| out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()))
    }
}

/// OpenAI's `x-ratelimit-{limit,remaining,reset}-tokens` for the window of `key`'s token
/// budgets (its own and its team's) with the least room left now: its limit, what is left,
/// and the time until it resets (a Go duration: `1s`, `6m0s`).
fn add_token_headers(
    headers: &mut HeaderMap,
    values: &mut Values,
    key: &ApiKey,
    ledger: &dyn Ledger,
    now: jiff::Timestamp,
) {
    let states = ledger.read(&key.budget.windows);
    if let Some(tightest) = Budget::tightest(&states) {
        put_token_headers(headers, values, tightest, now);
    }
}

const X_LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const X_REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const X_RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");

/// [`add_openai_headers`] with the answer's one buffer of values: the quota per minute, the
/// requests left, and the time until the bucket is full again (a Go duration).
fn put_openai_headers(headers: &mut HeaderMap, values: &mut Values, policy: &RatePolicy) {
    if let Some(v) = values.number(u64::from(policy.quota)) {
        headers.insert(X_LIMIT_REQUESTS, v);
    }
    if let Some(v) = values.number(u64::from(policy.remaining)) {
        headers.insert(X_REMAINING_REQUESTS, v);
    }
    if let Some(v) = values.value(|out| write_go_duration(policy.full_in, out)) {
        headers.insert(X_RESET_REQUESTS, v);
    }
}

/// The three `x-ratelimit-*-tokens` of `window` at `now`.
fn put_token_headers(
    headers: &mut HeaderMap,
    values: &mut Values,
    window: &WindowState,
    now: jiff::Timestamp,
) {
    if let Some(v) = values.number(window.spec.limit) {
        headers.insert(X_LIMIT_TOKENS, v);
    }
    if let Some(v) = values.number(window.remaining()) {
        headers.insert(X_REMAINING_TOKENS, v);
    }
    let reset = until(now, window.resets_at);
    if let Some(v) = values.value(|out| write_go_duration(reset, out)) {
        headers.insert(X_RESET_TOKENS, v);
    }
}

impl Admission {
    /// Adds the RateLimit headers to the answer; its body keeps the slot until it ends.
    pub fn apply<B: MessageBody + 'static>(
        self,
        mut res: ServiceResponse<B>,
    ) -> ServiceResponse<BoxBody> {
        let mut values = Values::new();
        if let Some(policy) = self.policy {
            let headers = res.headers_mut();
            if let Some(v) = values.value(|out| policy.write_policy(out)) {
                headers.insert(RATELIMIT_POLICY, v);
            }
            if let Some(v) = values.value(|out| policy.write_state(out)) {
                headers.insert(RATELIMIT, v);
            }
            if Api::of_path(res.request().path()) != Api::Ollama {
                put_openai_headers(res.headers_mut(), &mut values, &policy);
            }
        }
        if let Some(key) = &self.budgeted {
            let reserved = res
                .request()
                .extensions_mut()
                .get_mut::<RequestContext>()
                .and_then(|c| c.reserved.take());
            match reserved {
                Some((window, at)) => {
                    put_token_headers(res.headers_mut(), &mut values, &window, at);
                }
                // Refused before reserving (a token 429 among them), or a route that spends
                // nothing: the ledger as it is.
                None => {
                    if let Some(state) = res.request().app_data::<web::Data<AppState>>().cloned() {
                        let now = state.local_ledger.now();
                        let headers = res.headers_mut();
                        add_token_headers(headers, &mut values, key, &*state.ledger, now);
                    }
                }
            }
        }
        match self.slot {
            Some(slot) => res.map_body(|_, body| BoxBody::new(Guarded { body, slot })),
            None => res.map_into_boxed_body(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_rate_headers() {
        let p = RatePolicy {
            name: RatePolicy::DEFAULT,
            quota: 120,
            remaining: 19,
            reset: 1,
            full_in: std::time::Duration::from_millis(500),
        };
        let mut headers = HeaderMap::new();
        add_openai_headers(&mut headers, &p);
        let pairs: Vec<(&str, &str)> = [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ]
        .into_iter()
        .map(|n| {
            (
                n,
                headers
                    .get(n)
                    .map_or("", |v| v.to_str().unwrap_or_default()),
            )
        })
        .collect();
        assert_eq!(
            pairs,
            [
                ("x-ratelimit-limit-requests", "120"),
                ("x-ratelimit-remaining-requests", "19"),
                ("x-ratelimit-reset-requests", "500ms"),
            ]
        );
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn cheap_reads_are_the_polled_gets_only() {
        for (method, path) in [
            (Method::GET, "/"),
            (Method::HEAD, "/"),
            (Method::GET, "/api/tags"),
            (Method::HEAD, "/api/tags"),
            (Method::GET, "/api/ps"),
            (Method::GET, "/api/version"),
            (Method::HEAD, "/api/version"),
            (Method::GET, "/v1/models"),
            (Method::GET, "/v1/models/openai/gpt-4o-mini"),
            (Method::HEAD, "/v1/models/llama3"),
        ] {
            assert!(is_cheap_read(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::POST, "/"),
            (Method::POST, "/api/tags"),
            (Method::HEAD, "/api/ps"),
            (Method::POST, "/api/chat"),
            (Method::GET, "/api/chat"),
            (Method::POST, "/api/show"),
            (Method::GET, "/api/version/"),
            (Method::GET, "/api/versions"),
            (Method::DELETE, "/api/version"),
            (Method::GET, "/metrics"),
            (Method::POST, "/v1/models"),
            (Method::GET, "/v1/models/"),
            (Method::POST, "/v1/messages"),
            (Method::GET, "/v1/chat/completions"),
        ] {
            assert!(!is_cheap_read(&method, path), "{method} {path}");
        }
    }
}
