//! What the edge and the routes note about one request, in one entry of its extensions:
//! its id, the key it was admitted with, the token window its reservation left tightest,
//! and whether a `RequestRecord` took over its count and log line. One entry rather than
//! one per fact: each entry is boxed, and the fourth one grew the extensions' table
//! (measured with callgrind: ~1,000 instructions of every proxied request).

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Extensions;

use crate::budget::WindowState;
use crate::keys::ApiKey;
use crate::telemetry::RequestId;

#[derive(Debug)]
pub struct RequestContext {
    pub id: RequestId,
    /// When the request came in: the one clock read its duration, its deadlines and its
    /// body timeout start from (each read of the clock costs ~20 ns on a VM).
    pub started: Instant,
    /// The identity the edge admitted the request with (none: the trusted network, or a
    /// public probe path).
    pub key: Option<Arc<ApiKey>>,
    /// The window of the request's own reservation with the least room once it was in
    /// ([`crate::budget::Hold::tightest`]): what its answer's `x-ratelimit-*-tokens` say,
    /// without reading the ledger again, and when the ledger made it (the `now` of those
    /// headers: no second read of the clock).
    pub reserved: Option<(WindowState, jiff::Timestamp)>,
    /// A `RequestRecord` counts and logs the request, not the edge.
    pub recorded: bool,
}

impl RequestContext {
    pub fn new(id: RequestId) -> Self {
        Self {
            id,
            started: Instant::now(),
            key: None,
            reserved: None,
            recorded: false,
        }
    }

    /// The request's context, if the root span made one.
    pub fn of(extensions: &Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    /// When the request came in (now, for a request without a context).
    pub fn started(extensions: &Extensions) -> Instant {
        Self::of(extensions).map_or_else(Instant::now, |c| c.started)
    }

    /// Runs `f` on the request's context; one with a new id is made first if nothing made
    /// it yet (an App without the root span, as in some tests).
    pub fn update<R>(extensions: &mut Extensions, f: impl FnOnce(&mut Self) -> R) -> R {
        if let Some(context) = extensions.get_mut::<Self>() {
            return f(context);
        }
        let mut context = Self::new(RequestId::generate());
        let out = f(&mut context);
        extensions.insert(context);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_holds_what_each_step_notes() {
        let mut ext = Extensions::new();
        assert!(RequestContext::of(&ext).is_none());
        RequestContext::update(&mut ext, |c| c.recorded = true);
        let id = RequestContext::of(&ext).map(|c| c.id.clone());
        RequestContext::update(&mut ext, |c| assert!(c.recorded));
        assert_eq!(RequestContext::of(&ext).map(|c| c.id.clone()), id);
        assert!(RequestContext::of(&ext).is_some_and(|c| c.key.is_none()));
    }
}
