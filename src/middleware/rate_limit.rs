//! Per-key limits: an in-flight slot (held until the response body ends) and a token from
//! the key's bucket. Answers carry the IETF draft `RateLimit-Policy` / `RateLimit` headers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage as _};
use bytes::Bytes;

use crate::keys::ApiKey;
use crate::limits::{self, InFlight};

pin_project_lite::pin_project! {
    /// A response body that holds its request's in-flight slot until it is dropped.
    struct Guarded<B> {
        #[pin]
        body: B,
        slot: InFlight,
    }
}

impl<B: MessageBody> MessageBody for Guarded<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let Some(key) = req.extensions().get::<Arc<ApiKey>>().cloned() else {
        // Public paths carry no key and are not limited.
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    // The slot first: a request refused for concurrency does not spend a token.
    let slot = match InFlight::acquire(&key) {
        Ok(slot) => slot,
        Err(e) => return Ok(super::refuse::<()>(req, e).await.map_into_boxed_body()),
    };
    let policy = match limits::take(&key) {
        Ok(policy) => policy,
        Err(e) => return Ok(super::refuse::<()>(req, e).await.map_into_boxed_body()),
    };
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::try_from(policy.policy_header()) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::try_from(policy.state_header()) {
        headers.insert(RATELIMIT, v);
    }
    Ok(res.map_body(|_, body| BoxBody::new(Guarded { body, slot })))
}
