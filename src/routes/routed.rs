//! What every model endpoint does before its upstream call: read the body, check that the
//! key may use the model, pick the upstream (the catalog's one decision), and start the
//! request's record, which from then on counts and logs it.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse};
use bytes::Bytes;

use crate::catalog::{self, Route};
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{Charge, RequestRecord};
use crate::middleware::context::RequestContext;
use crate::routes::spend::Spend;
use crate::state::AppState;
use crate::upstream::{self, openai};

/// A request admitted to its upstream, with the record that follows it.
pub enum Routed<'a> {
    /// To Ollama, the body as it came.
    Ollama(ToOllama<'a>),
    /// To an OpenAI-compatible upstream, translated.
    OpenAi(openai::Call<'a>, RequestRecord),
}

/// A request for Ollama.
pub struct ToOllama<'a> {
    config: &'a Config,
    request_id: Arc<str>,
    record: RequestRecord,
}

impl<'a> ToOllama<'a> {
    /// Sends `body` as it came to Ollama's `uri` (the endpoint's own) and relays the answer.
    /// The upstream call's own future, not one wrapped around it: a future is moved whole at
    /// each level that awaits it.
    pub fn forward<'r>(
        self,
        client: &'r awc::Client,
        req: &'r HttpRequest,
        uri: &'r awc::http::Uri,
        body: Bytes,
    ) -> impl Future<Output = Result<HttpResponse, GatewayError>> + 'r
    where
        'a: 'r,
    {
        let Self {
            config,
            request_id,
            record,
        } = self;
        upstream::ollama::forward(client, config, req, uri, body, request_id, record)
    }

    /// Sends `body` as it came to Ollama's Anthropic Messages API (`/v1/messages`) and
    /// relays the answer (an event stream when `streams`).
    pub fn messages<'r>(
        self,
        client: &'r awc::Client,
        req: &'r HttpRequest,
        body: Bytes,
        streams: bool,
    ) -> impl Future<Output = Result<HttpResponse, GatewayError>> + 'r
    where
        'a: 'r,
    {
        let Self {
            config,
            request_id,
            record,
        } = self;
        upstream::anthropic::forward(client, config, req, body, streams, request_id, record)
    }

    /// The config, the request id and the record, for a relay of its own.
    pub fn into_parts(self) -> (&'a Config, Arc<str>, RequestRecord) {
        (self.config, self.request_id, self.record)
    }
}

/// Admits a request for `model` at `endpoint` (the `route` label), received at `started`,
/// which `spend`s tokens: 403 when the key's `models` exclude it; 429 when a window of its
/// token budget (or its team's) has no room for the reservation; else its upstream and
/// its record, which holds the reservation until the answer ends.
pub fn admit<'a>(
    req: &HttpRequest,
    state: &'a AppState,
    endpoint: &'static str,
    model: &'a str,
    started: Instant,
    streams: bool,
    spend: Spend,
) -> Result<Routed<'a>, GatewayError> {
    let key = super::ollama::key(req);
    super::ollama::may_use(key.as_deref(), model)?;
    let hold = match key.as_deref().map(|k| &k.budget) {
        Some(budget) if budget.is_limited() => {
            let mut hold = state
                .ledger
                .reserve(&budget.windows, spend.tokens())
                .map_err(|e| GatewayError::TokenBudget(Box::new(e)))?;
            if let Some(window) = hold.tightest.take() {
                let at = hold.at;
                RequestContext::update(&mut req.extensions_mut(), |c| {
                    c.reserved = Some((window, at));
                });
            }
            Some(hold)
        }
        _ => None,
    };
    let config = &*state.config;
    let route = catalog::route(config, model);
    let (label, is_ollama) = match route {
        Route::Ollama => (Arc::clone(&state.ollama_label), true),
        Route::OpenAi { upstream, .. } => (Arc::clone(&upstream.label), false),
    };
    // From here on, the record counts and logs this request when its answer ends.
    let (mut record, request_id) = super::ollama::record(
        req, state, endpoint, started, label, is_ollama, model, streams,
    );
    record.caps(spend.caps);
    if let Some(hold) = hold {
        record.charge(Charge {
            ledger: Arc::clone(&state.ledger),
            hold,
            prompt: spend.prompt,
            output: spend.output,
        });
    }
    Ok(match route {
        Route::Ollama => Routed::Ollama(ToOllama {
            config,
            request_id,
            record,
        }),
        Route::OpenAi { upstream, model } => {
            let call = openai::Call {
                upstream,
                config,
                model,
                started,
                request_id,
            };
            Routed::OpenAi(call, record)
        }
    })
}
