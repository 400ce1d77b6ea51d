//! Outermost layer: sees every answer, counts rejections by reason (the metrics hook).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::Error;

use crate::error::{Blame, GatewayError};

fn rejection(error: &Error) -> Option<&'static str> {
    let e = error.as_error::<GatewayError>()?;
    (e.blame() == Blame::Client).then(|| e.kind())
}

pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let state = super::state(&req);
    let result = next.call(req).await;
    let reason = match &result {
        Ok(res) => res.response().error().and_then(rejection),
        Err(e) => rejection(e),
    };
    if let (Some(reason), Some(state)) = (reason, state) {
        state.metrics.rejected(reason);
    }
    result
}
