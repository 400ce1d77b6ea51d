use bytes::Bytes;

use super::*;

fn parse(body: &str) -> Result<V1Request<'_>, GatewayError> {
    V1Request::parse(body.as_bytes())
}

fn rewritten(body: &str, model: Option<&str>, inject: bool) -> String {
    let req = parse(body).unwrap();
    match req.rewrite(model, inject) {
        Some(out) => String::from_utf8(out).unwrap(),
        None => body.to_string(),
    }
}

#[test]
fn only_the_model_changes() {
    let body = r#"{ "messages" : [{"role":"user","content":"h\u00e9"}], "model" :"openai/gpt-4o-mini" ,"temperature":1.50}"#;
    let req = parse(body).unwrap();
    assert_eq!(req.model(), "openai/gpt-4o-mini");
    assert!(!req.streams());
    assert_eq!(
        rewritten(body, Some("gpt-4o-mini"), true),
        r#"{ "messages" : [{"role":"user","content":"h\u00e9"}], "model" :"gpt-4o-mini" ,"temperature":1.50}"#
    );
    // Nothing to change: sent as it came.
    assert!(req.rewrite(None, true).is_none());
}

#[test]
fn an_escaped_model_is_decoded() {
    let req = parse(r#"{"model":"llama3\u003ainstruct"}"#).unwrap();
    assert_eq!(req.model(), "llama3:instruct");
}

#[test]
fn usage_is_asked_for_in_every_shape_of_stream_options() {
    for (body, want) in [
        (
            r#"{"model":"m","stream":true}"#,
            r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":null}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{ }}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            r#"{"model":"m","stream":true,"stream_options":{"x":1}}"#,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1}}"#,
        ),
    ] {
        let out = rewritten(body, None, true);
        assert_eq!(out, want);
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
        assert!(!parse(body).unwrap().asked_usage());
    }
    let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
    assert!(parse(asked).unwrap().asked_usage());
    assert_eq!(rewritten(asked, None, true), asked);
    // Not a stream: no stream_options.
    assert_eq!(
        rewritten(r#"{"model":"m"}"#, None, true),
        r#"{"model":"m"}"#
    );
    assert_eq!(
        rewritten(r#"{"model":"m","stream":true}"#, None, false),
        r#"{"model":"m","stream":true}"#
    );
}

#[test]
fn smuggling_keys_are_refused() {
    for body in [
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"a","Model":"b"}"#,
        r#"{"MODEL":"a"}"#,
        r#"{"model":"a","mod\u0065l":"b"}"#,
        r#"{"model":"a","stream":false,"stream":true}"#,
        r#"{"model":"a","STREAM":true}"#,
        "{\"model\":\"a\",\"\u{17F}tream\":true}",
        r#"{"model":"a","stream_options":{},"Stream_Options":{}}"#,
        r#"{"model":"a","stream_options":{"include_usage":true,"include_usage":false}}"#,
        r#"{"model":"a","stream_options":{"Include_Usage":true}}"#,
    ] {
        let e = parse(body).unwrap_err();
        assert!(matches!(e, GatewayError::InvalidField(_)), "{body}: {e:?}");
    }
    // Other keys may repeat: the upstream decides about those.
    parse(r#"{"model":"a","n":1,"n":2}"#).unwrap();
}

#[test]
fn bad_bodies_are_refused() {
    assert!(matches!(parse("  "), Err(GatewayError::EmptyBody)));
    assert!(matches!(parse("[]"), Err(GatewayError::InvalidJson(_))));
    assert!(matches!(
        parse("{\"model\":"),
        Err(GatewayError::InvalidJson(_))
    ));
    assert!(matches!(parse("{}"), Err(GatewayError::MissingModel)));
    assert!(matches!(
        parse(r#"{"model":" "}"#),
        Err(GatewayError::MissingModel)
    ));
    for body in [
        r#"{"model":1}"#,
        r#"{"model":"m","stream":"yes"}"#,
        r#"{"model":"m","stream_options":[]}"#,
        r#"{"model":"m","stream_options":{"include_usage":1}}"#,
    ] {
        assert!(
            matches!(parse(body), Err(GatewayError::InvalidField(_))),
            "{body}"
        );
    }
}

#[test]
fn answers_get_the_clients_model_back() {
    let json = br#"{"id":"x","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
    let a = Answer::read(json).unwrap();
    assert!(a.usage_only);
    let usage = a.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 4));
    let out = a
        .rewrite(json, Some(br#""openai/gpt-4o-mini""#), true)
        .unwrap();
    assert_eq!(
        out,
        br#"{"id":"x","model":"openai/gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#
    );
    let same = br#"{"model":"llama3","choices":[{"index":0}]}"#;
    let a = Answer::read(same).unwrap();
    assert!(!a.usage_only && a.usage.is_none());
    assert!(a.rewrite(same, Some(br#""llama3""#), true).is_none());
}

#[test]
fn a_null_usage_is_dropped_with_its_comma() {
    for (json, want) in [
        (r#"{"a":1,"usage":null}"#, r#"{"a":1}"#),
        (r#"{"a":1, "usage" : null ,"b":2}"#, r#"{"a":1 ,"b":2}"#),
        (r#"{"usage":null,"b":2}"#, r#"{"b":2}"#),
        (r#"{"usage":null}"#, r#"{}"#),
    ] {
        let a = Answer::read(json.as_bytes()).unwrap();
        let out = a.rewrite(json.as_bytes(), None, true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), want, "{json}");
        assert!(Answer::read(json.as_bytes())
            .unwrap()
            .rewrite(json.as_bytes(), None, false)
            .is_none());
    }
}

#[test]
fn errors_are_told_apart() {
    assert!(
        Answer::read(br#"{"error":{"message":"x"}}"#)
            .unwrap()
            .is_error
    );
    assert!(!Answer::read(br#"{"error":null}"#).unwrap().is_error);
    assert!(Answer::read(b"[DONE]").is_err());
}

#[test]
fn members_not_read_are_still_checked() {
    // Skipped members must still be JSON, and the whole answer UTF-8.
    let ok = br#"{"id":"x","\u006dodel":"m","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3},"extra":{"a":[1,{"b":"\u00e9"}]}}"#;
    let a = Answer::read(ok).unwrap();
    assert!(a.model.is_some() && a.usage_only);
    assert_eq!(
        a.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((2, 3))
    );
    assert!(Answer::read(br#"{"model":"m","extra":{"a":[1,}}"#).is_err());
    assert!(Answer::read(b"{\"model\":\"m\",\"extra\":\"\xff\"}").is_err());
    // The first of a name is the one read, as before.
    let twice = br#"{"model":"first","model":"second"}"#;
    let a = Answer::read(twice).unwrap();
    assert_eq!(&twice[a.model.clone().unwrap()], br#""first""#);
}

fn events(stream: &[u8], split: usize) -> Vec<Vec<u8>> {
    let mut s = EventSplitter::new(1024);
    let mut out = Vec::new();
    for piece in stream.chunks(split) {
        s.push(Bytes::copy_from_slice(piece), |e| {
            out.push(e.to_vec());
            true
        })
        .unwrap();
    }
    s.finish();
    out
}

#[test]
fn events_are_cut_at_blank_lines_in_any_split() {
    let stream = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\r\n\r\ndata: x\rdata: y\r\rdata: [DONE]\n\ndata: tail";
    for split in 1..stream.len() {
        let got = events(stream, split);
        assert_eq!(
            got,
            [
                &b"data: {\"a\":1}\n\n"[..],
                b": keep-alive\n\n",
                b"data: {\"b\":2}\r\n\r\n",
                b"data: x\rdata: y\r\r",
                b"data: [DONE]\n\n",
            ],
            "split {split}"
        );
    }
}

#[test]
fn an_endless_event_is_refused() {
    let mut s = EventSplitter::new(16);
    let r = s.push(Bytes::from_static(b"data: 0123456789abcdefgh"), |_| true);
    assert_eq!(r, Err(TooLarge { limit: 16 }));
}

#[test]
fn event_data_is_borrowed_when_it_can_be() {
    let e = b"event: x\ndata: {\"a\":1}\n\n";
    let d = event_data(e).unwrap();
    assert!(matches!(d, Cow::Borrowed(_)));
    assert_eq!(&e[data_span(e, &d)], b"{\"a\":1}");
    assert_eq!(&*event_data(b"data:a\ndata:b\n\n").unwrap(), b"a\nb");
    assert_eq!(&*event_data(b"data:a\rdata:b\r\r").unwrap(), b"a\nb");
    assert!(event_data(b": comment\n\n").is_none());
    assert!(event_data(b"datax: 1\n\n").is_none());
}
