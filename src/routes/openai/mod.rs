//! OpenAI's API (`/v1/...` but `/v1/messages`), one file per concern: relayed to the
//! model's upstream, Ollama's own OpenAI-compatible layer (`{ollama}/v1/...`) or an
//! OpenAI-compatible server, with only the model name rewritten.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::routed::{self, Routed};
use super::spend;
use super::{on, only};
use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::v1::{Endpoint, V1Request};
use crate::upstream::v1;

use super::probe;

/// Registers OpenAI's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(probe("/v1/models", models::list))
        .service(probe("/v1/models/{model:.+}", models::retrieve))
        .service(only(
            Endpoint::Chat.path(),
            "POST",
            on(Method::POST).to(chat::chat),
        ))
        .service(only(
            Endpoint::Completions.path(),
            "POST",
            on(Method::POST).to(completions::completions),
        ))
        .service(only(
            Endpoint::Embeddings.path(),
            "POST",
            on(Method::POST).to(embeddings::embeddings),
        ));
}

/// One of the model endpoints: read and check the body, admit the model, relay it.
async fn relay(
    endpoint: Endpoint,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = crate::routes::started(&req);
    let body = super::body::read_json(payload, &req, &state.config.server).await?;
    let shape = match endpoint {
        Endpoint::Embeddings => spend::Shape::Embeddings,
        Endpoint::Chat | Endpoint::Completions => spend::Shape::OpenAi,
    };
    let (spend, body) = spend::of(
        super::ollama::key(&req).as_ref(),
        &state.config,
        body,
        shape,
    )?;
    let request = V1Request::parse(&body)?;
    let streams = request.streams() && endpoint.can_stream();
    let model = request.model();
    match routed::admit(
        &req,
        &state,
        endpoint.path(),
        model,
        started,
        streams,
        spend,
    )? {
        Routed::Ollama(to) => {
            let (config, request_id, record) = to.into_parts();
            let raw = body.clone();
            v1::to_ollama(
                &client,
                &req,
                config,
                &request_id,
                endpoint,
                &request,
                raw,
                record,
            )
            .await
        }
        Routed::OpenAi(call, record) => {
            v1::to_openai(&client, call, endpoint, &request, record).await
        }
    }
}
