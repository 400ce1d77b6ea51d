//! What every worker shares, built once before the server starts: below the routes, the
//! middleware and the server, which all read it (and none of which it knows).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::allowlist::Allowlist;
use crate::budget::{Ledger, LocalLedger};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::keys::Keys;
use crate::limits::AuthThrottle;
use crate::metrics::Metrics;

/// State shared by all workers, built once before the server starts.
pub struct AppState {
    pub config: Arc<Config>,
    pub keys: Arc<Keys>,
    pub throttle: Arc<AuthThrottle>,
    pub allowlist: Allowlist,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// The OpenAI-compatible upstreams' model lists, cached.
    pub catalog: Catalog,
    /// The Ollama upstream's name, interned once for metric labels.
    pub ollama_label: Arc<str>,
    /// Token budgets' state: reservations and usage.
    pub ledger: Arc<dyn Ledger>,
    /// The same ledger as this process keeps it (its store's health, for metrics).
    pub local_ledger: Arc<LocalLedger>,
}

/// The last readiness result and when it was taken (`/readyz` reuses it for a moment).
#[derive(Default)]
pub struct Readiness(pub(crate) Mutex<Option<(Instant, Result<(), String>)>>);
