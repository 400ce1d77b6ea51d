//! `GET /usage` on the admin listener: every team's and identity's token windows now (see
//! [`crate::budget::report`]). Like /metrics there: plain HTTP, no key.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::budget::report;
use crate::state::AppState;

/// `GET /usage`: the report as JSON, from the keys in force and the ledger.
pub async fn usage(state: web::Data<AppState>) -> HttpResponse {
    let report = report::build(&state.keys.table(), state.ledger.as_ref());
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(report)
}
