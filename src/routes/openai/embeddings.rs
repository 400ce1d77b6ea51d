//! `POST /v1/embeddings`: OpenAI's embeddings, relayed to the model's upstream.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::v1::Endpoint;

pub async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    super::relay(Endpoint::Embeddings, req, payload, state, client).await
}
