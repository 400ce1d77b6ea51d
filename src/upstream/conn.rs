//! The upstream leg's TCP connections, closed off the request path.
//!
//! awc's pool closes the idle connections it finds past `conn_keep_alive` while a request
//! is acquiring one: every expired connection at the front of its queue, in that request's
//! turn, before the request is sent. Connections that went idle together (the end of a
//! burst) expire together, so one request pays for all of them, and so does every request
//! waiting behind it on the same worker. Closing a TCP connection is the kernel's work of
//! sending its FIN (on loopback, the peer's side of it too): measured on this project's
//! bench VM, the first stream past the idle limit after 64 streams had ended waited ~1.8 ms
//! for its first byte instead of ~0.2 ms (BENCHMARKS.md, S4).
//!
//! So a connection handed to awc is an [`Upstream`], which on drop gives its socket to one
//! closer thread for the whole process, running at the lowest priority (on Linux); the
//! worker goes on at once. The socket is closed as it would have been (the upstream sees
//! the same FIN, a moment later), and a connection that cannot be handed over (no closer
//! thread, or [`MAX_WAITING`] sockets already waiting for it) is closed in place.
//!
//! That is about plain HTTP upstreams, whose pool awc gives no disconnect timeout, so it
//! drops them where it finds them. A TLS upstream's expired connection awc closes in a task
//! it spawns on the worker (its `close_notify`, within `disconnect_timeout`), after the
//! request's turn; only its final close comes here.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use actix_rt::net::{ActixStream, Ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP connection to an upstream, closed by the closer thread when dropped.
#[derive(Debug)]
pub struct Upstream {
    /// Always `Some` until it is dropped.
    io: Option<TcpStream>,
}

impl Upstream {
    pub fn new(io: TcpStream) -> Self {
        Self { io: Some(io) }
    }

    fn io(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.io.as_mut() {
            Some(io) => Ok(Pin::new(io)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn io_ref(&self) -> io::Result<&TcpStream> {
        self.io
            .as_ref()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            close(io);
        }
    }
}

/// Where dropped connections go: the sending half of the closer thread's queue, or none if
/// the thread could not be started.
static CLOSER: OnceLock<Option<mpsc::Sender<TcpStream>>> = OnceLock::new();

/// Sockets handed to the closer thread and not closed yet.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Most sockets the closer thread holds. Past this (a closer starved of CPU on a saturated
/// machine while connections end faster than it gets to run) a connection closes in place,
/// as awc would have closed it, so that the file descriptors waiting stay bounded.
const MAX_WAITING: usize = 256;

/// Hands `io` to the closer thread (started by the first connection closed), or closes it
/// here if there is none or its queue is full.
fn close(io: TcpStream) {
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<TcpStream>();
        std::thread::Builder::new()
            .name("upstream-closer".into())
            .spawn(move || {
                lower_priority();
                // Each socket is closed (deregistered from its worker's poller, then its
                // file descriptor released) as it is dropped here.
                for io in rx {
                    drop(io);
                    WAITING.fetch_sub(1, Ordering::Relaxed);
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "no upstream closer thread: connections close in place"))
            .ok()
            .map(|_| tx)
    });
    match closer {
        Some(tx) if take_place(&WAITING, MAX_WAITING) => {
            // Gone only if the thread ended, which it does not: then close it here.
            if let Err(mpsc::SendError(io)) = tx.send(io) {
                WAITING.fetch_sub(1, Ordering::Relaxed);
                drop(io);
            }
        }
        _ => drop(io),
    }
}

/// Takes one of `max` places counted by `waiting`, if one is free.
fn take_place(waiting: &AtomicUsize, max: usize) -> bool {
    waiting
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// The closer thread's nice value: the lowest priority. A close is never urgent and a
/// request always is: on a CPU the workers share with it, a worker woken by an answer must
/// not wait for a close to finish. On a busy machine the thread still gets its share (and
/// its queue is bounded, [`MAX_WAITING`]).
#[cfg(target_os = "linux")]
const CLOSER_NICE: i32 = 19;

/// On Linux, where a thread has a nice value of its own; elsewhere the thread keeps the
/// process's priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), CLOSER_NICE) {
            tracing::debug!(error = %e, "cannot lower the upstream closer thread's priority");
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().io() {
            Ok(io) => io.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl ActixStream for Upstream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        match self.io_ref() {
            Ok(io) => ActixStream::poll_read_ready(io, cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        match self.io_ref() {
            Ok(io) => ActixStream::poll_write_ready(io, cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn the_closer_holds_at_most_its_places() {
        let waiting = AtomicUsize::new(0);
        assert!(take_place(&waiting, 2));
        assert!(take_place(&waiting, 2));
        assert!(!take_place(&waiting, 2), "a third socket closes in place");
        assert_eq!(waiting.load(Ordering::Relaxed), 2);
        waiting.fetch_sub(1, Ordering::Relaxed);
        assert!(take_place(&waiting, 2));
    }

    /// Bytes pass both ways, and a dropped connection is still closed (by the closer
    /// thread): its peer reads the end of the stream.
    #[tokio::test]
    async fn a_dropped_connection_is_closed_by_the_closer() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut conns = Vec::new();
        for _ in 0..3 {
            let client = TcpStream::connect(addr).await?;
            let (server, _) = listener.accept().await?;
            conns.push((Upstream::new(client), server));
        }
        for (client, mut server) in conns {
            let mut client = client;
            client.write_all(b"ping").await?;
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await?;
            assert_eq!(&got, b"ping");
            server.write_all(b"pong").await?;
            client.read_exact(&mut got).await?;
            assert_eq!(&got, b"pong");
            drop(client);
            let mut rest = Vec::new();
            // Ends only once the client's side is closed.
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                server.read_to_end(&mut rest),
            )
            .await;
            assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        }
        assert!(CLOSER.get().is_some_and(Option::is_some));
        Ok(())
    }
}
