//! A fake Ollama for model management: it reads request bodies as they stream in
//! (Content-Length or chunked), keeping only their first bytes and counting the rest, so a
//! gigabyte blob costs it nothing; answers as each test scripts; and can hold a progress
//! stream in the middle until the test lets it go on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use super::{closes, reaches, wait_for_close, End, Recorded};

/// How much of a request body the fake keeps (the rest is only counted).
pub const KEEP: usize = 4 << 20;

/// A request as the fake received it: its head, and the first [`KEEP`] bytes of its body.
#[derive(Debug, Clone)]
pub struct Seen {
    pub request: Recorded,
    /// Every byte of the body that arrived.
    pub length: u64,
    /// Whether the body arrived whole (its length, or its last chunk).
    pub complete: bool,
}

impl std::ops::Deref for Seen {
    type Target = Recorded;

    fn deref(&self) -> &Recorded {
        &self.request
    }
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and JSON body.
    Json(u16, Value),
    /// This status, no body (as Ollama answers copy, delete and blobs).
    Empty(u16),
    /// A 200 NDJSON stream, one line per chunk. With `pause`, after that many lines it
    /// waits for the test to notify the gate; then `end`.
    Lines {
        lines: Vec<Value>,
        pause: Option<(usize, Arc<Notify>)>,
        end: End,
    },
    /// No answer; the connection is held until the gateway drops it.
    Hang,
    /// The answer, once the test notifies the gate.
    After(Arc<Notify>, Box<Answer>),
}

impl Answer {
    /// Ollama's progress lines for pulling `layers` layers, then `success`.
    pub fn pull_progress(layers: usize) -> Self {
        let mut lines = vec![serde_json::json!({"status": "pulling manifest"})];
        for i in 0..layers {
            lines.push(serde_json::json!({"status": format!("pulling layer{i}"),
                "digest": format!("sha256:{i:064}"), "total": 1000, "completed": 500}));
        }
        lines.push(serde_json::json!({"status": "verifying sha256 digest"}));
        lines.push(serde_json::json!({"status": "success"}));
        Self::Lines {
            lines,
            pause: None,
            end: End::Terminate,
        }
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// The fake, on 127.0.0.1:0 on its own thread and runtime.
pub struct FakeOllama {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: watch::Receiver<usize>,
    heads: watch::Receiver<usize>,
    closed: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

/// What every connection of the fake shares.
struct Shared {
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: watch::Sender<usize>,
    heads: watch::Sender<usize>,
}

impl FakeOllama {
    pub fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let (heads_tx, heads) = watch::channel(0usize);
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            handler: Arc::new(handler),
            seen: Arc::clone(&seen),
            count: count_tx,
            heads: heads_tx,
        });
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    let shared = Arc::clone(&shared);
                    let closed = closed_tx.clone();
                    tokio::spawn(async move {
                        serve(stream, &shared).await;
                        let _ = closed.send(());
                    });
                }
            });
        });
        Self {
            addr,
            seen,
            count,
            heads,
            closed: tokio::sync::Mutex::new(closed),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the fake received a request")
    }

    /// Waits until the fake has received `n` requests in all (bodies read or broken off).
    pub async fn wait_requests(&self, n: usize, within: Duration) -> bool {
        reaches(&self.count, n, within).await
    }

    /// Waits until the fake has read the heads of `n` requests in all (their bodies may
    /// still be on their way).
    pub async fn wait_heads(&self, n: usize, within: Duration) -> bool {
        reaches(&self.heads, n, within).await
    }

    /// Waits until a connection to the fake has been closed by the gateway.
    pub async fn wait_closed(&self, within: Duration) -> bool {
        closes(&self.closed, within).await
    }
}

async fn serve(stream: TcpStream, shared: &Shared) {
    stream.set_nodelay(true).ok();
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let Some(request) = read_request(&mut stream, &shared.heads).await else {
            return;
        };
        let complete = request.complete;
        let n = {
            let mut seen = shared.seen.lock().unwrap();
            seen.push(request.clone());
            seen.len()
        };
        shared.count.send_replace(n);
        let reply = (shared.handler)(&request);
        if !complete || !answer(&mut stream, &request, reply).await {
            return;
        }
    }
}

/// Writes `answer`; whether the connection can carry another request.
async fn answer(stream: &mut BufReader<TcpStream>, request: &Seen, mut answer: Answer) -> bool {
    let head_only = request.method == "HEAD";
    while let Answer::After(gate, then) = answer {
        tokio::select! {
            () = gate.notified() => {}
            () = wait_for_close(stream) => return false,
        }
        answer = *then;
    }
    match answer {
        Answer::After(..) => false,
        Answer::Json(status, body) => {
            let body = serde_json::to_vec(&body).unwrap();
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let body: &[u8] = if head_only { &[] } else { &body };
            write(stream, &[head.as_bytes(), body].concat()).await
        }
        Answer::Empty(status) => {
            write(
                stream,
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
            )
            .await
        }
        Answer::Lines { lines, pause, end } => {
            let head = "HTTP/1.1 200 X\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
            if !write(stream, head.as_bytes()).await {
                return false;
            }
            for (i, line) in lines.iter().enumerate() {
                if let Some((at, gate)) = &pause {
                    if *at == i {
                        tokio::select! {
                            () = gate.notified() => {}
                            () = wait_for_close(stream) => return false,
                        }
                    }
                }
                let mut bytes = serde_json::to_vec(line).unwrap();
                bytes.push(b'\n');
                let framed =
                    [format!("{:x}\r\n", bytes.len()).as_bytes(), &bytes, b"\r\n"].concat();
                if !write(stream, &framed).await {
                    return false;
                }
            }
            match end {
                End::Terminate => write(stream, b"0\r\n\r\n").await,
                End::Close => false,
                End::Reset => {
                    stream.get_ref().set_zero_linger().unwrap();
                    false
                }
                End::Hold => {
                    wait_for_close(stream).await;
                    false
                }
            }
        }
        Answer::Hang => {
            wait_for_close(stream).await;
            false
        }
    }
}

async fn write(stream: &mut BufReader<TcpStream>, bytes: &[u8]) -> bool {
    let stream = stream.get_mut();
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}

/// Reads one request, its body streamed: kept up to [`KEEP`], counted to the end.
async fn read_request(
    stream: &mut BufReader<TcpStream>,
    heads: &watch::Sender<usize>,
) -> Option<Seen> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_until(b'\n', &mut head).await.ok()? == 0 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut seen = Seen {
        request: Recorded {
            method,
            path,
            headers,
            body: Vec::new(),
        },
        length: 0,
        complete: false,
    };
    heads.send_modify(|n| *n += 1);
    let chunked = seen
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let declared: u64 = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    seen.complete = if chunked {
        read_chunked(stream, &mut seen).await
    } else {
        read_exactly(stream, &mut seen, declared).await
    };
    Some(seen)
}

/// Reads `n` body bytes; whether they all came.
async fn read_exactly(stream: &mut BufReader<TcpStream>, seen: &mut Seen, mut n: u64) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    while n > 0 {
        let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        match stream.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return false,
            Ok(got) => {
                let room = KEEP.saturating_sub(seen.request.body.len()).min(got);
                seen.request.body.extend_from_slice(&buf[..room]);
                seen.length += got as u64;
                n -= got as u64;
            }
        }
    }
    true
}

/// Reads a chunked body to its last chunk; whether it got there.
async fn read_chunked(stream: &mut BufReader<TcpStream>, seen: &mut Seen) -> bool {
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        let size = line.trim().split(';').next().unwrap_or_default();
        let Ok(size) = u64::from_str_radix(size, 16) else {
            return false;
        };
        if size == 0 {
            // Trailers (none are sent here), then the blank line.
            let mut rest = String::new();
            while rest != "\r\n" {
                rest.clear();
                if stream.read_line(&mut rest).await.unwrap_or(0) == 0 {
                    return false;
                }
            }
            return true;
        }
        if !read_exactly(stream, seen, size).await {
            return false;
        }
        let mut crlf = [0u8; 2];
        if stream.read_exact(&mut crlf).await.is_err() {
            return false;
        }
    }
}
