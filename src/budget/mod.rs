//! Token budgets: per key and per team, a minute bucket that refills continuously and
//! calendar day and month windows (in `[budgets] timezone`). A request that spends tokens
//! reserves its estimate in every window of its key and of its team, all or none, before
//! any upstream work ([`Ledger::reserve`]); when its answer ends the reservation is
//! replaced by the real count ([`Ledger::settle`]).
//!
//! The state sits behind [`Ledger`], so that gateway replicas can later share one (in
//! Redis) without a caller changing; [`LocalLedger`] is this process's, whose day and
//! month usage is written to a [`UsageStore`] (an embedded database under `[state] dir`)
//! off the request path, once a second.

pub mod clock;
pub mod estimate;
mod local;
pub mod report;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::local::{Flusher, LocalLedger};

/// How often settled usage is written to the store: at most this much is lost to `kill -9`.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
pub use self::store::{MemoryStore, RedbStore, StoredUsage, UsageStore};

/// A budget window, named as the keys file names its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// A bucket of `tokens_per_minute` that refills continuously.
    Minute,
    /// A calendar day in the budgets' time zone.
    Day,
    /// A calendar month in the budgets' time zone.
    Month,
}

impl Window {
    pub const ALL: [Self; 3] = [Self::Minute, Self::Day, Self::Month];

    /// The keys file's field name: `tokens_per_minute`, `tokens_per_day`, `tokens_per_month`.
    pub fn field(self) -> &'static str {
        match self {
            Self::Minute => "tokens_per_minute",
            Self::Day => "tokens_per_day",
            Self::Month => "tokens_per_month",
        }
    }

    pub fn from_field(field: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.field() == field)
    }
}

/// Whose budget a window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Team,
    Key,
}

impl Scope {
    /// As the 429 message and the store name it.
    pub fn word(self) -> &'static str {
        match self {
            Self::Team => "team",
            Self::Key => "key",
        }
    }
}

/// A team (by name) or an identity (a key's or a trusted network's id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    pub scope: Scope,
    pub name: Arc<str>,
}

/// One window of one subject, and its limit in tokens (> 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub subject: Subject,
    pub window: Window,
    pub limit: u64,
}

/// A window's state now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    pub spec: WindowSpec,
    /// Settled usage plus reservations in flight (for the minute bucket: what it lacks of
    /// full). May exceed `limit` after an overrun.
    pub used: u64,
    /// When the window resets: the next calendar day or month, or when the minute bucket
    /// is full again (now, if it is).
    pub resets_at: Timestamp,
}

impl WindowState {
    pub fn remaining(&self) -> u64 {
        self.spec.limit.saturating_sub(self.used)
    }
}

/// Why a reservation was refused: the first window without room for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub spec: WindowSpec,
    /// The tokens the request asked to reserve.
    pub needed: u64,
    /// The reservation is larger than the window's whole limit: it can never fit.
    pub never_fits: bool,
    /// When the window has room for the reservation (the minute bucket) or resets (a
    /// calendar window; for one that can never fit, when it resets).
    pub retry_in: Duration,
}

/// A reservation held in some windows until its request's answer ends.
#[derive(Debug)]
#[must_use = "a hold is settled when its answer ends"]
pub struct Hold {
    /// The tokens reserved.
    pub tokens: u64,
    pub(crate) parts: HoldParts,
    /// The window with the least room left once this reservation is in (the one
    /// `Budget::tightest` would pick from a read just after it), for the answer's
    /// `x-ratelimit-*-tokens`: one look at the ledger instead of a second read.
    pub tightest: Option<WindowState>,
    /// When the ledger made the reservation: the `now` that `tightest` is as of.
    pub at: Timestamp,
}

/// A hold's windows, inline: a key's and its team's are at most six.
pub(crate) type HoldParts = smallvec::SmallVec<[HoldPart; 6]>;

/// One window of a hold, by its place in the ledger: no name to clone and drop again.
#[derive(Debug)]
pub(crate) struct HoldPart {
    /// The window's limit when the reservation was made.
    pub(crate) limit: u64,
    /// The calendar period the reservation was counted in (0 for the minute bucket).
    pub(crate) period: i64,
    /// Where the ledger that made the hold keeps this window (its own index).
    pub(crate) slot: usize,
}

/// The budget state every replica would share: atomic reservations across windows, their
/// settlement, and reads. The one interface a shared (Redis) ledger implements.
pub trait Ledger: Send + Sync {
    /// Reserves `tokens` in each of `windows`, all or none.
    fn reserve(&self, windows: &[WindowSpec], tokens: u64) -> Result<Hold, Exhausted>;
    /// Replaces a reservation by the `tokens` really spent (more or less than reserved);
    /// `hold` is one this ledger made.
    fn settle(&self, hold: Hold, tokens: u64);
    /// The state of each of `windows` now, in their order.
    fn read(&self, windows: &[WindowSpec]) -> Vec<WindowState>;
}

/// An identity's budgets as the keys file sets them (its own and its team's), and its
/// output and context caps.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// The key's windows, then its team's.
    pub windows: Vec<WindowSpec>,
    /// The most output a request may ask for (`max_output_tokens`).
    pub max_output_tokens: Option<u64>,
    /// The largest `options.num_ctx` a request may ask for (`max_context`).
    pub max_context: Option<u64>,
}

impl Budget {
    /// The identity's own windows (not its team's, which come after them).
    pub fn own(&self) -> impl Iterator<Item = &WindowSpec> {
        self.windows
            .iter()
            .filter(|w| w.subject.scope == Scope::Key)
    }

    /// Whether requests of this identity are counted against any window.
    pub fn is_limited(&self) -> bool {
        !self.windows.is_empty()
    }

    /// Whether anything about a request's body must be looked at for this identity.
    pub fn applies(&self) -> bool {
        self.is_limited() || self.max_output_tokens.is_some() || self.max_context.is_some()
    }

    /// The output a request reserves and may generate: what it asked for (`asked`; none
    /// or a non-positive value means unlimited, as Ollama reads `num_predict`), clamped to
    /// `max_output_tokens`; none asked: `max_output_tokens`, else `default`.
    pub fn output(&self, asked: Option<i64>, default: u64) -> Output {
        let asked = asked.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0);
        match (asked, self.max_output_tokens) {
            (Some(n), Some(cap)) if n > cap => Output {
                reserve: cap,
                cap: Some(cap),
            },
            (Some(n), _) => Output {
                reserve: n,
                cap: None,
            },
            (None, Some(cap)) => Output {
                reserve: cap,
                cap: Some(cap),
            },
            (None, None) => Output {
                reserve: default,
                cap: None,
            },
        }
    }

    /// `options.num_ctx` clamped to `max_context`: `Some` when it must be rewritten.
    pub fn context(&self, asked: Option<i64>) -> Option<u64> {
        let cap = self.max_context?;
        let asked = asked?;
        (u64::try_from(asked).map_or(true, |n| n > cap)).then_some(cap)
    }

    /// The window with the least room left now (for `x-ratelimit-*-tokens`).
    pub fn tightest(states: &[WindowState]) -> Option<&WindowState> {
        states.iter().min_by_key(|s| s.remaining())
    }
}

/// The output part of a request's reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// Tokens of output the reservation holds.
    pub reserve: u64,
    /// `Some(cap)` when the request must be sent with its output limit set to `cap`
    /// (it asked for more, or for none).
    pub cap: Option<u64>,
}
