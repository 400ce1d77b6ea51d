//! `POST /api/embed` and the legacy `POST /api/embeddings`: to Ollama as they came; to an
//! OpenAI-compatible upstream as `POST {base_url}/embeddings`.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

use super::routed::{self, Routed};
use crate::catalog::Route;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::embed::{EmbedRequest, Endpoint};
use crate::upstream::{self, openai};

pub async fn embed(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    handle(req, payload, state, client, Endpoint::Embed).await
}

pub async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    handle(req, payload, state, client, Endpoint::Legacy).await
}

async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
    endpoint: Endpoint,
) -> Result<HttpResponse, GatewayError> {
    let started = Instant::now();
    let body = routed::body(payload, &req, &state).await?;
    let embed = EmbedRequest::parse(&body)?;
    let label = match endpoint {
        Endpoint::Embed => "/api/embed",
        Endpoint::Legacy => "/api/embeddings",
    };
    let Routed {
        route,
        request_id,
        record,
    } = routed::admit(&req, &state, label, embed.model(), started, false)?;
    let config = &state.config;
    match route {
        Route::Ollama => {
            let uri = match endpoint {
                Endpoint::Embed => &config.ollama.embed_uri,
                Endpoint::Legacy => &config.ollama.embeddings_uri,
            };
            upstream::ollama::forward(
                &client,
                config,
                &req,
                uri,
                body.clone(),
                &request_id,
                record,
            )
            .await
        }
        Route::OpenAi { upstream, model } => {
            let call = openai::Call {
                upstream,
                config,
                model,
                started,
                request_id: &request_id,
            };
            openai::embed(&client, call, &embed, endpoint, record).await
        }
    }
}
