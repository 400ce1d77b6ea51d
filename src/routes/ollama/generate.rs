//! `POST /api/generate`: to Ollama as it came (its load and unload included); to an
//! OpenAI-compatible upstream as the chat it stands for.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::Either;

use crate::error::GatewayError;
use crate::routes::ollama::key;
use crate::routes::routed::{self, Routed};
use crate::routes::spend;
use crate::state::AppState;
use crate::translate::generate::GenerateRequest;
use crate::upstream::openai;

pub async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = crate::routes::started(&req);
    let body = crate::routes::body::read_json(payload, &req, &state.config.server).await?;
    let shape = spend::Shape::Ollama { generates: true };
    let (spend, body) = spend::of(key(&req).as_ref(), &state.config, body, shape)?;
    // Moves the parsed fields, copies nothing: cheap even when the body goes to Ollama.
    let generate = GenerateRequest::parse(&body)?.into_chat();
    let (model, streams) = (generate.chat.model(), generate.chat.streams());
    // One await of either upstream's future, after the admission's temporaries are gone.
    let call = match routed::admit(
        &req,
        &state,
        "/api/generate",
        model,
        started,
        streams,
        spend,
    )? {
        Routed::Ollama(to) => {
            let uri = &state.config.ollama.generate_uri;
            Either::Left(to.forward(&client, &req, uri, body.clone()))
        }
        Routed::OpenAi(call, record) => {
            Either::Right(openai::generate(&client, call, &generate, record))
        }
    };
    call.await
}
