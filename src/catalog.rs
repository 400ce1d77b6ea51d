//! The models the gateway knows and where each is served: one routing decision for every
//! endpoint. A model `<prefix><name>` goes to the OpenAI-compatible upstream with that
//! prefix (the longest configured prefix wins), as `<name>`; every other model to Ollama.

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
