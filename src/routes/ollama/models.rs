//! The model lists and facts: `GET /api/tags` (Ollama's models merged with every
//! OpenAI-compatible upstream's, under their prefixes), `GET /api/ps` and `POST /api/show`.
//! A key sees only the models its `models` patterns allow, in every list.

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::catalog::{self, Route};
use crate::error::{GatewayError, JSON_UTF8};
use crate::routes::models::{counted, gather, upstream_list, Entry};
use crate::state::AppState;
use crate::translate::ollama::parse_request;
use crate::upstream::{self, models, OLLAMA};

fn json(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_UTF8)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body.to_string())
}

/// `GET`/`HEAD /api/tags`: one list (see [`gather`]).
pub async fn tags(
    req: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let key = super::key(&req);
    let id = super::request_id(&req);
    let entries: Vec<serde_json::Value> = gather(&state, &client, key.as_deref(), &id)
        .await
        .into_iter()
        .map(|entry| match entry {
            Entry::Ollama(model) => model,
            Entry::Upstream(up, listed) => catalog::tag_entry(up, &listed),
        })
        .collect();
    json(&serde_json::json!({ "models": entries }))
}

/// `GET /api/ps`: Ollama's loaded models (the OpenAI-compatible upstreams load none), those
/// the key may use.
pub async fn ps(
    req: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let key = super::key(&req);
    let id = super::request_id(&req);
    let answer = models::ollama(&client, &state.config, Method::GET, "/api/ps", None, &id)
        .await
        .map_err(counted(&state, OLLAMA))?;
    if !answer.status.is_success() {
        return Ok(relay(answer));
    }
    let entries = catalog::filter_ollama_list(&answer.body, |m| super::allowed(key.as_deref(), m))
        .map_err(|detail| {
            upstream::unreadable_answer(OLLAMA, &answer.body, detail, &state.config.scrubber)
        })
        .map_err(counted(&state, OLLAMA))?;
    Ok(json(&serde_json::json!({ "models": entries })))
}

/// Ollama's answer as it came (status, JSON body).
pub(super) fn relay(answer: models::Answer) -> HttpResponse {
    HttpResponse::build(answer.status)
        .content_type(JSON_UTF8)
        .body(answer.body)
}

#[derive(Deserialize)]
struct ShowRequest {
    #[serde(default)]
    model: Option<String>,
    /// The legacy field (LiteLLM still sends it).
    #[serde(default)]
    name: Option<String>,
}

impl ShowRequest {
    /// `model`, else the legacy `name` (empty when neither is given).
    fn model(&self) -> &str {
        [&self.model, &self.name]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .find(|m| !m.is_empty())
            .unwrap_or("")
    }
}

/// `POST /api/show`: Ollama's answer for its models; for an upstream's model, what is known.
pub async fn show(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let config = &state.config;
    let body = crate::routes::body::read_json(payload, &req, &config.server).await?;
    let show: ShowRequest = parse_request(&body, ShowRequest::model)?;
    let model = show.model().to_string();
    let key = super::key(&req);
    super::may_use(key.as_deref(), &model)?;
    let id = super::request_id(&req);
    match catalog::route(config, &model) {
        Route::Ollama => {
            let answer =
                models::ollama(&client, config, Method::POST, "/api/show", Some(body), &id)
                    .await
                    .map_err(counted(&state, OLLAMA))?;
            Ok(relay(answer))
        }
        Route::OpenAi {
            upstream: up,
            model: name,
        } => {
            // The list says whether the model exists; when it cannot be read, that is the
            // answer (502/504): a client that checks a model before using it must not be
            // told that one is there which may not be.
            let list = upstream_list(&state, &client, up, &id)
                .await
                .map_err(counted(&state, &up.name))?;
            let Some(listed) = list.iter().find(|m| m.id == name) else {
                return Err(GatewayError::ModelNotFound { model });
            };
            Ok(json(&catalog::show_entry(up, name, listed.created)))
        }
    }
}
