//! The usage report of `GET /usage` and `ollama-gateway usage`: every configured window of
//! every team and identity, its used tokens (settled plus in flight), limit and reset time;
//! the table the CLI prints of it; and the budget mistakes `check-config` warns about.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::clock::{Calendar, Clock};
use super::store::{MemoryStore, StoreError, StoredUsage, UsageStore};
use super::{LocalLedger, Scope, Window, WindowSpec};
use crate::config::TokenLimits;
use crate::keys::KeyTable;

/// One window now. `resets_at` is RFC 3339 on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowUsage {
    pub used: u64,
    pub limit: u64,
    #[serde(with = "rfc3339")]
    pub resets_at: Timestamp,
}

/// A subject's windows by field name (`tokens_per_day`, ...); only configured ones.
pub type Windows = BTreeMap<String, WindowUsage>;

/// The whole report: teams by name (the `[[teams]]` entries), identities (keys and
/// networks) by id, each with only its own windows (`{}` when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub teams: BTreeMap<String, Windows>,
    pub keys: BTreeMap<String, Windows>,
}

/// The report of `table`'s budgets as `ledger` holds them now, read in one call so that
/// every number is of the same instant.
pub fn build(table: &KeyTable, ledger: &dyn super::Ledger) -> Report {
    let mut report = Report::default();
    let mut specs: Vec<WindowSpec> = Vec::new();
    for (name, windows) in table.teams() {
        report.teams.insert(name.to_string(), Windows::new());
        specs.extend(windows.iter().cloned());
    }
    for identity in table.identities() {
        report.keys.insert(identity.id.to_string(), Windows::new());
        // An identity's windows are its own, then its team's: the team's are reported
        // under the team.
        specs.extend(identity.budget.own().cloned());
    }
    for state in ledger.read(&specs) {
        let section = match state.spec.subject.scope {
            Scope::Team => &mut report.teams,
            Scope::Key => &mut report.keys,
        };
        section
            .entry(state.spec.subject.name.to_string())
            .or_default()
            .insert(
                state.spec.window.field().to_string(),
                WindowUsage {
                    used: state.used,
                    limit: state.spec.limit,
                    resets_at: state.resets_at,
                },
            );
    }
    report
}

/// The report of a stopped gateway: the usage rows its store held (`rows`, as
/// [`super::RedbStore::read_file`] reads them) counted in `calendar`'s periods at
/// `clock`'s now. Minute buckets are never stored: a stopped gateway's are full.
pub fn from_stored(
    table: &KeyTable,
    rows: &[StoredUsage],
    clock: Arc<dyn Clock>,
    calendar: Calendar,
) -> Result<Report, StoreError> {
    let store = MemoryStore::default();
    store.write(rows)?;
    let ledger = LocalLedger::open(clock, calendar, Arc::new(store))?;
    Ok(build(table, &ledger))
}

const HEADER: [&str; 7] = [
    "SCOPE",
    "NAME",
    "WINDOW",
    "USED",
    "LIMIT",
    "REMAINING",
    "RESETS_AT",
];

impl Report {
    /// The report as an aligned text table, one row per window (teams, then keys; by
    /// name; minute, day, month), `-` in the window columns of a key without windows of
    /// its own. Reset times are shown to the second, rounded up.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 7]> = vec![HEADER.map(String::from)];
        for (scope, section) in [(Scope::Team, &self.teams), (Scope::Key, &self.keys)] {
            for (name, windows) in section {
                if windows.is_empty() {
                    let dash = || "-".to_string();
                    rows.push([
                        scope.word().into(),
                        name.clone(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                    ]);
                    continue;
                }
                let mut ordered: Vec<(&String, &WindowUsage)> = windows.iter().collect();
                ordered.sort_by_key(|(field, _)| Window::from_field(field));
                for (field, w) in ordered {
                    rows.push([
                        scope.word().into(),
                        name.clone(),
                        field.clone(),
                        w.used.to_string(),
                        w.limit.to_string(),
                        w.limit.saturating_sub(w.used).to_string(),
                        to_the_second(w.resets_at).to_string(),
                    ]);
                }
            }
        }
        let mut widths = [0usize; 7];
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (n, (cell, width)) in row.iter().zip(widths).enumerate() {
                if n + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `at` rounded up to the whole second (a reset is never shown earlier than it is).
fn to_the_second(at: Timestamp) -> Timestamp {
    let round = jiff::TimestampRound::new()
        .smallest(jiff::Unit::Second)
        .mode(jiff::RoundMode::Ceil);
    at.round(round).unwrap_or(at)
}

/// Budgets that a request can never fit, as `check-config` warns about them: an output
/// cap (`max_output_tokens`) larger than a window's whole limit, of an identity (its own
/// windows and its team's) or of the `[limits]` defaults; and, for an identity without a
/// cap, a `default_output_reservation` larger than a window (every request that asks for
/// no output limit reserves it).
pub fn never_fitting(
    table: &KeyTable,
    defaults: &TokenLimits,
    default_reservation: u64,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(cap) = defaults.max_output_tokens {
        for (window, limit) in Window::ALL.into_iter().zip(defaults.windows()) {
            if let Some(limit) = limit.filter(|l| cap > *l) {
                warnings.push(format!(
                    "[limits]: a request asking for its whole output cap (max_output_tokens = {cap}) can never fit {} = {limit} of a key that names neither",
                    window.field()
                ));
            }
        }
    }
    for identity in table.identities() {
        let budget = &identity.budget;
        let (reserve, what) = match budget.max_output_tokens {
            Some(cap) => (
                cap,
                format!("a request asking for its whole output cap (max_output_tokens = {cap})"),
            ),
            None => (
                default_reservation,
                format!("a request asking for no output limit (it reserves [limits] default_output_reservation = {default_reservation})"),
            ),
        };
        for spec in budget.windows.iter().filter(|s| reserve > s.limit) {
            warnings.push(format!(
                "{what} can never fit {} = {} of {} {}{}",
                spec.window.field(),
                spec.limit,
                spec.subject.scope.word(),
                spec.subject.name,
                match spec.subject.scope {
                    Scope::Key => String::new(),
                    Scope::Team => format!(" (key {})", identity.id),
                }
            ));
        }
    }
    warnings
}

/// A timestamp as RFC 3339 text (jiff's Display and FromStr).
mod rfc3339 {
    use jiff::Timestamp;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(at)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::{Ledger, ManualClock};
    use super::*;
    use crate::config::Limits;
    use crate::limits::LimiterPool;

    const KEYS: &str = r#"
[[teams]]
name = "alpha"
tokens_per_minute = 600
tokens_per_day = 100000

[[teams]]
name = "idle"

[[keys]]
id = "alpha-ci"
team = "alpha"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
tokens_per_day = 5000
max_output_tokens = 800

[[keys]]
id = "beta-dev"
team = "beta"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"

[[networks]]
id = "lab"
team = "alpha"
cidrs = ["10.0.0.0/8"]
tokens_per_month = 700
"#;

    fn table(text: &str, defaults: Limits) -> KeyTable {
        KeyTable::parse(
            text,
            Path::new("keys.toml"),
            defaults,
            &LimiterPool::default(),
        )
        .unwrap()
    }

    fn defaults() -> Limits {
        crate::config::Config::load(None, &std::collections::HashMap::new())
            .unwrap()
            .limits
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn windows_of<'a>(t: &'a KeyTable, id: &str) -> &'a [WindowSpec] {
        &t.identities()
            .into_iter()
            .find(|k| &*k.id == id)
            .unwrap()
            .budget
            .windows
    }

    #[test]
    fn every_configured_window_with_used_limit_and_reset() {
        let t = table(KEYS, defaults());
        let clock = Arc::new(ManualClock::new(ts("2026-12-02T10:00:00Z")));
        let c: Arc<dyn Clock> = clock.clone();
        let ledger = LocalLedger::open(
            c,
            Calendar::named("+08:00").unwrap(),
            Arc::new(MemoryStore::default()),
        )
        .unwrap();
        let hold = ledger.reserve(windows_of(&t, "alpha-ci"), 300).unwrap();
        let in_flight = build(&t, &ledger);
        assert_eq!(in_flight.keys["alpha-ci"]["tokens_per_day"].used, 300);
        ledger.settle(hold, 120);
        let r = build(&t, &ledger);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "teams": {
                    "alpha": {
                        "tokens_per_minute": {"used": 120, "limit": 600, "resets_at": "2026-12-02T10:00:12Z"},
                        "tokens_per_day": {"used": 120, "limit": 100000, "resets_at": "2026-12-02T16:00:00Z"},
                    },
                    "idle": {},
                },
                "keys": {
                    "alpha-ci": {
                        "tokens_per_day": {"used": 120, "limit": 5000, "resets_at": "2026-12-02T16:00:00Z"},
                    },
                    "beta-dev": {},
                    "lab": {
                        "tokens_per_month": {"used": 0, "limit": 700, "resets_at": "2026-12-31T16:00:00Z"},
                    },
                },
            })
        );
        // The text round-trips, as the CLI reads it from a running gateway.
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // The minute bucket refills: 10 tokens a second.
        clock.advance(Duration::from_secs(5));
        let later = build(&t, &ledger);
        assert_eq!(later.teams["alpha"]["tokens_per_minute"].used, 70);
        assert_eq!(later.teams["alpha"]["tokens_per_day"].used, 120);
    }

    #[test]
    fn a_stopped_gateways_report_from_its_stored_rows() {
        let t = table(KEYS, defaults());
        let row = |scope, name: &str, window, period, used| StoredUsage {
            scope,
            name: name.into(),
            window,
            period,
            used,
        };
        let rows = [
            row(Scope::Team, "alpha", Window::Day, 20261202, 900),
            // Yesterday's usage does not count today.
            row(Scope::Key, "alpha-ci", Window::Day, 20261201, 4000),
            row(Scope::Key, "lab", Window::Month, 202612, 650),
        ];
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(ts("2026-12-02T23:30:00Z")));
        let r = from_stored(&t, &rows, clock, Calendar::named("UTC").unwrap()).unwrap();
        assert_eq!(r.teams["alpha"]["tokens_per_day"].used, 900);
        assert_eq!(r.teams["alpha"]["tokens_per_minute"].used, 0);
        assert_eq!(r.keys["alpha-ci"]["tokens_per_day"].used, 0);
        assert_eq!(r.keys["lab"]["tokens_per_month"].used, 650);
        assert_eq!(
            r.keys["lab"]["tokens_per_month"].resets_at,
            ts("2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn the_table_has_a_row_per_window_in_window_order() {
        let t = table(KEYS, defaults());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(ts("2026-12-02T10:00:00.25Z")));
        let ledger =
            LocalLedger::with_memory_store(Arc::clone(&clock), Calendar::named("UTC").unwrap());
        let hold = ledger.reserve(windows_of(&t, "lab"), 7).unwrap();
        ledger.settle(hold, 7);
        let text = build(&t, &ledger).table();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec![
                    "SCOPE",
                    "NAME",
                    "WINDOW",
                    "USED",
                    "LIMIT",
                    "REMAINING",
                    "RESETS_AT"
                ],
                vec![
                    "team",
                    "alpha",
                    "tokens_per_minute",
                    "7",
                    "600",
                    "593",
                    "2026-12-02T10:00:01Z"
                ],
                vec![
                    "team",
                    "alpha",
                    "tokens_per_day",
                    "7",
                    "100000",
                    "99993",
                    "2026-12-03T00:00:00Z"
                ],
                vec!["team", "idle", "-", "-", "-", "-", "-"],
                vec![
                    "key",
                    "alpha-ci",
                    "tokens_per_day",
                    "0",
                    "5000",
                    "5000",
                    "2026-12-03T00:00:00Z"
                ],
                vec!["key", "beta-dev", "-", "-", "-", "-", "-"],
                vec![
                    "key",
                    "lab",
                    "tokens_per_month",
                    "7",
                    "700",
                    "693",
                    "2027-01-01T00:00:00Z"
                ],
            ]
        );
        // Columns are aligned: every row's WINDOW starts where the header's does.
        let at = text.lines().next().unwrap().find("WINDOW").unwrap();
        for line in text.lines().skip(1) {
            assert_ne!(line.as_bytes()[at], b' ', "{line}");
            assert_eq!(line.as_bytes()[at - 1], b' ', "{line}");
        }
    }

    #[test]
    fn caps_and_reservations_larger_than_a_window_are_named() {
        let mut d = defaults();
        d.tokens.max_output_tokens = Some(2000);
        d.tokens.tokens_per_minute = Some(1500);
        let keys = r#"
[[teams]]
name = "alpha"
tokens_per_minute = 500

[[keys]]
id = "x"
team = "alpha"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
tokens_per_minute = 5000
max_output_tokens = 1024

[[keys]]
id = "fits"
team = "solo"
sha256 = "2222222222222222222222222222222222222222222222222222222222222222"
tokens_per_minute = 5000
max_output_tokens = 1024
"#;
        let t = table(keys, d);
        let warnings = never_fitting(&t, &d.tokens, 1024);
        assert_eq!(
            warnings,
            [
                "[limits]: a request asking for its whole output cap (max_output_tokens = 2000) can never fit tokens_per_minute = 1500 of a key that names neither",
                "a request asking for its whole output cap (max_output_tokens = 1024) can never fit tokens_per_minute = 500 of team alpha (key x)",
            ]
        );
        let plain = r#"
[[keys]]
id = "small"
team = "t"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
tokens_per_day = 1000
"#;
        let t = table(plain, defaults());
        assert_eq!(
            never_fitting(&t, &TokenLimits::default(), 1024),
            ["a request asking for no output limit (it reserves [limits] default_output_reservation = 1024) can never fit tokens_per_day = 1000 of key small"]
        );
        assert!(never_fitting(&t, &TokenLimits::default(), 1000).is_empty());
    }
}
