//! `POST /api/embed` and the legacy `POST /api/embeddings`: to Ollama as they came; to an
//! OpenAI-compatible upstream as `POST {base_url}/embeddings`.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::Either;

use crate::error::GatewayError;
use crate::routes::ollama::key;
use crate::routes::routed::{self, Routed};
use crate::routes::spend;
use crate::state::AppState;
use crate::translate::embed::{EmbedRequest, Endpoint};
use crate::upstream::openai;

pub async fn embed(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    handle(Endpoint::Embed, req, payload, state, client).await
}

pub async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    handle(Endpoint::Legacy, req, payload, state, client).await
}

async fn handle(
    endpoint: Endpoint,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = crate::routes::started(&req);
    let body = crate::routes::body::read_json(payload, &req, &state.config.server).await?;
    let shape = spend::Shape::Ollama { generates: false };
    let (spend, body) = spend::of(key(&req).as_ref(), &state.config, body, shape)?;
    let embed = EmbedRequest::parse(&body)?;
    let (label, uri) = match endpoint {
        Endpoint::Embed => ("/api/embed", &state.config.ollama.embed_uri),
        Endpoint::Legacy => ("/api/embeddings", &state.config.ollama.embeddings_uri),
    };
    // One await of either upstream's future, after the admission's temporaries are gone.
    let call = match routed::admit(&req, &state, label, embed.model(), started, false, spend)? {
        Routed::Ollama(to) => Either::Left(to.forward(&client, &req, uri, body.clone())),
        Routed::OpenAi(call, record) => {
            Either::Right(openai::embed(&client, call, &embed, endpoint, record))
        }
    };
    call.await
}
