//! Per-key limits: an in-flight slot (held until the response body ends) and a token from
//! the key's bucket. Answers carry the IETF draft `RateLimit-Policy` / `RateLimit` headers.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{HeaderName, HeaderValue};
use bytes::Bytes;

use crate::error::{GatewayError, RatePolicy};
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

/// What a request admitted by the limits holds: its in-flight slot and the bucket's state
/// (nothing on public paths, which carry no key and are not limited).
pub struct Admission(Option<(InFlight, RatePolicy)>);

/// Takes the key's in-flight slot, then a token from its bucket. The slot comes first, so a
/// request refused for concurrency does not spend a token.
pub fn admit(key: Option<&ApiKey>) -> Result<Admission, GatewayError> {
    let Some(key) = key else {
        return Ok(Admission(None));
    };
    let slot = InFlight::acquire(&key.quota)?;
    let policy = limits::take(&key.quota)?;
    Ok(Admission(Some((slot, policy))))
}

impl Admission {
    /// Adds the RateLimit headers to the answer; its body keeps the slot until it ends.
    pub fn apply<B: MessageBody + 'static>(
        self,
        mut res: ServiceResponse<B>,
    ) -> ServiceResponse<BoxBody> {
        let Some((slot, policy)) = self.0 else {
            return res.map_into_boxed_body();
        };
        let headers = res.headers_mut();
        if let Ok(v) = HeaderValue::try_from(policy.policy_header()) {
            headers.insert(RATELIMIT_POLICY, v);
        }
        if let Ok(v) = HeaderValue::try_from(policy.state_header()) {
            headers.insert(RATELIMIT, v);
        }
        res.map_body(|_, body| BoxBody::new(Guarded { body, slot }))
    }
}
