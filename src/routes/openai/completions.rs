//! `POST /v1/completions`: OpenAI's legacy completions (what code completion tools
//! use), relayed to the model's upstream.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::v1::Endpoint;

pub async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    super::relay(Endpoint::Completions, req, payload, state, client).await
}
