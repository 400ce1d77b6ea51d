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

    /// `f` on the socket (there is always one while `self` can be polled).
    fn poll_ref<T>(
        &self,
        f: impl FnOnce(&TcpStream) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match &self.io {
            Some(io) => f(io),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// `f` on the pinned socket.
    fn poll_mut<T>(
        self: Pin<&mut Self>,
        f: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match &mut self.get_mut().io {
            Some(io) => f(Pin::new(io)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
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
static CLOSER: OnceLock<Option<mpsc::SyncSender<TcpStream>>> = OnceLock::new();

/// Most sockets waiting for the closer thread: its queue's length. Past this (a closer
/// starved of CPU on a saturated machine while connections end faster than it gets to run)
/// a connection closes in place, as awc would have closed it, so that the file descriptors
/// waiting stay bounded.
const MAX_WAITING: usize = 256;

/// Hands `io` to the closer thread (started by the first connection closed), or closes it
/// here if there is none.
fn close(io: TcpStream) {
    match CLOSER.get_or_init(start_closer) {
        Some(closer) => hand_over(closer, io),
        None => drop(io),
    }
}

fn start_closer() -> Option<mpsc::SyncSender<TcpStream>> {
    let (tx, rx) = mpsc::sync_channel::<TcpStream>(MAX_WAITING);
    std::thread::Builder::new()
        .name("upstream-closer".into())
        .spawn(move || {
            lower_priority();
            // Each socket is closed (deregistered from its worker's poller, then its file
            // descriptor released) as it is dropped here.
            rx.into_iter().for_each(drop);
        })
        .map_err(
            |e| tracing::warn!(error = %e, "no upstream closer thread: connections close in place"),
        )
        .ok()
        .map(|_| tx)
}

/// Queues `io` for the closer, or closes it here if the queue is full (or the thread ended,
/// which it does not).
fn hand_over(closer: &mpsc::SyncSender<TcpStream>, io: TcpStream) {
    match closer.try_send(io) {
        Ok(()) => {}
        Err(mpsc::TrySendError::Full(io) | mpsc::TrySendError::Disconnected(io)) => drop(io),
    }
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
        self.poll_mut(|io| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_mut(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_mut(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_mut(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_mut(|io| io.poll_shutdown(cx))
    }
}

impl ActixStream for Upstream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.poll_ref(|io| ActixStream::poll_read_ready(io, cx))
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.poll_ref(|io| ActixStream::poll_write_ready(io, cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// `peer` reads the end of its stream with nothing before it: the other side was closed
    /// (the read ends only then; the timeout only keeps a failure from hanging).
    async fn assert_closed(peer: &mut TcpStream) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            peer.read_to_end(&mut rest),
        )
        .await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    }

    /// A full queue closes a connection in place: its peer reads the end of the stream while
    /// the queued one still waits (nothing receives here), and no more than the queue holds
    /// is waiting.
    #[tokio::test]
    async fn past_its_queue_a_connection_closes_in_place() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (queue, waiting) = mpsc::sync_channel(1);
        let first = TcpStream::connect(addr).await?;
        let (_first_peer, _) = listener.accept().await?;
        let second = TcpStream::connect(addr).await?;
        let (mut second_peer, _) = listener.accept().await?;
        hand_over(&queue, first);
        hand_over(&queue, second);
        assert_closed(&mut second_peer).await;
        assert!(waiting.try_recv().is_ok(), "the first one waits");
        assert!(waiting.try_recv().is_err(), "and nothing else does");
        Ok(())
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
        for (mut client, mut server) in conns {
            client.write_all(b"ping").await?;
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await?;
            assert_eq!(&got, b"ping");
            server.write_all(b"pong").await?;
            client.read_exact(&mut got).await?;
            assert_eq!(&got, b"pong");
            drop(client);
            assert_closed(&mut server).await;
        }
        assert!(CLOSER.get().is_some_and(Option::is_some));
        Ok(())
    }
}
