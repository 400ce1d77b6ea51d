//! Giving memory back to the OS once a burst is over.
//!
//! jemalloc (the binary's allocator) keeps what a burst freed in two places that nothing
//! empties while the gateway is idle: each thread's cache of freed objects (several MiB a
//! worker after a burst, with the cache sizes in `.cargo/config.toml`; jemalloc trims it only
//! as that thread allocates again) and the arenas' dirty pages (its background thread purges
//! those over `dirty_decay_ms`, 10 s). Measured (scenario S5, 500 streams opened and dropped):
//! RSS stayed at the burst's peak for 10 s, then came down to ~17 MiB against 11 MiB before
//! the burst, most of the difference the worker's cache.
//!
//! So each worker watches its own requests, and the first check that finds none in flight
//! and none started since the check before (one [`CHECK_EVERY`] without one), after some came,
//! trims: it empties its thread's cache and has every arena purge its dirty pages at once. A
//! worker that keeps serving, or holds a stream open, never trims; an idle one trims once per
//! burst. Off unless the binary turns it on ([`enable`]): the library's tests run on the
//! system allocator.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tikv_jemalloc_ctl::{arenas, background_thread, Access, AsName};

/// How often a worker looks at its request count.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Requests this thread has taken (the edge counts them).
    static REQUESTS: Cell<u64> = const { Cell::new(0) };
    /// Upstream requests on this thread not answered in full yet (a stream, while it runs).
    static IN_FLIGHT: Cell<u64> = const { Cell::new(0) };
    /// Whether this thread already runs its watch.
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Starts jemalloc's background thread (it purges dirty pages as they decay) and turns
/// trimming on, for workers started afterwards. The binary calls it, jemalloc being its
/// allocator, before its logging is set up (so a failure goes to stderr).
pub fn enable() {
    if let Err(e) = background_thread::write(true) {
        eprintln!("warning: jemalloc background thread not started ({e}); freed memory returns to the OS more slowly");
    }
    ENABLED.store(true, Ordering::Relaxed);
}

/// Counts one request on the calling worker.
#[inline]
pub fn count_request() {
    REQUESTS.with(|n| n.set(n.get().wrapping_add(1)));
}

/// An upstream request began on the calling worker (its record was made).
#[inline]
pub fn upstream_started() {
    IN_FLIGHT.with(|n| n.set(n.get() + 1));
}

/// An upstream request on the calling worker ended (its record was completed).
#[inline]
pub fn upstream_ended() {
    IN_FLIGHT.with(|n| n.set(n.get().saturating_sub(1)));
}

/// Starts the calling worker's watch (once per thread, however many Apps it builds), if
/// trimming is on. Must run on the worker's runtime.
pub fn watch_worker() {
    if !ENABLED.load(Ordering::Relaxed) || WATCHING.with(|w| w.replace(true)) {
        return;
    }
    actix_rt::spawn(async {
        let mut every = actix_rt::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = Watch::default();
        loop {
            every.tick().await;
            let busy = IN_FLIGHT.with(Cell::get) > 0;
            if watch.idle_after_work(REQUESTS.with(Cell::get), busy) {
                trim();
            }
        }
    });
}

/// What a worker's watch remembers between two checks.
#[derive(Default)]
struct Watch {
    seen: u64,
    /// Requests came since the last trim (none before the first request: nothing to give back).
    worked: bool,
}

impl Watch {
    /// Takes the request count at a check, and whether a request is in flight; says whether
    /// to trim now.
    fn idle_after_work(&mut self, count: u64, busy: bool) -> bool {
        if count != self.seen {
            self.seen = count;
            self.worked = true;
            false
        } else if busy {
            false
        } else {
            std::mem::take(&mut self.worked)
        }
    }
}

/// Empties the calling thread's cache into the arenas, then has every arena purge its dirty
/// pages now. Errors (a build of jemalloc without a control, an arena index not in use) leave
/// the memory to jemalloc's own decay.
fn trim() {
    // Turning a thread's cache off flushes it; turning it on again starts an empty one.
    let cache = b"thread.tcache.enabled\0".name();
    if cache.write(false).is_ok() {
        let _ = cache.write(true);
    }
    // A decay time of 0 purges an arena's dirty pages at once. The time put back is the
    // arenas' default (which nothing changes), not the arena's own as read here: two workers
    // trimming at once would otherwise read each other's 0 and could leave it in place.
    let (Ok(count), Ok(default)) = (
        arenas::narenas::read(),
        Access::<isize>::read(b"arenas.dirty_decay_ms\0".name()),
    ) else {
        return;
    };
    for arena in 0..count {
        let name = format!("arena.{arena}.dirty_decay_ms\0");
        let decay = name.as_bytes().name();
        if decay.write(0isize).is_ok() {
            let _ = decay.write(default);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Watch;
    use tikv_jemalloc_ctl::{Access, AsName};

    #[test]
    fn trims_at_once_leave_every_arena_its_decay_time() {
        // jemalloc answers its controls here too (the test binary allocates with the system
        // allocator, so its arenas hold nothing).
        let default: isize = b"arenas.dirty_decay_ms\0".name().read().unwrap();
        assert!(default > 0, "{default}");
        let trims: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..200).for_each(|_| super::trim())))
            .collect();
        for t in trims {
            t.join().unwrap();
        }
        // Arena 0 always exists; the others only once a thread was given them.
        let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap();
        let mut checked = 0;
        for arena in 0..arenas {
            let name = format!("arena.{arena}.dirty_decay_ms\0");
            if let Ok(decay) = Access::<isize>::read(name.as_bytes().name()) {
                assert_eq!(decay, default, "arena {arena}");
                checked += 1;
            }
        }
        assert!(checked >= 1);
    }

    #[test]
    fn trims_once_after_work_then_waits_for_more() {
        let mut w = Watch::default();
        assert!(!w.idle_after_work(0, false), "no request yet");
        assert!(!w.idle_after_work(0, false));
        assert!(!w.idle_after_work(5, false), "serving");
        assert!(!w.idle_after_work(9, false), "still serving");
        assert!(w.idle_after_work(9, false), "the first idle check trims");
        assert!(!w.idle_after_work(9, false), "and only once");
        assert!(!w.idle_after_work(10, false));
        assert!(w.idle_after_work(10, false));
    }

    #[test]
    fn an_open_stream_is_work() {
        let mut w = Watch::default();
        assert!(!w.idle_after_work(1, true), "a stream began");
        assert!(!w.idle_after_work(1, true), "no new request, but it runs");
        assert!(!w.idle_after_work(1, true));
        assert!(
            w.idle_after_work(1, false),
            "it ended: the next check trims"
        );
        assert!(!w.idle_after_work(1, false));
    }
}
