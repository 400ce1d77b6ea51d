//! The Messages API pieces at every byte split, and the requests the gateway refuses.

use super::*;

fn event(kind: &str, data: &str) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A whole stream as Ollama writes it: usage in `message_start` and `message_delta`.
fn stream() -> String {
    [
        event("message_start", r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"llama3","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":0}}}"#),
        event("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
        event("ping", r#"{"type":"ping"}"#),
        event("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"你好"}}"#),
        event("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
        event("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#),
        event("message_stop", r#"{"type":"message_stop"}"#),
    ]
    .concat()
}

/// Feeds `input` cut at `splits`; what was passed on, the last push's kind, the usage.
fn run(input: &[u8], splits: &[usize], max: usize) -> (Vec<u8>, String, Usage) {
    let mut events = MessagesEvents::with_max(max);
    let mut out = Vec::new();
    let mut last = "more".to_string();
    let mut start = 0;
    for &end in splits.iter().chain(std::iter::once(&input.len())) {
        let pushed = events.push(Bytes::copy_from_slice(&input[start..end]));
        start = end;
        let (forward, kind) = match pushed {
            Pushed::More(f) => (f, "more".to_string()),
            Pushed::Stopped(f) => (f, "stopped".into()),
            Pushed::UpstreamError(f) => (f, "upstream_error".into()),
            Pushed::Unreadable {
                forward, detail, ..
            } => (forward, detail),
        };
        out.extend_from_slice(&forward.unwrap_or_default());
        if last == "more" {
            last = kind;
        }
    }
    if last == "more" && events.finish() {
        last = "cut".into();
    }
    (out, last, events.usage())
}

#[test]
fn a_whole_stream_passes_unchanged_at_every_split_and_its_usage_is_read() {
    let input = stream();
    let input = input.as_bytes();
    let expected = (
        input.to_vec(),
        "stopped".to_string(),
        Usage {
            input: 12,
            output: 7,
        },
    );
    assert_eq!(run(input, &[], 1 << 20), expected);
    for i in 0..=input.len() {
        assert_eq!(run(input, &[i], 1 << 20), expected, "split at {i}");
    }
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run(input, &bytewise, 1 << 20), expected);
}

#[test]
fn crlf_streams_and_comments_pass_too() {
    let input = stream().replace('\n', "\r\n");
    let input = format!(": hello\r\n\r\n{input}");
    let input = input.as_bytes();
    for i in 0..=input.len() {
        let (out, last, usage) = run(input, &[i], 1 << 20);
        // The answer is complete at the CR that ends its last event; a LF still on its
        // way in the next read is not waited for.
        let expected = if i == input.len() - 1 {
            &input[..i]
        } else {
            input
        };
        assert_eq!(
            (out.as_slice(), last.as_str()),
            (expected, "stopped"),
            "split at {i}"
        );
        assert_eq!(usage.output, 7);
    }
}

#[test]
fn a_cut_stream_passes_whole_events_only() {
    let whole = stream();
    let cut_at = whole.find("event: message_stop").unwrap();
    // Everything up to a point in the last event, which is never passed on.
    for end in cut_at..whole.len() - 1 {
        let input = &whole.as_bytes()[..end];
        for i in 0..=input.len() {
            let (out, last, usage) = run(input, &[i], 1 << 20);
            assert_eq!(out, whole.as_bytes()[..cut_at], "end {end}, split {i}");
            assert_eq!(last, "cut");
            assert_eq!(
                usage,
                Usage {
                    input: 12,
                    output: 7
                }
            );
        }
    }
    // Cut in the middle of a line of an earlier event.
    let mid = whole.find("你好").unwrap();
    let (out, last, _) = run(&whole.as_bytes()[..mid], &[], 1 << 20);
    assert!(!String::from_utf8(out)
        .unwrap()
        .contains("content_block_delta"));
    assert_eq!(last, "cut");
}

#[test]
fn the_upstreams_error_event_ends_the_stream_and_is_passed_on() {
    let error = event(
        "error",
        r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#,
    );
    let start = &stream()[..stream().find("event: content_block_start").unwrap()];
    let input =
        format!("{start}{error}event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n");
    let (out, last, _) = run(input.as_bytes(), &[], 1 << 20);
    assert_eq!(String::from_utf8(out).unwrap(), format!("{start}{error}"));
    assert_eq!(last, "upstream_error");
}

#[test]
fn an_event_that_is_not_the_apis_is_not_passed_on() {
    let start = &stream()[..stream().find("event: content_block_start").unwrap()];
    for bad in [
        "data: not json\n\n",
        "data: {\"no\":\"type\"}\n\n",
        "data: {\"type\":\"message_start\",\"message\":7}\n\n",
    ] {
        let input = format!(
            "{start}{bad}{}",
            event("message_stop", r#"{"type":"message_stop"}"#)
        );
        let (out, last, _) = run(input.as_bytes(), &[], 1 << 20);
        assert_eq!(String::from_utf8(out).unwrap(), start, "{bad}");
        assert!(last.contains("not a Messages API event"), "{last}");
    }
}

#[test]
fn an_event_over_the_limit_stops_the_stream_and_nothing_past_it_is_held() {
    let big = event(
        "content_block_delta",
        &format!(
            r#"{{"type":"content_block_delta","delta":{{"text":"{}"}}}}"#,
            "x".repeat(300)
        ),
    );
    let (out, last, _) = run(big.as_bytes(), &[], 256);
    assert!(out.is_empty());
    assert!(
        last.contains("larger than the limit of 256 bytes"),
        "{last}"
    );
    // Comment lines alone never end an event: they are held only up to the limit.
    let mut events = MessagesEvents::with_max(256);
    let mut refused = false;
    for _ in 0..100 {
        if let Pushed::Unreadable { too_large, .. } =
            events.push(Bytes::from_static(b": keep-alive\n"))
        {
            assert!(too_large);
            refused = true;
            break;
        }
        assert!(events.held.len() <= 512);
    }
    assert!(refused);
}

#[test]
fn whole_answers_give_their_usage() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":3,"output_tokens":2}}"#;
    assert_eq!(
        whole_usage(body),
        Ok(Usage {
            input: 3,
            output: 2
        })
    );
    assert_eq!(whole_usage(b"{}"), Ok(Usage::default()));
    assert!(whole_usage(b"<html>").is_err());
}

#[test]
fn requests_give_model_and_stream_and_no_second_spelling() {
    let ok = |body: &str| parse_request(body.as_bytes());
    assert_eq!(
        ok(r#"{"model":"llama3","max_tokens":8,"messages":[{"role":"user","content":"hi"}],"stream":true}"#).ok(),
        Some(MessagesRequest { model: "llama3".into(), stream: true })
    );
    assert_eq!(
        ok(r#"{"model":"llama3","stream":null}"#)
            .ok()
            .map(|r| r.stream),
        Some(false)
    );
    assert_eq!(
        ok(r#"{"mod\u0065l":"llama3"}"#).ok().map(|r| r.model),
        Some("llama3".into())
    );
    assert!(matches!(ok("  "), Err(GatewayError::EmptyBody)));
    assert!(matches!(
        ok(r#"{"messages":[]}"#),
        Err(GatewayError::MissingModel)
    ));
    assert!(matches!(
        ok(r#"{"model":" "}"#),
        Err(GatewayError::MissingModel)
    ));
    for bad in [
        r#"{"model":"llama3","model":"qwen3"}"#,
        r#"{"model":"llama3","Model":"qwen3"}"#,
        r#"{"MODEL":"qwen3"}"#,
        r#"{"model":"llama3","stream":false,"STREAM":true}"#,
        "{\"model\":\"llama3\",\"\u{17F}tream\":true}",
        r#"{"model":7}"#,
        r#"{"model":"llama3","stream":"yes"}"#,
        r#"["model"]"#,
        r#"{"model":"llama3""#,
    ] {
        let e = ok(bad);
        assert!(
            matches!(e, Err(GatewayError::InvalidJson(_))),
            "{bad}: {e:?}"
        );
    }
    let e = ok(r#"{"model":"llama3","Model":"qwen3"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`model` is given more than once"), "{e}");
}
