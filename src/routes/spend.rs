//! What a model request spends before it is sent: its token budget reservation (prompt
//! estimate plus output) and the output and context limits the gateway writes into it,
//! for an identity with budgets or caps. Requests of other identities pass untouched and
//! unread.

use std::sync::Arc;

use bytes::Bytes;

use crate::budget::{estimate, Output};
use crate::config::Config;
use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::metrics::Caps;
use crate::translate::limit::Limits;

/// A request's reservation and the limits written into it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// The prompt's estimated tokens.
    pub prompt: u64,
    /// The output reserved.
    pub output: u64,
    pub caps: Caps,
}

impl Spend {
    /// Tokens to reserve.
    pub fn tokens(&self) -> u64 {
        self.prompt.saturating_add(self.output)
    }
}

/// Where a request asks for its output limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Ollama's `options.num_predict` (and `options.num_ctx`); `generates` is false for
    /// embeddings, which have no output.
    Ollama { generates: bool },
    /// OpenAI's `max_completion_tokens` or `max_tokens` (chat, completions).
    OpenAi,
    /// Anthropic's `max_tokens`.
    Anthropic,
    /// No output and no limit to write (OpenAI's embeddings).
    Embeddings,
}

const OLLAMA: &[&str] = &["num_predict", "num_ctx"];
const OPENAI: &[&str] = &["max_tokens", "max_completion_tokens"];
const ANTHROPIC: &[&str] = &["max_tokens"];

/// The spend of `body` for `key`, and the body to send (with the limits written, or as it
/// came). Nothing is read for an identity without budgets or caps.
pub fn of(
    key: Option<&Arc<ApiKey>>,
    config: &Config,
    body: Bytes,
    shape: Shape,
) -> Result<(Spend, Bytes), GatewayError> {
    let Some(budget) = key.map(|k| &k.budget).filter(|b| b.applies()) else {
        return Ok((Spend::default(), body));
    };
    let default = config.budgets.default_output_reservation;
    let prompt = if budget.is_limited() {
        estimate::prompt_tokens(&body)
    } else {
        0
    };
    let (output, caps, set) = match shape {
        Shape::Embeddings => (
            Output {
                reserve: 0,
                cap: None,
            },
            Caps::default(),
            None,
        ),
        Shape::Ollama { generates } => {
            let limits = Read::new(&body, Some("options"), OLLAMA)?;
            let output = if generates {
                budget.output(limits.get("num_predict"), default)
            } else {
                Output {
                    reserve: 0,
                    cap: None,
                }
            };
            let context = budget.context(context_asked(&limits));
            let mut set = Vec::new();
            if let Some(cap) = output.cap {
                set.push(("num_predict", cap));
            }
            if let Some(ctx) = context {
                set.push(("num_ctx", ctx));
            }
            let caps = Caps {
                output: output.cap,
                context,
            };
            (output, caps, limits.written(&set)?)
        }
        Shape::OpenAi => {
            let limits = Read::new(&body, None, OPENAI)?;
            let asked = [
                limits.get("max_completion_tokens"),
                limits.get("max_tokens"),
            ]
            .into_iter()
            .flatten()
            .min();
            let output = budget.output(asked, default);
            let mut set = Vec::new();
            if let Some(cap) = output.cap {
                // The one the client used (both, if it sent both); `max_tokens` if none.
                let given: Vec<&'static str> =
                    OPENAI.iter().copied().filter(|n| limits.has(n)).collect();
                if given.is_empty() {
                    set.push(("max_tokens", cap));
                }
                set.extend(given.into_iter().map(|n| (n, cap)));
            }
            let caps = Caps {
                output: output.cap,
                context: None,
            };
            (output, caps, limits.written(&set)?)
        }
        Shape::Anthropic => {
            let limits = Read::new(&body, None, ANTHROPIC)?;
            let output = budget.output(limits.get("max_tokens"), default);
            let set: Vec<_> = output
                .cap
                .map(|cap| ("max_tokens", cap))
                .into_iter()
                .collect();
            let caps = Caps {
                output: output.cap,
                context: None,
            };
            (output, caps, limits.written(&set)?)
        }
    };
    let spend = Spend {
        prompt,
        output: if budget.is_limited() {
            output.reserve
        } else {
            0
        },
        caps,
    };
    Ok((spend, set.map_or(body, Bytes::from)))
}

/// `options.num_ctx` as asked: a value that is not an integer counts as too large, so that
/// it is replaced.
fn context_asked(limits: &Read<'_>) -> Option<i64> {
    match limits.get("num_ctx") {
        Some(n) => Some(n),
        None if limits.has("num_ctx") => Some(i64::MAX),
        None => None,
    }
}

/// The limits a body asks for, read only when it may name one: a body that is all ASCII,
/// has no escape (`\`), and holds none of the names (nor the container, `options`) in any
/// ASCII case cannot set one under any spelling a Go upstream would read, so its answer is
/// "none asked" without parsing it (the route parses it next anyway). Measured: the parse
/// was ~3,200 instructions of every budgeted request.
struct Read<'a> {
    body: &'a [u8],
    within: Option<&'static str>,
    names: &'static [&'static str],
    limits: Option<Limits<'a>>,
}

impl<'a> Read<'a> {
    fn new(
        body: &'a [u8],
        within: Option<&'static str>,
        names: &'static [&'static str],
    ) -> Result<Self, GatewayError> {
        let limits = if may_name(body, within, names) {
            Some(Limits::read(body, within, names)?)
        } else {
            None
        };
        Ok(Self {
            body,
            within,
            names,
            limits,
        })
    }

    fn get(&self, name: &str) -> Option<i64> {
        self.limits.as_ref().and_then(|l| l.get(name))
    }

    fn has(&self, name: &str) -> bool {
        self.limits.as_ref().is_some_and(|l| l.has(name))
    }

    /// The body with `set` written, if there is anything to write (read now if it was not).
    fn written(&self, set: &[(&'static str, u64)]) -> Result<Option<Vec<u8>>, GatewayError> {
        if set.is_empty() {
            return Ok(None);
        }
        Ok(Some(match &self.limits {
            Some(limits) => limits.write(set),
            None => Limits::read(self.body, self.within, self.names)?.write(set),
        }))
    }
}

/// Whether `body` may name one of `names` where they are read: anything not plain ASCII
/// without escapes may (an escaped or case-folded key is still the key to a Go decoder).
/// Names read in the object `within` cannot be set by a body that never names `within`.
fn may_name(body: &[u8], within: Option<&str>, names: &[&str]) -> bool {
    if !body.is_ascii() || memchr::memchr(b'\\', body).is_some() {
        return true;
    }
    match within {
        Some(within) => contains_ignoring_case(body, within.as_bytes()),
        None => names
            .iter()
            .any(|name| contains_ignoring_case(body, name.as_bytes())),
    }
}

fn contains_ignoring_case(body: &[u8], name: &[u8]) -> bool {
    let Some(&first) = name.first() else {
        return true;
    };
    memchr::memchr2_iter(first.to_ascii_lowercase(), first.to_ascii_uppercase(), body).any(|i| {
        body.get(i..i + name.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_may_name_a_limit_only_where_it_is_read() {
        let ollama = |body: &str| may_name(body.as_bytes(), Some("options"), OLLAMA);
        let openai = |body: &str| may_name(body.as_bytes(), None, OPENAI);
        // Ollama reads its limits in `options` only: a body that never names it sets none.
        assert!(!ollama(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#
        ));
        assert!(!ollama(r#"{"model":"m","num_predict":5,"num_ctx":9}"#));
        assert!(ollama(r#"{"model":"m","options":{}}"#));
        assert!(ollama(r#"{"model":"m","OpTiOnS":{"NUM_PREDICT":5}}"#));
        assert!(!openai(r#"{"model":"m","messages":[]}"#));
        assert!(openai(r#"{"model":"m","MAX_tokens":5}"#));
        assert!(openai(r#"{"model":"m","max_completion_tokens":5}"#));
        // Escapes and non-ASCII text may spell a name another way: read.
        assert!(ollama(r#"{"model":"m","\u006fptions":{}}"#));
        assert!(openai(r#"{"model":"m","content":"é"}"#));
    }
}
