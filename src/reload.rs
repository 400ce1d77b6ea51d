//! Picking up edits without a restart: the keys file and the TLS certificate are checked
//! every `server.reload_interval` (and at once on SIGHUP). A broken edit is logged and the
//! old keys or certificate stay in force. The same task sweeps stale limiter state.

use std::sync::Arc;
use std::time::Duration;

use crate::keys::Keys;
use crate::limits::{AuthThrottle, LimiterPool};
use crate::tls::CertStore;

/// How often stale limiter entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Everything that can change under a running gateway.
pub struct Reloader {
    pub keys: Arc<Keys>,
    pub cert: Arc<CertStore>,
    pub pool: Arc<LimiterPool>,
    pub throttle: Arc<AuthThrottle>,
}

impl Reloader {
    /// Reloads whatever changed; logs what happened (a check that found nothing new, at
    /// debug only).
    pub fn check(&self) {
        tracing::debug!("checking the keys file and the TLS certificate for changes");
        match self.keys.reload_if_changed() {
            Ok(Some(n)) => {
                let networks = self.keys.table().networks();
                tracing::info!(path = %self.keys.path().display(), keys = n, networks, "reloaded API keys")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "keys file not reloaded; the previous keys stay in force")
            }
        }
        match self.cert.reload_if_changed() {
            Ok(Some(fingerprint)) => {
                tracing::info!(path = %self.cert.paths().0.display(), %fingerprint, "reloaded TLS certificate")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in force")
            }
        }
    }

    pub fn sweep(&self) {
        self.pool.sweep();
        self.throttle.sweep();
    }

    /// Runs the periodic check and sweep on the current runtime until it shuts down.
    pub fn spawn(self: Arc<Self>, every: Duration) {
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_sweep = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                self.check();
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    self.sweep();
                    last_sweep = tokio::time::Instant::now();
                }
            }
        });
    }
}
