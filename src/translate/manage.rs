//! Ollama's model management requests (pull, push, create, copy, delete; PROTOCOLS.md 1.1),
//! read only for what the gateway decides on: the models they name, whether they stream;
//! and the blob digest of `/api/blobs/:digest`. The bodies themselves go to Ollama as sent.

use std::borrow::Cow;

use serde::Deserialize;

use crate::error::GatewayError;

/// One of the JSON model management operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Pull,
    Push,
    Create,
    Copy,
    Delete,
}

impl Operation {
    pub const ALL: [Self; 5] = [
        Self::Pull,
        Self::Push,
        Self::Create,
        Self::Copy,
        Self::Delete,
    ];

    /// Ollama's path for it, also the gateway's route and its metric label.
    pub fn path(self) -> &'static str {
        match self {
            Self::Pull => "/api/pull",
            Self::Push => "/api/push",
            Self::Create => "/api/create",
            Self::Copy => "/api/copy",
            Self::Delete => "/api/delete",
        }
    }

    /// Whether Ollama answers it with a progress stream (unless `stream` is false).
    pub fn reports_progress(self) -> bool {
        matches!(self, Self::Pull | Self::Push | Self::Create)
    }
}

/// The fields any of them may carry; unknown fields are ignored, as Ollama's decoder does.
#[derive(Debug, Default, Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    model: Option<Cow<'a, str>>,
    /// The older name of `model`, still accepted by Ollama.
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    name: Option<Cow<'a, str>>,
    /// `create`: the model it starts from.
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    from: Option<Cow<'a, str>>,
    /// `create`'s legacy form (Ollama before 0.5.5): a Modelfile whose `FROM` names the
    /// model (or file) it starts from.
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    modelfile: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    source: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    destination: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// A management request as far as the gateway reads it.
#[derive(Debug)]
pub struct ManageRequest<'a> {
    /// Every model the request touches: the one it acts on first (the metric's model),
    /// then `create`'s `from` and its Modelfile's `FROM`s, or `copy`'s destination.
    pub models: Vec<Cow<'a, str>>,
    /// Ollama streams progress unless `stream` is explicitly false.
    pub streams: bool,
}

fn given<'a>(value: Option<Cow<'a, str>>) -> Option<Cow<'a, str>> {
    value.filter(|v| !v.trim().is_empty())
}

impl<'a> ManageRequest<'a> {
    /// Parses the body of `op`: JSON, and the model names it needs (`model`, or the older
    /// `name`, as Ollama takes them; `source` and `destination` for copy).
    pub fn parse(op: Operation, body: &'a [u8]) -> Result<Self, GatewayError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::EmptyBody);
        }
        let fields: Fields<'a> = serde_json::from_slice(body)
            .map_err(|e| GatewayError::InvalidJson(format!("invalid request body: {e}")))?;
        let models = match op {
            Operation::Copy => match (given(fields.source), given(fields.destination)) {
                (Some(source), Some(destination)) => vec![source, destination],
                _ => {
                    return Err(GatewayError::InvalidField(
                        "copy needs both \"source\" and \"destination\"".into(),
                    ))
                }
            },
            _ => {
                let model = given(fields.model)
                    .or(given(fields.name))
                    .ok_or(GatewayError::MissingModel)?;
                let mut models = vec![model];
                if op == Operation::Create {
                    models.extend(given(fields.from));
                    if let Some(text) = &fields.modelfile {
                        models.extend(modelfile_froms(text).map(|m| Cow::Owned(m.to_string())));
                    }
                }
                models
            }
        };
        Ok(Self {
            models,
            streams: op.reports_progress() && fields.stream != Some(false),
        })
    }

    /// The model the request acts on.
    pub fn model(&self) -> &str {
        self.models.first().map_or("", |m| m)
    }
}

/// The arguments of a Modelfile's `FROM` lines (the command is case-insensitive; a quoted
/// argument loses its quotes), skipping the insides of `"""` blocks, where a line that
/// reads `FROM` is a template's or a system prompt's text.
fn modelfile_froms(text: &str) -> impl Iterator<Item = &str> {
    let mut in_block = false;
    text.lines().filter_map(move |line| {
        let starts_in_block = in_block;
        if line.matches(r#"""""#).count() % 2 == 1 {
            in_block = !in_block;
        }
        if starts_in_block {
            return None;
        }
        let (command, rest) = line.trim_start().split_once(char::is_whitespace)?;
        if !command.eq_ignore_ascii_case("from") {
            return None;
        }
        let arg = rest.trim();
        let arg = arg
            .strip_prefix('"')
            .and_then(|a| a.strip_suffix('"'))
            .unwrap_or(arg);
        (!arg.is_empty()).then_some(arg)
    })
}

/// Checks a blob digest as Ollama names blobs: `sha256:` and 64 hex digits.
pub fn check_digest(digest: &str) -> Result<&str, GatewayError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(digest)
    } else {
        Err(GatewayError::InvalidField(format!(
            "invalid blob digest {:?}: expected sha256: and 64 hex digits",
            digest.chars().take(80).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(op: Operation, body: &str) -> Result<(Vec<String>, bool), String> {
        ManageRequest::parse(op, body.as_bytes())
            .map(|r| (r.models.iter().map(|m| m.to_string()).collect(), r.streams))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn models_and_streaming_are_read_as_ollama_reads_them() {
        use Operation::*;
        let ok = |v: &[&str], s: bool| Ok((v.iter().map(|m| m.to_string()).collect(), s));
        assert_eq!(names(Pull, r#"{"model":"llama3"}"#), ok(&["llama3"], true));
        assert_eq!(
            names(Pull, r#"{"name":"llama3","stream":false}"#),
            ok(&["llama3"], false)
        );
        assert_eq!(
            names(Push, r#"{"model":"me/m","name":"x"}"#),
            ok(&["me/m"], true)
        );
        assert_eq!(
            names(Create, r#"{"model":"mine","from":"llama3","stream":true}"#),
            ok(&["mine", "llama3"], true)
        );
        // The legacy Modelfile's FROM lines are models the request touches too; a FROM in
        // a template's text is not.
        assert_eq!(
            names(
                Create,
                r##"{"model":"mine","modelfile":"# base\nfrom  \"secret:7b\"\nTEMPLATE \"\"\"\nFROM not-a-model\n\"\"\"\nFROM ./weights.gguf\r\nSYSTEM hi","stream":false}"##
            ),
            ok(&["mine", "secret:7b", "./weights.gguf"], false)
        );
        assert_eq!(
            names(Pull, r#"{"model":"a","modelfile":"FROM b"}"#),
            ok(&["a"], true),
            "only create reads a Modelfile"
        );
        assert_eq!(
            names(Copy, r#"{"source":"a","destination":"b"}"#),
            ok(&["a", "b"], false)
        );
        assert_eq!(
            names(Delete, r#"{"model":"a","from":"b"}"#),
            ok(&["a"], false)
        );
        assert_eq!(names(Pull, r#"{"model":"","name":"b"}"#), ok(&["b"], true));
    }

    #[test]
    fn bodies_without_their_models_are_refused() {
        use Operation::*;
        for (op, body, needle) in [
            (Pull, "", "missing request body"),
            (Pull, "{", "invalid request body"),
            (Push, r#"{"model":" "}"#, "model is required"),
            (Delete, r#"{"model":7}"#, "invalid request body"),
            (Copy, r#"{"source":"a"}"#, "\"destination\""),
        ] {
            let err = names(op, body).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
    }

    #[test]
    fn digests_are_sha256_and_64_hex_digits() {
        let hex = "a".repeat(64);
        assert!(check_digest(&format!("sha256:{hex}")).is_ok());
        assert!(check_digest(&format!("sha256:{}", "AbC0".repeat(16))).is_ok());
        for bad in [
            format!("sha256:{}", &hex[..63]),
            format!("sha256:{hex}0"),
            format!("sha256-{hex}"),
            format!("md5:{hex}"),
            format!("sha256:{}", "g".repeat(64)),
            format!("sha256:../{}", &hex[..61]),
            String::new(),
        ] {
            let err = check_digest(&bad).unwrap_err().to_string();
            assert!(err.contains("expected sha256:"), "{bad}: {err}");
        }
    }
}
