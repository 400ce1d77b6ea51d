//! The ledger of one gateway process: every window's state in memory behind one lock (a
//! reservation checks and takes room in up to six windows at once, so N concurrent
//! requests against room for k admit exactly k, whichever worker they run on), and the
//! day and month usage written to a [`UsageStore`] in batches by [`LocalLedger::flush`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::clock::{after, until, Calendar, Clock};
use super::store::{StoreError, StoredUsage, UsageStore};
use super::{
    Exhausted, Hold, HoldPart, HoldParts, Ledger, Subject, Window, WindowSpec, WindowState,
};

const MINUTE_NANOS: u128 = 60_000_000_000;

/// The period of a calendar window not used yet: no instant is in it, so the first look
/// starts the period it is made in.
const UNSTARTED: i64 = i64::MIN;

/// A window's live state.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Tokens taken from the bucket (what it lacks of full) as of `at`.
    Minute { taken: u64, at: Timestamp },
    /// A calendar period's settled usage and its reservations in flight.
    Calendar {
        period: i64,
        settled: u64,
        reserved: u64,
    },
}

/// Maps looked up several times a request: foldhash, not SipHash (their keys are names
/// from the keys file, never text a client chose).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Where a calendar window's settled usage is stored.
type StoredKey = (Subject, Window, i64);

/// The calendar periods of an instant, valid from it until the day ends: computed once a
/// day rather than for every window of every request (a time-zone conversion each).
#[derive(Debug, Clone, Copy)]
struct Periods {
    from: Timestamp,
    day: i64,
    day_end: Timestamp,
    month: i64,
    month_end: Timestamp,
}

impl Periods {
    fn of(calendar: &Calendar, at: Timestamp) -> Self {
        Self {
            from: at,
            day: calendar.period(Window::Day, at),
            day_end: calendar.period_end(Window::Day, at),
            month: calendar.period(Window::Month, at),
            month_end: calendar.period_end(Window::Month, at),
        }
    }

    fn holds(&self, at: Timestamp) -> bool {
        self.from <= at && at < self.day_end
    }

    fn period(&self, window: Window) -> i64 {
        match window {
            Window::Minute => 0,
            Window::Day => self.day,
            Window::Month => self.month,
        }
    }

    fn end(&self, window: Window, now: Timestamp) -> Timestamp {
        match window {
            Window::Minute => now,
            Window::Day => self.day_end,
            Window::Month => self.month_end,
        }
    }
}

#[derive(Default)]
struct Inner {
    periods: Option<Periods>,
    /// Where each window's state is in `states`. A window keeps its slot for the life of
    /// the ledger (windows are never removed), so a hold finds its windows again by slot,
    /// without hashing their names.
    slots: HashMap<Subject, [Option<usize>; 3]>,
    states: Vec<State>,
    /// The window in each slot, for writing its usage out.
    windows: Vec<(Subject, Window)>,
    /// Usage read from the store at start, by period: what a calendar window starts a
    /// period with (see `Inner::state_at`).
    stored: HashMap<StoredKey, u64>,
    /// Settled usage changed since the last flush, by slot and period.
    dirty: HashMap<(usize, i64), u64>,
}

/// This process's ledger.
pub struct LocalLedger {
    clock: Arc<dyn Clock>,
    calendar: Calendar,
    store: Arc<dyn UsageStore>,
    inner: Mutex<Inner>,
    writes: AtomicU64,
    write_errors: AtomicU64,
}

impl std::fmt::Debug for LocalLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLedger").finish_non_exhaustive()
    }
}

impl LocalLedger {
    /// A ledger that goes on from what `store` holds.
    pub fn open(
        clock: Arc<dyn Clock>,
        calendar: Calendar,
        store: Arc<dyn UsageStore>,
    ) -> Result<Self, StoreError> {
        let mut inner = Inner::default();
        for row in store.load()? {
            let subject = Subject {
                scope: row.scope,
                name: row.name.as_str().into(),
            };
            inner
                .stored
                .insert((subject, row.window, row.period), row.used);
        }
        Ok(Self {
            clock,
            calendar,
            store,
            inner: Mutex::new(inner),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    /// A ledger in memory only, on the system clock in UTC (tests, tools).
    pub fn in_memory() -> Self {
        Self::with_memory_store(
            Arc::new(super::SystemClock),
            Calendar::new(jiff::tz::TimeZone::UTC),
        )
    }

    /// A ledger whose store keeps nothing past the process.
    pub fn with_memory_store(clock: Arc<dyn Clock>, calendar: Calendar) -> Self {
        let store: Arc<dyn UsageStore> = Arc::new(super::MemoryStore::default());
        Self {
            clock,
            calendar,
            store,
            inner: Mutex::new(Inner::default()),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        }
    }

    pub fn calendar(&self) -> &Calendar {
        &self.calendar
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the usage settled since the last flush to the store; returns how many
    /// windows were written. On failure the usage stays to be written next time.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let (dirty, named) = {
            let mut inner = self.lock();
            let dirty = std::mem::take(&mut inner.dirty);
            if dirty.is_empty() {
                return Ok(0);
            }
            // Only the subjects' Arcs are cloned under the lock, which every reservation
            // takes: their names are copied out once it is released.
            let named: Vec<(Subject, Window, i64, u64)> = dirty
                .iter()
                .map(|(&(slot, period), &used)| {
                    let (subject, window) = &inner.windows[slot];
                    (subject.clone(), *window, period, used)
                })
                .collect();
            (dirty, named)
        };
        let batch: Vec<StoredUsage> = named
            .into_iter()
            .map(|(subject, window, period, used)| StoredUsage {
                scope: subject.scope,
                name: subject.name.to_string(),
                window,
                period,
                used,
            })
            .collect();
        match self.store.write(&batch) {
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                Ok(batch.len())
            }
            Err(e) => {
                self.write_errors.fetch_add(1, Ordering::Relaxed);
                let mut inner = self.lock();
                for (k, used) in dirty {
                    // A newer value settled meanwhile wins.
                    inner.dirty.entry(k).or_insert(used);
                }
                Err(e)
            }
        }
    }

    /// Batches written to the store, and failed writes, so far.
    pub fn store_writes(&self) -> (u64, u64) {
        (
            self.writes.load(Ordering::Relaxed),
            self.write_errors.load(Ordering::Relaxed),
        )
    }

    /// Flushes every `every` on a thread of its own until the handle is dropped, which
    /// flushes a last time.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) -> Flusher {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let ledger = Arc::clone(self);
        let thread = std::thread::Builder::new()
            .name("budget-store".into())
            .spawn(move || loop {
                let last = !matches!(
                    stopped.recv_timeout(every),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                if let Err(e) = ledger.flush() {
                    tracing::error!(error = %e, "token usage not written to the state store; retrying");
                }
                if last {
                    return;
                }
            })
            .ok();
        Flusher {
            stop: Some(stop),
            thread,
        }
    }
}

/// The flushing thread; dropping it flushes once more and waits for that.
pub struct Flusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    /// The calendar periods `now` is in.
    fn periods(&mut self, calendar: &Calendar, now: Timestamp) -> Periods {
        match self.periods {
            Some(p) if p.holds(now) => p,
            _ => *self.periods.insert(Periods::of(calendar, now)),
        }
    }

    /// What a read of `spec`'s window says at `now` when `used` of it is taken: when the
    /// minute bucket is full again, or when the calendar period ends.
    fn window_state(
        &mut self,
        spec: &WindowSpec,
        used: u64,
        now: Timestamp,
        calendar: &Calendar,
    ) -> WindowState {
        let resets_at = match spec.window {
            Window::Minute => after(now, minute_time(used, spec.limit)),
            w => self.periods(calendar, now).end(w, now),
        };
        WindowState {
            spec: spec.clone(),
            used,
            resets_at,
        }
    }

    /// The slot of `spec`'s window, made (its minute bucket full, its calendar period not
    /// started) on its first use at `now`.
    fn slot(&mut self, spec: &WindowSpec, now: Timestamp) -> usize {
        let mut known = self.slots_of(&spec.subject);
        self.slot_in(&mut known, spec, now)
    }

    /// The slots of `subject`'s minute, day and month windows (none for one not used yet).
    fn slots_of(&self, subject: &Subject) -> [Option<usize>; 3] {
        self.slots.get(subject).copied().unwrap_or_default()
    }

    /// [`Inner::slot`], given the slots `known` of `spec`'s subject (looked up once for
    /// all its windows), which a slot made now is added to.
    fn slot_in(
        &mut self,
        known: &mut [Option<usize>; 3],
        spec: &WindowSpec,
        now: Timestamp,
    ) -> usize {
        let index = match spec.window {
            Window::Minute => 0,
            Window::Day => 1,
            Window::Month => 2,
        };
        if let Some(slot) = known[index] {
            return slot;
        }
        let slot = self.states.len();
        self.states.push(match spec.window {
            Window::Minute => State::Minute { taken: 0, at: now },
            _ => State::Calendar {
                period: UNSTARTED,
                settled: 0,
                reserved: 0,
            },
        });
        self.slots.entry(spec.subject.clone()).or_default()[index] = Some(slot);
        known[index] = Some(slot);
        self.windows.push((spec.subject.clone(), spec.window));
        slot
    }

    /// The state of `spec`'s window at `now` (see [`Inner::state_at`]).
    fn state(&mut self, spec: &WindowSpec, now: Timestamp, calendar: &Calendar) -> &mut State {
        let slot = self.slot(spec, now);
        self.state_at(slot, spec.limit, now, calendar)
    }

    /// The state in `slot` (a window of `limit` tokens) at `now`: the minute bucket
    /// refilled, a calendar window moved on to the period `now` is in (or started, when
    /// new).
    fn state_at(
        &mut self,
        slot: usize,
        limit: u64,
        now: Timestamp,
        calendar: &Calendar,
    ) -> &mut State {
        let window = self.windows[slot].1;
        let period = self.periods(calendar, now).period(window);
        let state = &mut self.states[slot];
        match state {
            State::Minute { taken, at } => refill(taken, at, limit, now),
            State::Calendar { period: p, .. } if *p != period => {
                let key = (self.windows[slot].0.clone(), window, period);
                let settled = self.stored.get(&key).copied().unwrap_or(0);
                *state = State::Calendar {
                    period,
                    settled,
                    reserved: 0,
                };
            }
            State::Calendar { .. } => {}
        }
        state
    }
}

/// Whether two subjects are the same: by address first (a key's windows share their
/// subject's name), by value otherwise.
fn same(a: &Subject, b: &Subject) -> bool {
    a.scope == b.scope && (Arc::ptr_eq(&a.name, &b.name) || a.name == b.name)
}

/// Puts back what the bucket regained since `at` (`limit` a minute, continuously).
fn refill(taken: &mut u64, at: &mut Timestamp, limit: u64, now: Timestamp) {
    let elapsed = until(*at, now).as_nanos();
    if elapsed == 0 || *taken == 0 {
        *at = now.max(*at);
        return;
    }
    let limit = u128::from(limit.max(1));
    let regained = elapsed * limit / MINUTE_NANOS;
    if regained >= u128::from(*taken) {
        *taken = 0;
        *at = now;
        return;
    }
    *taken -= u64::try_from(regained).unwrap_or(0);
    // Only the whole tokens regained move the mark, so fractions are never lost.
    let used = regained * MINUTE_NANOS / limit;
    *at = after(*at, Duration::from_nanos(u64::try_from(used).unwrap_or(0)));
}

/// The time the bucket needs to regain `tokens`.
fn minute_time(tokens: u64, limit: u64) -> Duration {
    let nanos = u128::from(tokens) * MINUTE_NANOS;
    let nanos = nanos.div_ceil(u128::from(limit.max(1)));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn used(state: &State) -> u64 {
    match *state {
        State::Minute { taken, .. } => taken,
        State::Calendar {
            settled, reserved, ..
        } => settled.saturating_add(reserved),
    }
}

impl Ledger for LocalLedger {
    fn reserve(&self, windows: &[WindowSpec], tokens: u64) -> Result<Hold, Exhausted> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut parts = HoldParts::new();
        // The slots of the subject of the window before: a key's windows come together,
        // then its team's, so each subject is looked up once.
        let mut known: Option<(&Subject, [Option<usize>; 3])> = None;
        // The window with the least room once this reservation is in: (its index, its use,
        // its room).
        let mut tightest: Option<(usize, u64, u64)> = None;
        // One look at each window: taken when it has room, and the ones already taken put
        // back when a later one has none (refusals are the rare path).
        for (i, spec) in windows.iter().enumerate() {
            let mut slots = match known {
                Some((subject, slots)) if same(subject, &spec.subject) => slots,
                _ => inner.slots_of(&spec.subject),
            };
            let slot = inner.slot_in(&mut slots, spec, now);
            known = Some((&spec.subject, slots));
            let state = inner.state_at(slot, spec.limit, now, &self.calendar);
            let used = used(state);
            let never_fits = tokens > spec.limit;
            if never_fits || used.saturating_add(tokens) > spec.limit {
                for part in &parts {
                    match inner.state_at(part.slot, part.limit, now, &self.calendar) {
                        State::Minute { taken, .. } => *taken = taken.saturating_sub(tokens),
                        State::Calendar { reserved, .. } => {
                            *reserved = reserved.saturating_sub(tokens);
                        }
                    }
                }
                let retry_in = match spec.window {
                    Window::Minute if never_fits => minute_time(used, spec.limit),
                    Window::Minute => {
                        minute_time(used.saturating_add(tokens) - spec.limit, spec.limit)
                    }
                    w => until(now, inner.periods(&self.calendar, now).end(w, now)),
                };
                return Err(Exhausted {
                    spec: spec.clone(),
                    needed: tokens,
                    never_fits,
                    retry_in,
                });
            }
            let period = match state {
                State::Minute { taken, .. } => {
                    *taken = taken.saturating_add(tokens);
                    0
                }
                State::Calendar {
                    period, reserved, ..
                } => {
                    *reserved = reserved.saturating_add(tokens);
                    *period
                }
            };
            let after = used.saturating_add(tokens);
            let room = spec.limit.saturating_sub(after);
            if tightest.is_none_or(|(_, _, least)| room < least) {
                tightest = Some((i, after, room));
            }
            parts.push(HoldPart {
                limit: spec.limit,
                period,
                slot,
            });
        }
        let tightest =
            tightest.map(|(i, used, _)| inner.window_state(&windows[i], used, now, &self.calendar));
        Ok(Hold {
            tokens,
            parts,
            tightest,
            at: now,
        })
    }

    fn settle(&self, hold: Hold, tokens: u64) {
        let now = self.clock.now();
        let mut inner = self.lock();
        for part in hold.parts {
            // The window as it is now: a calendar one that moved on since the reservation
            // starts its new period from the store, without the reservation.
            let state = inner.state_at(part.slot, part.limit, now, &self.calendar);
            let changed = match state {
                State::Minute { taken, .. } => {
                    *taken = taken.saturating_sub(hold.tokens).saturating_add(tokens);
                    None
                }
                State::Calendar {
                    period,
                    settled,
                    reserved,
                } => {
                    if *period == part.period {
                        *reserved = reserved.saturating_sub(hold.tokens);
                    }
                    // Tokens count in the period they became known in.
                    *settled = settled.saturating_add(tokens);
                    Some((*period, *settled))
                }
            };
            if let Some((period, settled)) = changed {
                inner.dirty.insert((part.slot, period), settled);
            }
        }
    }

    fn read(&self, windows: &[WindowSpec]) -> Vec<WindowState> {
        let now = self.clock.now();
        let mut inner = self.lock();
        windows
            .iter()
            .map(|spec| {
                let used = used(inner.state(spec, now, &self.calendar));
                inner.window_state(spec, used, now, &self.calendar)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Budget, ManualClock, MemoryStore, Scope};
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(scope: Scope, name: &str, window: Window, limit: u64) -> WindowSpec {
        WindowSpec {
            subject: Subject {
                scope,
                name: name.into(),
            },
            window,
            limit,
        }
    }

    fn ledger(at: &str, tz: &str, store: Arc<MemoryStore>) -> (Arc<ManualClock>, LocalLedger) {
        let clock = Arc::new(ManualClock::new(ts(at)));
        let c: Arc<dyn Clock> = clock.clone();
        let l = LocalLedger::open(c, Calendar::named(tz).unwrap(), store).unwrap();
        (clock, l)
    }

    #[test]
    fn the_minute_bucket_refills_continuously() {
        let (clock, l) = ledger("2026-12-02T10:00:00Z", "UTC", Arc::default());
        let w = [spec(Scope::Key, "k", Window::Minute, 600)];
        let hold = l.reserve(&w, 600).unwrap();
        let err = l.reserve(&w, 10).unwrap_err();
        assert!(!err.never_fits);
        // 10 tokens come back every second.
        assert_eq!(err.retry_in, Duration::from_secs(1));
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.read(&w)[0].used, 595);
        clock.advance(Duration::from_millis(500));
        let second = l.reserve(&w, 10).unwrap();
        assert!(l.reserve(&w, 1).is_err());
        // Settled for less: the difference comes back at once.
        l.settle(hold, 100);
        assert_eq!(l.read(&w)[0].used, 100);
        l.settle(second, 10);
        clock.advance(Duration::from_secs(11));
        let s = &l.read(&w)[0];
        assert_eq!(s.used, 0);
        assert_eq!(s.resets_at, clock.now());
        // Fractions of a token are not lost between reads: 0.1 s is one token.
        l.reserve(&w, 5)
            .unwrap()
            .tokens
            .eq(&5)
            .then_some(())
            .unwrap();
        for _ in 0..5 {
            clock.advance(Duration::from_millis(100));
            let _ = l.read(&w);
        }
        assert_eq!(l.read(&w)[0].used, 0);
    }

    #[test]
    fn a_reservation_larger_than_the_limit_never_fits() {
        let (_, l) = ledger("2026-12-02T10:00:00Z", "UTC", Arc::default());
        let w = [spec(Scope::Team, "t", Window::Day, 100)];
        let err = l.reserve(&w, 101).unwrap_err();
        assert!(err.never_fits);
        assert_eq!(err.retry_in, Duration::from_secs(14 * 3600));
        assert_eq!(l.read(&w)[0].used, 0, "nothing was taken");
    }

    #[test]
    fn all_windows_or_none() {
        let (_, l) = ledger("2026-12-02T10:00:00Z", "UTC", Arc::default());
        let w = [
            spec(Scope::Key, "k", Window::Day, 1000),
            spec(Scope::Team, "t", Window::Day, 150),
        ];
        let a = l.reserve(&w, 100).unwrap();
        // The tightest window once the reservation is in: what a read would pick.
        assert_eq!(a.tightest.as_ref(), Budget::tightest(&l.read(&w)));
        assert_eq!(a.tightest.as_ref().unwrap().remaining(), 50);
        let err = l.reserve(&w, 100).unwrap_err();
        assert_eq!(err.spec.subject.scope, Scope::Team);
        // The key's day, taken before the team's refused, was given back.
        let states = l.read(&w);
        assert_eq!((states[0].used, states[1].used), (100, 100));
        // An overrun is charged; later requests wait.
        l.settle(a, 180);
        let states = l.read(&w);
        assert_eq!((states[0].used, states[1].used), (180, 180));
        assert_eq!(states[1].remaining(), 0);
        assert!(l.reserve(&w, 1).is_err());
    }

    #[test]
    fn day_and_month_edges_and_what_the_store_gets() {
        let store = Arc::new(MemoryStore::default());
        let (clock, l) = ledger("2026-12-31T23:59:00Z", "UTC", Arc::clone(&store));
        let w = [
            spec(Scope::Key, "k", Window::Day, 1000),
            spec(Scope::Key, "k", Window::Month, 5000),
        ];
        let a = l.reserve(&w, 300).unwrap();
        l.settle(a, 200);
        let b = l.reserve(&w, 300).unwrap();
        let states = l.read(&w);
        assert_eq!((states[0].used, states[1].used), (500, 500));
        assert_eq!(states[0].resets_at, ts("2027-01-01T00:00:00Z"));
        assert_eq!(states[1].resets_at, ts("2027-01-01T00:00:00Z"));
        clock.advance(Duration::from_secs(60));
        // A new day and month: the reservation in flight is not counted in them, but what
        // it spends is, once known.
        let states = l.read(&w);
        assert_eq!((states[0].used, states[1].used), (0, 0));
        l.settle(b, 50);
        let states = l.read(&w);
        assert_eq!((states[0].used, states[1].used), (50, 50));
        assert_eq!(l.flush().unwrap(), 4);
        let mut rows = store.load().unwrap();
        rows.sort_by_key(|r| (r.window, r.period));
        let got: Vec<(Window, i64, u64)> =
            rows.iter().map(|r| (r.window, r.period, r.used)).collect();
        assert_eq!(
            got,
            [
                (Window::Day, 20261231, 200),
                (Window::Day, 20270101, 50),
                (Window::Month, 202612, 200),
                (Window::Month, 202701, 50),
            ]
        );
        assert_eq!(l.flush().unwrap(), 0, "nothing new");
        // A restart goes on from the store.
        let clock2: Arc<dyn Clock> = clock.clone();
        let again = LocalLedger::open(clock2, Calendar::named("UTC").unwrap(), store).unwrap();
        let states = again.read(&w);
        assert_eq!((states[0].used, states[1].used), (50, 50));
    }

    #[test]
    fn a_day_ends_at_local_midnight_across_a_daylight_saving_change() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT.
        let (clock, l) = ledger("2026-03-08T06:30:00Z", "America/New_York", Arc::default());
        let w = [spec(Scope::Team, "t", Window::Day, 100)];
        let h = l.reserve(&w, 100).unwrap();
        l.settle(h, 100);
        let s = &l.read(&w)[0];
        // Midnight EDT on the 9th.
        assert_eq!(s.resets_at, ts("2026-03-09T04:00:00Z"));
        let err = l.reserve(&w, 1).unwrap_err();
        // 01:30 EST to midnight EDT: 21 h 30 min, on a day of 23 hours.
        assert_eq!(err.retry_in, Duration::from_secs(21 * 3600 + 30 * 60));
        clock.set(ts("2026-03-09T03:59:59Z"));
        assert!(l.reserve(&w, 1).is_err());
        clock.set(ts("2026-03-09T04:00:00Z"));
        assert!(l.reserve(&w, 1).is_ok());
    }

    #[test]
    fn exactly_k_of_n_concurrent_reservations() {
        let l = Arc::new(LocalLedger::in_memory());
        let w = Arc::new([
            spec(Scope::Key, "k", Window::Minute, 1_000_000),
            spec(Scope::Team, "t", Window::Day, 1000),
        ]);
        let admitted: usize = (0..8)
            .map(|_| {
                let (l, w) = (Arc::clone(&l), Arc::clone(&w));
                std::thread::spawn(move || {
                    (0..50)
                        .filter(|_| l.reserve(&w[..], 7).map(std::mem::forget).is_ok())
                        .count()
                })
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 1000 / 7);
    }
}
