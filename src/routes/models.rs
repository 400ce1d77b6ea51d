//! The merged model catalog that every list endpoint serves (`/api/tags`, `/v1/models`):
//! Ollama's models beside every OpenAI-compatible upstream's, under their prefixes, as the
//! key's `models` patterns allow. Gathered here once, written in each API's shape by its
//! route.

use std::sync::Arc;

use actix_web::http::Method;
use futures_util::future::{join, join_all};

use crate::catalog::{self, Listed};
use crate::config::OpenAiConfig;
use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::routes::ollama::allowed;
use crate::state::AppState;
use crate::upstream::{self, models, OLLAMA};

/// One model of the merged list.
pub enum Entry<'c> {
    /// One of Ollama's, as its `/api/tags` wrote it.
    Ollama(serde_json::Value),
    /// An OpenAI-compatible upstream's, known by its own name (without the prefix).
    Upstream(&'c OpenAiConfig, Listed),
}

/// Notes an upstream that left its part out of a list.
fn left_out(state: &AppState, upstream: &str, error: &GatewayError) {
    count_fault(state, upstream, error);
    tracing::warn!(upstream, error = %error, "model list: this upstream's models are left out");
}

/// Counts `error` in `gateway_upstream_errors_total` when it is `upstream`'s failure.
fn count_fault(state: &AppState, upstream: &str, error: &GatewayError) {
    if let Some(fault) = error.fault() {
        state.metrics.upstream_failed(upstream, fault);
    }
}

/// `error`, counted as `upstream`'s failure: for a read whose failure is the answer.
pub(crate) fn counted<'a>(
    state: &'a AppState,
    upstream: &'a str,
) -> impl FnOnce(GatewayError) -> GatewayError + 'a {
    move |error| {
        count_fault(state, upstream, &error);
        error
    }
}

/// `up`'s models, from the cache or asked for now.
pub(crate) async fn upstream_list(
    state: &AppState,
    client: &awc::Client,
    up: &OpenAiConfig,
    request_id: &str,
) -> Result<Arc<[Listed]>, GatewayError> {
    let ttl = state.config.catalog.cache_ttl;
    if let Some(list) = state.catalog.cached(&up.name, ttl) {
        return Ok(list);
    }
    let list: Arc<[Listed]> = models::openai(client, &state.config, up, request_id)
        .await?
        .into();
    state.catalog.store(&up.name, Arc::clone(&list));
    Ok(list)
}

/// Ollama's models that `key` may use, as its `/api/tags` lists them. Whatever keeps the
/// list from being read is the answer (a relayed error status becomes `UpstreamStatus`).
pub(crate) async fn ollama_list(
    state: &AppState,
    client: &awc::Client,
    key: Option<&ApiKey>,
    request_id: &str,
) -> Result<Vec<serde_json::Value>, GatewayError> {
    let config = &state.config;
    let answer = models::ollama(client, config, Method::GET, "/api/tags", None, request_id).await?;
    if !answer.status.is_success() {
        return Err(GatewayError::UpstreamStatus {
            upstream: OLLAMA.into(),
            status: answer.status,
            message: format!("upstream {OLLAMA} answered {}", answer.status.as_u16()),
            retry_after: None,
        });
    }
    catalog::filter_ollama_list(&answer.body, |m| allowed(key, m)).map_err(|detail| {
        upstream::unreadable_answer(OLLAMA, &answer.body, detail, &config.scrubber)
    })
}

/// Every model `key` may use, Ollama's first, then each upstream's in the configured
/// order. The upstreams are asked at the same time; one that fails to answer leaves its
/// part out (logged, counted in `gateway_upstream_errors_total`) instead of failing the list.
pub async fn gather<'c>(
    state: &'c AppState,
    client: &awc::Client,
    key: Option<&ApiKey>,
    request_id: &str,
) -> Vec<Entry<'c>> {
    let config = &state.config;
    let ollama = ollama_list(state, client, key, request_id);
    let others = join_all(
        config
            .upstreams
            .iter()
            .map(|up| upstream_list(state, client, up, request_id)),
    );
    let (ollama, others) = join(ollama, others).await;
    let mut entries: Vec<Entry<'c>> = match ollama {
        Ok(list) => list.into_iter().map(Entry::Ollama).collect(),
        Err(e) => {
            left_out(state, OLLAMA, &e);
            Vec::new()
        }
    };
    for (up, list) in config.upstreams.iter().zip(others) {
        match list {
            Ok(list) => entries.extend(
                list.iter()
                    .filter(|m| allowed(key, &format!("{}{}", up.prefix, m.id)))
                    .map(|m| Entry::Upstream(up, m.clone())),
            ),
            Err(e) => left_out(state, &up.name, &e),
        }
    }
    entries
}
