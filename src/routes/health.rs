//! Liveness: cheap, no key, no upstream.

use actix_web::HttpResponse;

use crate::error::JSON_UTF8;

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_UTF8)
        .insert_header(("cache-control", "no-store"))
        .body(r#"{"status":"ok"}"#)
}
