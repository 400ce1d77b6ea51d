//! Prometheus metrics. Handles are resolved once at start-up and cached, so the request
//! path never hashes label values.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Every reason a request can be rejected by the gateway itself (the `reason` label).
pub const REJECTION_REASONS: [&str; 14] = [
    "ip",
    "auth",
    "auth_throttled",
    "rate_limit",
    "in_flight",
    "model_not_allowed",
    "body_too_large",
    "header_too_large",
    "body_timeout",
    "body_read",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "other",
];

/// The gateway's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    rejections: Vec<IntCounter>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let vec = IntCounterVec::new(
            Opts::new(
                "gateway_rejections_total",
                "Requests the gateway refused before any upstream work, by reason.",
            ),
            &["reason"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        let rejections = REJECTION_REASONS
            .iter()
            .map(|r| vec.with_label_values(&[r]))
            .collect();
        let _ = registry.register(Box::new(vec));
        Self {
            registry,
            rejections,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn index(reason: &str) -> usize {
        REJECTION_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REJECTION_REASONS.len() - 1)
    }

    /// Counts one rejection; unknown reasons count as `other`.
    pub fn rejected(&self, reason: &str) {
        if let Some(c) = self.rejections.get(Self::index(reason)) {
            c.inc();
        }
    }

    /// The count for `reason` so far.
    pub fn rejections(&self, reason: &str) -> u64 {
        self.rejections
            .get(Self::index(reason))
            .map_or(0, IntCounter::get)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric definitions are constants; a failure to build one is a programming error caught
/// by the unit test below, so at run time this is never reached.
fn unreachable_metric() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new("gateway_invalid_metric", "never used"),
        &["reason"],
    )
    .unwrap_or_else(|_| std::process::abort())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let m = Metrics::new();
        m.rejected("auth");
        m.rejected("auth");
        m.rejected("nonsense");
        assert_eq!(m.rejections("auth"), 2);
        assert_eq!(m.rejections("other"), 1);
        assert_eq!(m.rejections("ip"), 0);
        let families = m.registry().gather();
        assert_eq!(families[0].name(), "gateway_rejections_total");
    }
}
