//! Where log lines go: one shared buffer that a writer thread empties into the output.
//!
//! A thread that logs appends its line under a mutex and goes on; it never waits for a
//! `write(2)`. The writer thread is woken once when the buffer stops being empty, then lets
//! lines gather for [`PACE`] (or until [`HIGH_WATER`] bytes wait) and writes them all in one
//! go: one wake-up and one `write(2)` per pace, however few requests come. With a queue of
//! lines (tracing-appender's, before this) each line sent to an idle writer woke it: at one
//! request in flight the writer thread cost 13 µs of CPU per request, against under 1 µs
//! here, and under load each line was copied into an allocation of its own and sent through a
//! channel (~1,500 instructions a request more than appending it here).
//!
//! Nothing is dropped. When [`CAPACITY`] bytes wait (the output is slower than the logging),
//! threads that log wait for room. After the sink is closed (its [`SinkGuard`] dropped at
//! exit), lines are written straight to the output.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the writer lets lines gather after the first one: how late a line may reach the
/// log.
pub const PACE: Duration = Duration::from_millis(10);
/// Bytes waiting at which the writer stops gathering and writes.
pub const HIGH_WATER: usize = 256 * 1024;
/// Bytes waiting at which threads that log wait for room.
pub const CAPACITY: usize = 4 * 1024 * 1024;
/// A buffer that grew past this (a burst) is given back after it was written.
const KEEP_BYTES: usize = 1024 * 1024;

/// What threads that log hold: cheap to clone, one per writer of the tracing subscriber.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Held until exit: dropping it writes out what waits and stops the writer thread.
pub struct SinkGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines (or for more of them, while it paces).
    lines: Condvar,
    /// Threads that log wait here for room.
    room: Condvar,
    high_water: usize,
    capacity: usize,
}

struct State {
    waiting: Vec<u8>,
    writer: Phase,
    /// Threads waiting for room.
    blocked: usize,
    /// The guard was dropped: the writer writes what waits, then stops.
    closed: bool,
    /// The output, once the writer has stopped and left it here (the writer thread owns it
    /// before): lines are written to it directly then.
    after_close: Option<Box<dyn Write + Send>>,
}

/// What the writer thread is doing, so that a line wakes it only when it must.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a first line: the next line wakes it.
    Idle,
    /// Letting lines gather: a line that brings the buffer to the high water wakes it.
    Pacing,
    /// Writing (or about to): it looks at the buffer again when done, so no line wakes it.
    Writing,
}

impl LogSink {
    /// A sink writing to `output` from a thread named `log-writer`.
    pub fn start(output: Box<dyn Write + Send>) -> std::io::Result<(Self, SinkGuard)> {
        Self::with_limits(output, PACE, HIGH_WATER, CAPACITY)
    }

    fn with_limits(
        output: Box<dyn Write + Send>,
        pace: Duration,
        high_water: usize,
        capacity: usize,
    ) -> std::io::Result<(Self, SinkGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: Vec::with_capacity(64 * 1024),
                writer: Phase::Writing,
                blocked: 0,
                closed: false,
                after_close: None,
            }),
            lines: Condvar::new(),
            room: Condvar::new(),
            high_water,
            capacity,
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || shared.run(output, pace))?
        };
        let guard = SinkGuard {
            shared: Arc::clone(&shared),
            writer: Some(writer),
        };
        Ok((Self { shared }, guard))
    }

    /// Appends `line` (whole lines, newline included) to what the writer writes next.
    pub fn write_line(&self, line: &[u8]) {
        let shared = &*self.shared;
        let mut state = shared.lock();
        while state.waiting.len() >= shared.capacity && state.after_close.is_none() {
            state.blocked += 1;
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.blocked -= 1;
        }
        if let Some(out) = state.after_close.as_mut() {
            // Nowhere to report a failed write of the log itself.
            let _ = out.write_all(line).and_then(|()| out.flush());
            return;
        }
        state.waiting.extend_from_slice(line);
        let wake = match state.writer {
            Phase::Idle => true,
            Phase::Pacing => state.waiting.len() >= shared.high_water,
            Phase::Writing => false,
        };
        if wake {
            state.writer = Phase::Writing;
            drop(state);
            shared.lines.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer thread: waits for lines, lets them gather, writes them, until closed.
    fn run(&self, mut output: Box<dyn Write + Send>, pace: Duration) {
        let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut state = self.lock();
        loop {
            while state.waiting.is_empty() && !state.closed {
                state.writer = Phase::Idle;
                state = self.wait(state);
            }
            if !state.closed && state.waiting.len() < self.high_water {
                state.writer = Phase::Pacing;
                let until = Instant::now() + pace;
                while state.writer == Phase::Pacing && !state.closed {
                    let Some(left) = until.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    state = self
                        .lines
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            state.writer = Phase::Writing;
            std::mem::swap(&mut state.waiting, &mut batch);
            if state.blocked > 0 {
                self.room.notify_all();
            }
            drop(state);
            // Nowhere to report a failed write of the log itself.
            let _ = output.write_all(&batch).and_then(|()| output.flush());
            batch.clear();
            if batch.capacity() > KEEP_BYTES {
                batch = Vec::with_capacity(64 * 1024);
            }
            state = self.lock();
            if state.closed && state.waiting.is_empty() {
                break;
            }
        }
        state.after_close = Some(output);
        if state.blocked > 0 {
            self.room.notify_all();
        }
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.lines
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closed = true;
        }
        self.shared.lines.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What the tracing subscriber writes each event through: the event arrives whole, in one
/// `write_all` of its formatted bytes.
impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that hands each write to the test, and can be held shut.
    struct Probe {
        writes: mpsc::Sender<Vec<u8>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Write for Probe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            let _ = self.writes.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn probe(gate: Option<mpsc::Receiver<()>>) -> (Box<dyn Write + Send>, mpsc::Receiver<Vec<u8>>) {
        let (writes, written) = mpsc::channel();
        (Box::new(Probe { writes, gate }), written)
    }

    #[test]
    fn every_line_reaches_the_output_whole_and_in_order() {
        let (output, written) = probe(None);
        let (sink, guard) = LogSink::start(output).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        sink.write_line(format!("thread {t} line {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(written.try_iter().flatten().collect()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
    }

    #[test]
    fn a_line_is_written_within_the_pace_without_waiting_for_more() {
        let (output, written) = probe(None);
        let (sink, _guard) = LogSink::start(output).unwrap();
        sink.write_line(b"alone\n");
        // The guard is alive: only the writer's pace can have written it.
        let got = written.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, b"alone\n");
    }

    #[test]
    fn many_lines_are_written_in_few_writes() {
        let (output, written) = probe(None);
        let (sink, guard) = LogSink::start(output).unwrap();
        for i in 0..10_000 {
            sink.write_line(format!("line {i}\n").as_bytes());
        }
        drop(guard);
        let writes: Vec<Vec<u8>> = written.try_iter().collect();
        assert!(
            writes.len() < 100,
            "{} writes for 10,000 lines",
            writes.len()
        );
        assert_eq!(
            writes.concat().iter().filter(|&&b| b == b'\n').count(),
            10_000
        );
    }

    #[test]
    fn loggers_wait_for_room_when_the_output_is_stuck_and_lose_nothing() {
        let (open, gate) = mpsc::channel();
        let (output, written) = probe(Some(gate));
        let (sink, guard) = LogSink::with_limits(output, PACE, 64, 256).unwrap();
        let shared = Arc::clone(&sink.shared);
        // The first batch takes the writer into the stuck output.
        sink.write_line(&[b'a'; 99]);
        sink.write_line(b"\n");
        let logger = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    sink.write_line(format!("{i:09}\n").as_bytes());
                }
            })
        };
        // The logger fills the buffer to its capacity and then waits (no timing involved:
        // this loop ends when it is blocked, and only then).
        loop {
            let state = shared.lock();
            if state.blocked == 1 {
                assert!(state.waiting.len() >= 256 && state.waiting.len() < 256 + 10);
                break;
            }
            drop(state);
            std::thread::yield_now();
        }
        open.send(()).unwrap();
        logger.join().unwrap();
        drop(guard);
        let text = String::from_utf8(written.try_iter().flatten().collect()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 101);
        assert_eq!(lines[0].len(), 99);
        for (i, line) in lines[1..].iter().enumerate() {
            assert_eq!(*line, format!("{i:09}"));
        }
    }

    #[test]
    fn lines_after_the_close_are_written_directly() {
        let (output, written) = probe(None);
        let (sink, guard) = LogSink::start(output).unwrap();
        sink.write_line(b"before\n");
        drop(guard);
        sink.write_line(b"after\n");
        let writes: Vec<Vec<u8>> = written.try_iter().collect();
        assert_eq!(writes.concat(), b"before\nafter\n");
    }
}
