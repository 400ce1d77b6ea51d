//! The models the gateway knows and where each is served: one routing decision for every
//! endpoint. A model `<prefix><name>` goes to the OpenAI-compatible upstream with that
//! prefix (the longest configured prefix wins), as `<name>`; every other model to Ollama.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{Config, OpenAiConfig};

/// Where a model name sends the request.
#[derive(Debug, Clone, Copy)]
pub enum Route<'c, 'm> {
    /// Everything without a configured prefix goes to Ollama, unchanged.
    Ollama,
    /// `<prefix><model>` goes to this OpenAI-compatible upstream as `<model>`.
    OpenAi {
        upstream: &'c OpenAiConfig,
        model: &'m str,
    },
}

/// Picks the upstream for `model`: the longest matching configured prefix, else Ollama.
pub fn route<'c, 'm>(config: &'c Config, model: &'m str) -> Route<'c, 'm> {
    for upstream in &config.upstreams {
        if let Some(rest) = model.strip_prefix(upstream.prefix.as_str()) {
            return Route::OpenAi {
                upstream,
                model: rest,
            };
        }
    }
    Route::Ollama
}

/// One model an OpenAI-compatible upstream serves, as its list (or its config) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The upstream's own name for it (`gpt-4o-mini`), without the prefix.
    pub id: String,
    /// When it was made, in seconds since the Unix epoch, if the upstream says.
    pub created: Option<u64>,
}

/// The model lists of the OpenAI-compatible upstreams, each reused for `catalog.cache_ttl`
/// (they are remote, slow and often rate-limited; Ollama's own list is asked for each time).
/// Shared by all workers.
#[derive(Debug, Default)]
pub struct Catalog {
    lists: Mutex<HashMap<String, Fetched>>,
}

/// A list and when it was fetched.
type Fetched = (Instant, Arc<[Listed]>);

impl Catalog {
    /// `upstream`'s list if it was fetched less than `ttl` ago.
    pub fn cached(&self, upstream: &str, ttl: Duration) -> Option<Arc<[Listed]>> {
        let lists = self.lists.lock().ok()?;
        let (at, list) = lists.get(upstream)?;
        (at.elapsed() < ttl).then(|| Arc::clone(list))
    }

    /// Keeps `list` as `upstream`'s, from now.
    pub fn store(&self, upstream: &str, list: Arc<[Listed]>) {
        if let Ok(mut lists) = self.lists.lock() {
            lists.insert(upstream.to_string(), (Instant::now(), list));
        }
    }
}

/// The entries of an OpenAI `GET /models` answer (`{"data": [{"id", "created"}, ...]}`).
pub fn parse_openai_models(body: &[u8]) -> Result<Vec<Listed>, String> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        #[serde(default)]
        created: Option<u64>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| format!("not a model list: {e}"))?;
    Ok(list
        .data
        .into_iter()
        .map(|e| Listed {
            id: e.id,
            created: e.created,
        })
        .collect())
}

/// The configured `models` of an upstream, as a list.
pub fn configured(models: &[String]) -> Vec<Listed> {
    models
        .iter()
        .map(|id| Listed {
            id: id.clone(),
            created: None,
        })
        .collect()
}

/// A model family guessed from the only thing known, its name: what comes before the first
/// `-`, `:` or `.` (`gpt-4o-mini` is `gpt`, `claude-3-5-haiku` is `claude`).
pub fn family(id: &str) -> &str {
    let base = id.rsplit('/').next().unwrap_or(id);
    let end = base.find(['-', ':', '.']).unwrap_or(base.len());
    let family = &base[..end];
    if family.is_empty() {
        base
    } else {
        family
    }
}

/// Ollama's `details` object for a model known only by name.
fn details(family: &str) -> serde_json::Value {
    serde_json::json!({
        "parent_model": "",
        "format": "",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": "",
    })
}

/// RFC 3339 for `created` (or the Unix epoch when unknown: the list does not say).
fn timestamp(created: Option<u64>) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(created.unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// An upstream's model as an entry of Ollama's `ListResponse` (`/api/tags`): `name` and
/// `model` both carry the prefixed name clients use.
pub fn tag_entry(up: &OpenAiConfig, listed: &Listed) -> serde_json::Value {
    let name = format!("{}{}", up.prefix, listed.id);
    serde_json::json!({
        "name": name,
        "model": name,
        "modified_at": timestamp(listed.created),
        "size": 0,
        "digest": "",
        "details": details(family(&listed.id)),
        "capabilities": up.capabilities,
        "remote_host": up.name,
    })
}

/// `/api/show` for an upstream's model: only what is known (its name, upstream, family,
/// the capabilities configured for the upstream), with every field the official clients
/// read present (`model_info` included; ollama-python requires the key).
pub fn show_entry(up: &OpenAiConfig, id: &str, created: Option<u64>) -> serde_json::Value {
    let family = family(id);
    serde_json::json!({
        "modelfile": format!("# {}{} is served by the OpenAI-compatible upstream {} as {}\n", up.prefix, id, up.name, id),
        "parameters": "",
        "template": "",
        "license": "",
        "details": details(family),
        "model_info": {
            "general.architecture": family,
            "general.basename": id,
        },
        "capabilities": up.capabilities,
        "modified_at": timestamp(created),
        "remote_host": up.name,
        "remote_model": id,
    })
}

/// The `models` entries of an Ollama list answer (`/api/tags`, `/api/ps`) that `keep`
/// admits, by the name a client would use (`model`, else `name`).
pub fn filter_ollama_list(
    body: &[u8],
    mut keep: impl FnMut(&str) -> bool,
) -> Result<Vec<serde_json::Value>, String> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        models: Vec<serde_json::Value>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| format!("not a model list: {e}"))?;
    Ok(list
        .models
        .into_iter()
        .filter(|m| {
            let name = m
                .get("model")
                .or_else(|| m.get("name"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            keep(name)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> OpenAiConfig {
        let mut raw = crate::config::RawConfig::default();
        if let Some(up) = raw.upstreams.get_mut("openai") {
            up.api_key = crate::secret::Secret::new("sk-test");
        }
        let config = Config::from_raw(raw).map_err(|e| e.to_string());
        config
            .ok()
            .and_then(|c| c.upstreams.into_iter().next())
            .unwrap_or_else(|| unreachable!("the default config has an openai upstream"))
    }

    #[test]
    fn openai_lists_parse_and_bad_ones_say_why() {
        let list = parse_openai_models(
            br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"},{"id":"o3"}]}"#,
        );
        assert_eq!(
            list,
            Ok(vec![
                Listed {
                    id: "gpt-4o-mini".into(),
                    created: Some(1_721_172_741)
                },
                Listed {
                    id: "o3".into(),
                    created: None
                },
            ])
        );
        assert!(parse_openai_models(b"<html>").is_err_and(|e| e.contains("not a model list")));
        assert!(parse_openai_models(br#"{"models":[]}"#).is_err());
    }

    #[test]
    fn families_come_from_the_name() {
        assert_eq!(family("gpt-4o-mini"), "gpt");
        assert_eq!(family("claude-3-5-haiku"), "claude");
        assert_eq!(family("meta-llama/Llama-3.1-8B"), "Llama");
        assert_eq!(family("o3"), "o3");
        assert_eq!(family("-odd"), "-odd");
    }

    #[test]
    fn entries_carry_the_prefixed_name_and_every_field_clients_read() {
        let up = upstream();
        let tag = tag_entry(
            &up,
            &Listed {
                id: "gpt-4o-mini".into(),
                created: Some(0),
            },
        );
        assert_eq!(tag["name"], "openai/gpt-4o-mini");
        assert_eq!(tag["model"], "openai/gpt-4o-mini");
        assert_eq!(tag["modified_at"], "1970-01-01T00:00:00Z");
        assert_eq!(tag["details"]["family"], "gpt");
        let show = show_entry(&up, "gpt-4o-mini", None);
        for field in [
            "modelfile",
            "parameters",
            "template",
            "details",
            "model_info",
            "capabilities",
            "modified_at",
        ] {
            assert!(show.get(field).is_some(), "{field}");
        }
        assert_eq!(
            show["capabilities"],
            serde_json::json!(["completion", "tools"])
        );
    }

    #[test]
    fn ollama_lists_are_filtered_by_the_client_name() {
        let body =
            br#"{"models":[{"name":"llama3:latest","model":"llama3:latest"},{"name":"qwen3:8b"}]}"#;
        let kept = filter_ollama_list(body, |m| m.starts_with("llama3")).unwrap_or_default();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["name"], "llama3:latest");
        let all = filter_ollama_list(body, |_| true).unwrap_or_default();
        assert_eq!(all.len(), 2, "an entry without `model` is judged by `name`");
        assert!(filter_ollama_list(b"nope", |_| true).is_err());
    }

    #[test]
    fn the_cache_forgets_after_its_time() {
        let catalog = Catalog::default();
        let list: Arc<[Listed]> = configured(&["a".into()]).into();
        catalog.store("openai", Arc::clone(&list));
        assert_eq!(
            catalog.cached("openai", Duration::from_secs(60)).as_deref(),
            Some(&*list)
        );
        assert!(catalog.cached("openai", Duration::ZERO).is_none());
        assert!(catalog.cached("other", Duration::from_secs(60)).is_none());
    }
}
