//! `GET /v1/models` and `GET /v1/models/{model}`: the merged catalog (`routes::models`, the
//! same one `/api/tags` lists) in OpenAI's shape, `{"object": "list", "data": [{"id",
//! "object": "model", "created", "owned_by"}]}`, as the key's `models` patterns allow. A
//! model id may hold slashes (`/v1/models/openai/gpt-4o-mini`).

use std::time::UNIX_EPOCH;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::catalog::{self, Listed, Route};
use crate::config::OpenAiConfig;
use crate::error::{GatewayError, JSON_UTF8};
use crate::routes::models::{counted, gather, ollama_list, upstream_list, Entry};
use crate::routes::ollama::{key, may_use, request_id};
use crate::state::AppState;
use crate::upstream::OLLAMA;

fn json(body: &Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_UTF8)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body.to_string())
}

/// An OpenAI model object.
fn model(id: &str, created: u64, owned_by: &str) -> Value {
    json!({ "id": id, "object": "model", "created": created, "owned_by": owned_by })
}

/// The name a client uses for one of Ollama's list entries (`model`, else `name`).
fn ollama_name(entry: &Value) -> &str {
    entry
        .get("model")
        .or_else(|| entry.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// One of Ollama's entries as an OpenAI model object, as Ollama's own `/v1/models` writes
/// it: `created` from `modified_at`, `owned_by` the name's namespace.
fn from_ollama(id: &str, entry: &Value) -> Value {
    let created = entry
        .get("modified_at")
        .and_then(Value::as_str)
        .map_or(0, unix_seconds);
    model(id, created, namespace(id))
}

/// An upstream's model as an OpenAI model object, under its prefixed name, owned by the
/// upstream.
fn from_upstream(up: &OpenAiConfig, listed: &Listed) -> Value {
    let id = format!("{}{}", up.prefix, listed.id);
    model(&id, listed.created.unwrap_or(0), &up.name)
}

/// The namespace of an Ollama model name (`[host/]namespace/model[:tag]`), `library` when
/// it names none (`llama3:latest`).
fn namespace(name: &str) -> &str {
    let mut parts = name.rsplit('/');
    parts.next();
    parts.next().unwrap_or("library")
}

/// Seconds since the Unix epoch of an RFC 3339 time with any offset, as Ollama writes
/// `modified_at` (`2024-05-01T12:00:00.123456789-07:00`); 0 when it cannot be read.
fn unix_seconds(time: &str) -> u64 {
    let (Some(local), Some(rest)) = (time.get(..19), time.get(19..)) else {
        return 0;
    };
    let Ok(local) = humantime::parse_rfc3339_weak(local) else {
        return 0;
    };
    let Ok(local) = local.duration_since(UNIX_EPOCH) else {
        return 0;
    };
    let zone = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone.as_bytes() {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let (Some(h), Some(m)) = (zone.get(1..3), zone.get(4..6)) else {
                return 0;
            };
            let (Ok(h), Ok(m)) = (h.parse::<u64>(), m.parse::<u64>()) else {
                return 0;
            };
            let seconds = i64::try_from(h * 3600 + m * 60).unwrap_or(0);
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return 0,
    };
    // Local time minus its offset is UTC.
    let utc = i64::try_from(local.as_secs()).unwrap_or(0) - offset;
    u64::try_from(utc).unwrap_or(0)
}

/// `GET`/`HEAD /v1/models`: every model the key may use. An upstream that fails to answer
/// leaves its part out, as in `/api/tags`.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> HttpResponse {
    let key = key(&req);
    let id = request_id(&req);
    let data: Vec<Value> = gather(&state, &client, key.as_deref(), &id)
        .await
        .iter()
        .map(|entry| match entry {
            Entry::Ollama(m) => from_ollama(ollama_name(m), m),
            Entry::Upstream(up, listed) => from_upstream(up, listed),
        })
        .collect();
    json(&json!({ "object": "list", "data": data }))
}

/// Whether Ollama's list entry `name` is the model a client asked for as `asked`: the
/// same name, or `asked` without a tag, which is its `:latest`.
fn same_model(name: &str, asked: &str) -> bool {
    if name == asked {
        return true;
    }
    let untagged = !asked.rsplit('/').next().unwrap_or(asked).contains(':');
    untagged && name.strip_prefix(asked).is_some_and(|tag| tag == ":latest")
}

/// `GET`/`HEAD /v1/models/{model}`: the model object; 403 when the key may not use it
/// (as `/api/show` answers), 404 `model_not_found` when no list holds it, and the
/// upstream's failure (502/504) when its list cannot be read: a client checking a model
/// before using it must not be told one is there which may not be.
pub async fn retrieve(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let asked = path.into_inner();
    let key = key(&req);
    may_use(key.as_deref(), &asked)?;
    let id = request_id(&req);
    let not_found = || GatewayError::ModelNotFound {
        model: asked.chars().take(200).collect(),
    };
    match catalog::route(&state.config, &asked) {
        Route::Ollama => {
            let list = ollama_list(&state, &client, key.as_deref(), &id)
                .await
                .map_err(counted(&state, OLLAMA))?;
            let entry = list
                .iter()
                .find(|m| same_model(ollama_name(m), &asked))
                .ok_or_else(not_found)?;
            Ok(json(&from_ollama(&asked, entry)))
        }
        Route::OpenAi { upstream, model } => {
            let list = upstream_list(&state, &client, upstream, &id)
                .await
                .map_err(counted(&state, &upstream.name))?;
            let listed = list.iter().find(|m| m.id == model).ok_or_else(not_found)?;
            Ok(json(&from_upstream(upstream, listed)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339(seconds: u64) -> String {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        humantime::format_rfc3339_seconds(at).to_string()
    }

    #[test]
    fn modified_at_is_read_with_its_offset() {
        assert_eq!(unix_seconds("1970-01-01T00:00:10Z"), 10);
        assert_eq!(
            rfc3339(unix_seconds("2024-05-01T12:00:00.123456789-07:00")),
            "2024-05-01T19:00:00Z"
        );
        assert_eq!(
            rfc3339(unix_seconds("2024-05-01T12:00:00+02:30")),
            "2024-05-01T09:30:00Z"
        );
        assert_eq!(
            unix_seconds("2024-05-01T12:00:00"),
            unix_seconds("2024-05-01T12:00:00Z")
        );
        for bad in [
            "",
            "yesterday",
            "2024-05-01T12:00:00+2",
            "2024-13-01T12:00:00Z",
            "2024-05-01T12:00:00Q",
        ] {
            assert_eq!(unix_seconds(bad), 0, "{bad}");
        }
    }

    #[test]
    fn namespaces_and_tags_as_ollama_names_them() {
        assert_eq!(namespace("llama3:latest"), "library");
        assert_eq!(namespace("jmorgan/llama3:8b"), "jmorgan");
        assert_eq!(
            namespace("hf.co/bartowski/Qwen3-8B-GGUF:Q4_K_M"),
            "bartowski"
        );
        assert!(same_model("llama3:latest", "llama3"));
        assert!(same_model("llama3:8b", "llama3:8b"));
        assert!(!same_model("llama3:8b", "llama3"));
        assert!(!same_model("llama3:latest", "llama"));
        assert!(!same_model("llama3:latest", "llama3:8b"));
    }
}
