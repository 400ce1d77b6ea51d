//! A fast mock of Ollama and OpenAI for load tests and demos: instant JSON answers and
//! paced NDJSON / SSE streams. Not a test fake (those live in tests/common); this one is
//! built to be cheap per request so it can be measured and stay out of the way.
//!
//! ```text
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:11434 \
//!     --tokens 64 --interval-ms 20 --first-token-ms 0 --workers 1
//! ```
//! Serves `GET /api/version`, `GET /`, `POST /api/chat`, `/api/generate`, `/api/embed`
//! (Ollama) and `POST /v1/chat/completions`, `/v1/embeddings` (OpenAI, as Ollama's own
//! compatibility layer answers them: the request's model echoed, `fp_ollama`, the usage
//! chunk only when `stream_options.include_usage` asks for it). The request's `stream` picks
//! streaming (Ollama's default is to stream, OpenAI's is not). Prints `listening on
//! http://ADDR` once bound.
//! Each streamed token's content is `@t<microseconds since the epoch> `, stamped as the mock
//! writes it, so a client on the same machine can time every line from the mock to itself.
//! Both chat streams keep the same schedule: `--tokens` token lines (NDJSON) or `data:`
//! events (SSE) `--interval-ms` apart, then the closing line or events in one write.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use clap::Parser;
use futures_util::stream;
use serde::Deserialize;
use serde_json::Value;

#[derive(Parser, Clone, Copy)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: std::net::SocketAddr,
    /// Tokens per streamed answer.
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Gap between streamed tokens, in milliseconds (0 = all at once).
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Delay before the first token (and before a whole answer), in milliseconds.
    #[arg(long, default_value_t = 0)]
    first_token_ms: u64,
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

const OLLAMA_WHOLE: &str = r#"{"model":"mock","created_at":"2025-01-01T00:00:00Z","message":{"role":"assistant","content":"Hello from the mock."},"done":true,"done_reason":"stop","total_duration":1000000,"load_duration":1000,"prompt_eval_count":9,"eval_count":5,"eval_duration":900000}"#;
const GENERATE_WHOLE: &str = r#"{"model":"mock","created_at":"2025-01-01T00:00:00Z","response":"Hello from the mock.","done":true,"done_reason":"stop","total_duration":1000000,"load_duration":1000,"prompt_eval_count":9,"eval_count":5,"eval_duration":900000}"#;
const GENERATE_TOKEN: (&str, &str) = (
    "{\"model\":\"mock\",\"created_at\":\"2025-01-01T00:00:00Z\",\"response\":\"@t",
    " \",\"done\":false}\n",
);
const GENERATE_DONE: &str = "{\"model\":\"mock\",\"created_at\":\"2025-01-01T00:00:00Z\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"total_duration\":1000000,\"prompt_eval_count\":9,\"eval_count\":64,\"eval_duration\":900000}\n";
/// One 8-dimensional vector per answer: the bench measures the path, not the payload.
const EMBED_WHOLE: &str = r#"{"model":"mock","embeddings":[[0.125,-0.25,0.375,-0.5,0.625,-0.75,0.875,-1.0]],"total_duration":1000000,"load_duration":1000,"prompt_eval_count":4}"#;
const OPENAI_EMBED_WHOLE: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.125,-0.25,0.375,-0.5,0.625,-0.75,0.875,-1.0]}],"model":"mock","usage":{"prompt_tokens":4,"total_tokens":4}}"#;
/// A streamed token is `<head>@t<micros since the epoch when the mock wrote it> <tail>`: the
/// client reads the stamp back to time each line from the mock's write to its own read.
const OLLAMA_TOKEN: (&str, &str) = (
    "{\"model\":\"mock\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"@t",
    " \"},\"done\":false}\n",
);
const OLLAMA_DONE: &str = "{\"model\":\"mock\",\"created_at\":\"2025-01-01T00:00:00Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":1000000,\"prompt_eval_count\":9,\"eval_count\":64,\"eval_duration\":900000}\n";
fn wants_stream(body: &[u8], default: bool) -> bool {
    // Cheap: only the top-level "stream" matters.
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(default)
}

fn stamped(head: &str, tail: &str) -> Bytes {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    Bytes::from(format!("{head}{micros}{tail}"))
}

/// What one paced stream writes: token 0 as `first.0 @t<stamp> first.1`, every later token
/// as `token.0 @t<stamp> token.1` (heads end in `@t`), then `end` in one write.
struct Frames {
    first: (Cow<'static, str>, Cow<'static, str>),
    token: (Cow<'static, str>, Cow<'static, str>),
    end: Bytes,
}

impl Frames {
    /// One NDJSON line per token, every one alike.
    fn ndjson((head, tail): (&'static str, &'static str), end: &'static str) -> Self {
        Self {
            first: (head.into(), tail.into()),
            token: (head.into(), tail.into()),
            end: Bytes::from_static(end.as_bytes()),
        }
    }
}

fn paced(
    args: Args,
    frames: Frames,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let frames = Rc::new(frames);
    stream::unfold(0u32, move |n| {
        let frames = Rc::clone(&frames);
        async move {
            if n > args.tokens {
                return None;
            }
            let delay = if n == 0 {
                args.first_token_ms
            } else {
                args.interval_ms
            };
            if delay > 0 {
                actix_web::rt::time::sleep(Duration::from_millis(delay)).await;
            }
            let chunk = if n == args.tokens {
                frames.end.clone()
            } else {
                let (head, tail) = if n == 0 { &frames.first } else { &frames.token };
                stamped(head, tail)
            };
            Some((Ok(chunk), n + 1))
        }
    })
}

async fn whole(args: Args, content_type: &'static str, body: impl Into<Bytes>) -> HttpResponse {
    if args.first_token_ms > 0 {
        actix_web::rt::time::sleep(Duration::from_millis(args.first_token_ms)).await;
    }
    HttpResponse::Ok()
        .content_type(content_type)
        .body(body.into())
}

async fn ollama_chat(args: web::Data<Args>, body: web::Bytes) -> HttpResponse {
    if wants_stream(&body, true) {
        HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .streaming(paced(**args, Frames::ndjson(OLLAMA_TOKEN, OLLAMA_DONE)))
    } else {
        whole(**args, "application/json; charset=utf-8", OLLAMA_WHOLE).await
    }
}

async fn ollama_generate(args: web::Data<Args>, body: web::Bytes) -> HttpResponse {
    if wants_stream(&body, true) {
        HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .streaming(paced(**args, Frames::ndjson(GENERATE_TOKEN, GENERATE_DONE)))
    } else {
        whole(**args, "application/json; charset=utf-8", GENERATE_WHOLE).await
    }
}

/// What the OpenAI chat handler reads of a request; the rest is ignored, as Ollama ignores
/// what it does not map.
#[derive(Deserialize)]
struct OpenAiChat<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Every chunk's opening, up to and including `"delta":{` (ids and `created` pinned, as
/// Ollama pins them for one answer); `model` is the request's, JSON-quoted.
fn chunk_head(model: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1735689600,\
         \"model\":{model},\"system_fingerprint\":\"fp_ollama\",\"choices\":[{{\"index\":0,\"delta\":{{"
    )
}

/// The stream of Ollama's `/v1/chat/completions`: one `data:` event per token (the role on
/// the first only), then the finish event, the usage-only event if it was asked for and
/// `data: [DONE]`, written together as Ollama writes them on its `done` chunk.
fn openai_frames(args: Args, model: &str, include_usage: bool) -> Frames {
    let head = chunk_head(model);
    let tail = " \"},\"finish_reason\":null}]}\n\n";
    let mut end = format!("{head}}},\"finish_reason\":\"stop\"}}]}}\n\n");
    if include_usage {
        let tokens = args.tokens;
        end.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1735689600,\
             \"model\":{model},\"system_fingerprint\":\"fp_ollama\",\"choices\":[],\
             \"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
            9 + tokens
        ));
    }
    end.push_str("data: [DONE]\n\n");
    Frames {
        first: (
            format!("{head}\"role\":\"assistant\",\"content\":\"@t").into(),
            tail.into(),
        ),
        token: (format!("{head}\"content\":\"@t").into(), tail.into()),
        end: Bytes::from(end),
    }
}

async fn openai_chat(args: web::Data<Args>, body: web::Bytes) -> HttpResponse {
    let Ok(req) = serde_json::from_slice::<OpenAiChat<'_>>(&body) else {
        return HttpResponse::BadRequest().content_type("application/json").body(
            r#"{"error":{"message":"invalid request body","type":"invalid_request_error","param":null,"code":null}}"#,
        );
    };
    let model = serde_json::to_string(req.model.as_deref().unwrap_or("mock"))
        .unwrap_or_else(|_| "\"mock\"".into());
    if req.stream.unwrap_or(false) {
        let usage = req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(paced(**args, openai_frames(**args, &model, usage)))
    } else {
        let body = format!(
            "{{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1735689600,\"model\":{model},\
             \"system_fingerprint\":\"fp_ollama\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\
             \"content\":\"Hello from the mock.\"}},\"finish_reason\":\"stop\"}}],\
             \"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":5,\"total_tokens\":14}}}}"
        );
        whole(**args, "application/json", body).await
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(args))
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/", web::get().to(|| async { "Ollama is running" }))
                .route(
                    "/api/version",
                    web::get().to(|| async {
                        HttpResponse::Ok()
                            .content_type("application/json")
                            .body(r#"{"version":"0.5.1"}"#)
                    }),
                )
                .route("/api/chat", web::post().to(ollama_chat))
                .route("/api/generate", web::post().to(ollama_generate))
                .route(
                    "/api/embed",
                    web::post().to(move |args: web::Data<Args>| {
                        whole(**args, "application/json; charset=utf-8", EMBED_WHOLE)
                    }),
                )
                .route("/v1/chat/completions", web::post().to(openai_chat))
                .route(
                    "/v1/embeddings",
                    web::post().to(move |args: web::Data<Args>| {
                        whole(**args, "application/json", OPENAI_EMBED_WHOLE)
                    }),
                )
        })
        .workers(args.workers)
        .tcp_nodelay(true)
        // Ollama (Go's net/http, no IdleTimeout) never closes an idle keep-alive connection;
        // actix's default 5 s would race the proxies' pooled connections between runs.
        .keep_alive(actix_web::http::KeepAlive::Os)
        .backlog(4096)
        .max_connections(100_000)
        .bind(args.listen)?;
        for addr in server.addrs() {
            println!("listening on http://{addr}");
        }
        server.run().await
    })
}
