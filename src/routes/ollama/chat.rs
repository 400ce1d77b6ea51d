//! `POST /api/chat`: read the body, pick the upstream by model, hand over.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::Either;

use crate::error::GatewayError;
use crate::routes::ollama::key;
use crate::routes::routed::{self, Routed};
use crate::routes::spend;
use crate::state::AppState;
use crate::translate::ollama::{ChatRequest, Shape};
use crate::upstream::openai;

pub async fn chat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = crate::routes::started(&req);
    let body = crate::routes::body::read_json(payload, &req, &state.config.server).await?;
    let shape = spend::Shape::Ollama { generates: true };
    let (spend, body) = spend::of(key(&req).as_ref(), &state.config, body, shape)?;
    let chat = ChatRequest::parse(&body)?;
    let (model, streams) = (chat.model(), chat.streams());
    // One await of either upstream's future, after the admission's temporaries are gone.
    let call = match routed::admit(&req, &state, "/api/chat", model, started, streams, spend)? {
        Routed::Ollama(to) => {
            let uri = &state.config.ollama.chat_uri;
            Either::Left(to.forward(&client, &req, uri, body.clone()))
        }
        Routed::OpenAi(call, record) => {
            Either::Right(openai::forward(&client, call, &chat, Shape::Chat, record))
        }
    };
    call.await
}
