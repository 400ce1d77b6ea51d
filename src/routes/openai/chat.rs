//! `POST /v1/chat/completions`: OpenAI's Chat Completions, relayed to the model's upstream.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::v1::Endpoint;

pub async fn chat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    super::relay(Endpoint::Chat, req, payload, state, client).await
}
