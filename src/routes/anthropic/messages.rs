//! `POST /v1/messages`: read the body's model and stream flag, check the key, and hand the
//! body over as it came to Ollama's Messages API. Only Ollama serves this API: a model of
//! an OpenAI-compatible upstream is refused (400) before any upstream is asked.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::catalog::{self, Route};
use crate::error::GatewayError;
use crate::routes::ollama::{key, may_use};
use crate::routes::routed::{self, Routed};
use crate::routes::spend;
use crate::state::AppState;
use crate::translate::anthropic::parse_request;

/// The `endpoint` label and the route's name in its refusals.
const ROUTE: &str = "/v1/messages";

pub async fn messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = crate::routes::started(&req);
    let body = crate::routes::body::read_json(payload, &req, &state.config.server).await?;
    let shape = spend::Shape::Anthropic;
    let (spend, body) = spend::of(key(&req).as_ref(), &state.config, body, shape)?;
    let request = parse_request(&body)?;
    let model = request.model.as_str();
    // A key that may not use the model hears so first, as on every route.
    may_use(key(&req).as_deref(), model)?;
    if let Route::OpenAi { upstream, .. } = catalog::route(&state.config, model) {
        return Err(GatewayError::ModelNotServedHere {
            model: model.chars().take(200).collect(),
            upstream: upstream.name.clone(),
            route: ROUTE,
        });
    }
    match routed::admit(&req, &state, ROUTE, model, started, request.stream, spend)? {
        Routed::Ollama(to) => to.messages(&client, &req, body, request.stream).await,
        // Routed by the same catalog as above: not reached, and refused if it were.
        Routed::OpenAi(call, record) => Err(record.fail(GatewayError::ModelNotServedHere {
            model: model.chars().take(200).collect(),
            upstream: call.upstream.name.clone(),
            route: ROUTE,
        })),
    }
}
