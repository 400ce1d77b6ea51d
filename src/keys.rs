//! API keys: the keys file (hashes only), generating and hashing keys, and the table every
//! request is checked against. The table is swapped whole on reload, so requests in flight
//! keep the key they started with.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::budget::{Budget, Scope, Subject, Window, WindowSpec};
use crate::config::{Limits, TokenLimits};
use crate::limits::{KeyLimits, LimiterPool};

/// Every generated key starts with this, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "ogw_";

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read keys file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keys file {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("keys file {path} already has a key with id {id:?}; choose another id")]
    IdTaken { path: PathBuf, id: String },
}

/// One `[[keys]]` or `[[networks]]` entry of the keys file: the user-facing contract. Both
/// describe an identity (id, team, limits, models); a key is known by the hash of its
/// secret (`sha256`), a trusted network by its client addresses (`cidrs`); each entry has
/// its own of the two and not the other's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Not secret; shown in logs and metrics. Unique across keys and networks.
    pub id: String,
    pub team: String,
    /// `[[keys]]`: SHA-256 of the key, 64 hex characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `[[networks]]`: client networks (CIDRs, or single addresses) whose requests without
    /// a key are served as this identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidrs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// The bucket of cheap reads (tags, ps, version, `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_burst: Option<u32>,
    /// Glob patterns (`llama3:*`); absent means every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `"admin"` for a key that may manage models; absent means an ordinary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Token budgets of this identity alone (inside its team's), and its caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<u64>,
}

/// One `[[teams]]` entry: the token budgets all of a team's keys share.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamEntry {
    /// The name keys give in `team`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
}

/// The windows of `subject` that `values` (per minute, per day, per month) set.
fn windows_of(
    subject: &Subject,
    values: [Option<u64>; 3],
) -> impl Iterator<Item = WindowSpec> + '_ {
    Window::ALL
        .into_iter()
        .zip(values)
        .filter_map(move |(window, limit)| {
            limit.map(|limit| WindowSpec {
                subject: subject.clone(),
                window,
                limit,
            })
        })
}

/// What a key may do beyond using models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// Chat, generate, embed, list: the default.
    #[default]
    User,
    /// Also model management (pull, push, create, copy, delete, blobs).
    Admin,
}

impl Role {
    /// The keys file's `role` value (absent: [`Role::User`]); `None` for an unknown role.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None => Some(Self::User),
            Some("admin") => Some(Self::Admin),
            Some(_) => None,
        }
    }

    /// The line that gives an entry this role (empty for the default).
    pub fn toml_line(self) -> &'static str {
        match self {
            Self::User => "",
            Self::Admin => "role = \"admin\"\n",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
    #[serde(default)]
    networks: Vec<KeyEntry>,
    #[serde(default)]
    teams: Vec<TeamEntry>,
}

/// An identity as the gateway uses it: an API key (the secret itself is never held), or a
/// trusted network, which requests without a key from its addresses are served as.
pub struct ApiKey {
    pub id: Arc<str>,
    pub team: Arc<str>,
    pub enabled: bool,
    pub role: Role,
    /// Its request limits and their state.
    pub quota: KeyLimits,
    /// Its token budgets (its own and its team's) and caps.
    pub budget: Budget,
    models: Option<Vec<glob::Pattern>>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("team", &self.team)
            .field("enabled", &self.enabled)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// Whether this key may use `model` (as the client named it, prefix included). Ollama
    /// names a model without a tag `name:latest`, so both spellings are one model here too:
    /// `llama3` allows `llama3:latest`, and `llama3:*` allows `llama3`.
    pub fn allows_model(&self, model: &str) -> bool {
        let Some(patterns) = &self.models else {
            return true;
        };
        let tagged;
        let other = match model.strip_suffix(":latest") {
            Some(bare) => Some(bare),
            None if !model.rsplit('/').next().unwrap_or(model).contains(':') => {
                tagged = format!("{model}:latest");
                Some(tagged.as_str())
            }
            None => None,
        };
        patterns
            .iter()
            .any(|p| p.matches(model) || other.is_some_and(|o| p.matches(o)))
    }
}

/// The keys in force, by hash, and the trusted networks. The digests are already uniform,
/// and the table holds only configured keys, so a fast hasher is enough (no presented key
/// can lengthen a probe).
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], Arc<ApiKey>, foldhash::fast::RandomState>,
    /// Every network of every `[[networks]]` entry, the most specific (longest prefix)
    /// first, so that the first one containing an address is the one that wins.
    networks: Vec<(IpNet, Arc<ApiKey>)>,
    /// How many `[[networks]]` entries there are.
    network_entries: usize,
    /// The `[[teams]]` entries' windows, by team name in file order.
    teams: Vec<(Arc<str>, Vec<WindowSpec>)>,
}

impl KeyTable {
    /// Parses a keys file's text; limits not given per key or network come from `defaults`.
    pub fn parse(
        text: &str,
        path: &Path,
        defaults: Limits,
        pool: &LimiterPool,
    ) -> Result<Self, KeysError> {
        let invalid = |reason: String| KeysError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file: KeysFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let teams = parse_teams(&file.teams).map_err(invalid)?;
        let mut by_hash = HashMap::with_capacity_and_hasher(
            file.keys.len(),
            foldhash::fast::RandomState::default(),
        );
        let mut ids = std::collections::HashSet::new();
        for (n, entry) in file.keys.into_iter().enumerate() {
            let label = format!("key #{} ({:?})", n + 1, entry.id);
            let at = |what: String| invalid(format!("{label}: {what}"));
            if entry.cidrs.is_some() {
                return Err(at(
                    "cidrs belongs in a [[networks]] entry; a key is known by its sha256".into(),
                ));
            }
            let hash =
                parse_hash(entry.sha256.as_deref().unwrap_or_default()).ok_or_else(|| {
                    at("sha256 must be 64 hex characters (the SHA-256 of the key)".into())
                })?;
            let key = identity(entry, defaults, pool, &teams, &mut ids).map_err(at)?;
            if by_hash.insert(hash, Arc::new(key)).is_some() {
                return Err(at("the same sha256 appears twice".into()));
            }
        }
        let network_entries = file.networks.len();
        let mut networks = Vec::new();
        let mut seen: HashMap<IpNet, Arc<str>> = HashMap::default();
        for (n, mut entry) in file.networks.into_iter().enumerate() {
            let label = format!("network #{} ({:?})", n + 1, entry.id);
            let at = |what: String| invalid(format!("{label}: {what}"));
            if entry.sha256.is_some() {
                return Err(at("sha256 belongs in a [[keys]] entry; a network is trusted by its addresses, without a key".into()));
            }
            let cidrs = entry.cidrs.take().unwrap_or_default();
            if cidrs.is_empty() {
                return Err(at(
                    "cidrs is required: the client networks served as this identity".into(),
                ));
            }
            let nets = cidrs
                .iter()
                .map(|c| parse_net(c).map_err(|e| at(format!("cidr {c:?} {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let network = Arc::new(identity(entry, defaults, pool, &teams, &mut ids).map_err(at)?);
            for net in nets {
                if let Some(other) = seen.insert(net, Arc::clone(&network.id)) {
                    return Err(at(format!(
                        "cidr {net} is listed twice (also in network {other:?}); which one wins would be a guess"
                    )));
                }
                networks.push((net, Arc::clone(&network)));
            }
        }
        networks.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Ok(Self {
            by_hash,
            networks,
            network_entries,
            teams,
        })
    }

    /// Every identity (keys, then networks), each once, sorted by id.
    pub fn identities(&self) -> Vec<&Arc<ApiKey>> {
        let mut all: Vec<&Arc<ApiKey>> = self.by_hash.values().collect();
        let mut seen = std::collections::HashSet::new();
        for (_, network) in &self.networks {
            if seen.insert(Arc::as_ptr(network)) {
                all.push(network);
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The `[[teams]]` entries: each team's name and its windows.
    pub fn teams(&self) -> &[(Arc<str>, Vec<WindowSpec>)] {
        &self.teams
    }

    /// The key whose hash matches `presented`, if any. The table is indexed by hash, so
    /// the lookup compares digests, never the secret, and takes the same path for every key.
    pub fn lookup(&self, presented: &str) -> Option<&Arc<ApiKey>> {
        self.by_hash.get(&hash_key(presented))
    }

    /// The identity of a request without a key from `ip` (a canonical client address):
    /// the most specific trusted network containing it, unless that one is disabled (a
    /// disabled network carves its addresses out of a wider one).
    pub fn network(&self, ip: IpAddr) -> Option<&Arc<ApiKey>> {
        self.networks
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, network)| network)
            .filter(|network| network.enabled)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// How many trusted networks (`[[networks]]` entries) there are.
    pub fn networks(&self) -> usize {
        self.network_entries
    }

    /// Whether a key or a network with this id is in the table.
    pub fn has_id(&self, id: &str) -> bool {
        self.by_hash.values().any(|k| &*k.id == id)
            || self.networks.iter().any(|(_, n)| &*n.id == id)
    }

    /// Whether there are no keys (networks aside).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The `[[teams]]` entries: names checked and unique, budgets greater than 0.
/// Each team's name and windows.
type TeamWindows = Vec<(Arc<str>, Vec<WindowSpec>)>;

fn parse_teams(entries: &[TeamEntry]) -> Result<TeamWindows, String> {
    let mut teams: TeamWindows = Vec::with_capacity(entries.len());
    for (n, entry) in entries.iter().enumerate() {
        let at = |what: String| format!("team #{} ({:?}): {what}", n + 1, entry.name);
        check_label(&entry.name).map_err(|e| at(format!("name {e}")))?;
        if teams.iter().any(|(name, _)| **name == *entry.name) {
            return Err(at("the team is listed twice".into()));
        }
        let budgets = TokenLimits {
            tokens_per_minute: entry.tokens_per_minute,
            tokens_per_day: entry.tokens_per_day,
            tokens_per_month: entry.tokens_per_month,
            ..TokenLimits::default()
        };
        budgets.check("").map_err(at)?;
        let subject = Subject {
            scope: Scope::Team,
            name: entry.name.as_str().into(),
        };
        let windows = windows_of(&subject, budgets.windows()).collect();
        teams.push((subject.name, windows));
    }
    Ok(teams)
}

/// The identity an entry describes; `ids` are the ids taken so far (keys and networks).
fn identity(
    entry: KeyEntry,
    defaults: Limits,
    pool: &LimiterPool,
    teams: &[(Arc<str>, Vec<WindowSpec>)],
    ids: &mut std::collections::HashSet<String>,
) -> Result<ApiKey, String> {
    check_label(&entry.id).map_err(|e| format!("id {e}"))?;
    check_label(&entry.team).map_err(|e| format!("team {e}"))?;
    if !ids.insert(entry.id.clone()) {
        return Err("the id is used twice (ids are unique across keys and networks)".into());
    }
    let limits = Limits {
        requests_per_minute: entry
            .requests_per_minute
            .unwrap_or(defaults.requests_per_minute),
        burst: entry.burst.unwrap_or(defaults.burst),
        max_in_flight: entry.max_in_flight.unwrap_or(defaults.max_in_flight),
        reads_per_minute: entry.reads_per_minute.unwrap_or(defaults.reads_per_minute),
        read_burst: entry.read_burst.unwrap_or(defaults.read_burst),
        tokens: {
            let d = defaults.tokens;
            TokenLimits {
                tokens_per_minute: entry.tokens_per_minute.or(d.tokens_per_minute),
                tokens_per_day: entry.tokens_per_day.or(d.tokens_per_day),
                tokens_per_month: entry.tokens_per_month.or(d.tokens_per_month),
                max_output_tokens: entry.max_output_tokens.or(d.max_output_tokens),
                max_context: entry.max_context.or(d.max_context),
            }
        },
    };
    limits.tokens.check("")?;
    let Limits {
        requests_per_minute,
        burst,
        max_in_flight,
        reads_per_minute,
        read_burst,
        tokens,
    } = limits;
    if [
        requests_per_minute,
        burst,
        max_in_flight,
        reads_per_minute,
        read_burst,
    ]
    .contains(&0)
    {
        return Err("requests_per_minute, burst, max_in_flight, reads_per_minute and read_burst must be greater than 0".into());
    }
    let models = match entry.models {
        None => None,
        Some(list) => Some(
            list.iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| format!("model pattern {p:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let role = Role::parse(entry.role.as_deref()).ok_or_else(|| {
        format!(
            "role {:?} is unknown: the only role is \"admin\" (leave role out for an ordinary key)",
            entry.role.as_deref().unwrap_or_default()
        )
    })?;
    let id: Arc<str> = entry.id.as_str().into();
    let team: Arc<str> = entry.team.as_str().into();
    let own = Subject {
        scope: Scope::Key,
        name: Arc::clone(&id),
    };
    let mut windows: Vec<WindowSpec> = windows_of(&own, tokens.windows()).collect();
    if let Some((_, team_windows)) = teams.iter().find(|(name, _)| **name == *team) {
        windows.extend(team_windows.iter().cloned());
    }
    let budget = Budget {
        windows,
        max_output_tokens: tokens.max_output_tokens,
        max_context: tokens.max_context,
    };
    Ok(ApiKey {
        quota: pool.key_limits(Arc::clone(&id), limits),
        budget,
        id,
        team,
        enabled: entry.enabled.unwrap_or(true),
        role,
        models,
    })
}

/// A trusted network as the keys file writes it: a CIDR (`10.1.2.0/24`) or one address.
/// Host bits set (`10.1.2.3/24`) are refused rather than truncated: whether one host or
/// its whole network was meant is a guess, and the wrong guess trusts too much.
fn parse_net(text: &str) -> Result<IpNet, &'static str> {
    let text = text.trim();
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| "is not an IP network like 10.0.0.0/8 or 2001:db8::/32")?;
    if net.trunc() != net {
        return Err("has host bits set: write the network address (10.0.0.0/8), or a /32 (/128) for one host");
    }
    if let IpNet::V6(v6) = net {
        if v6.addr().to_ipv4_mapped().is_some() {
            return Err("is IPv4-mapped IPv6: write the IPv4 network (clients are matched by their IPv4 address)");
        }
    }
    Ok(net)
}

/// Ids and teams become log fields and metric labels: short, plain.
fn check_label(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("may use only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a key as presented (surrounding whitespace is not part of a key).
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A new key: the prefix and 256 random bits, base64url.
pub fn generate_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A random id suffix, so `keys new --team a` twice gives two ids.
pub fn random_suffix() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 3];
    getrandom::fill(&mut bytes)?;
    Ok(to_hex(&bytes))
}

/// The `[[keys]]` entry for a new key, as TOML to append to the keys file.
pub fn entry_toml(id: &str, team: &str, key: &str) -> String {
    format!(
        "[[keys]]\nid = {}\nteam = {}\nsha256 = \"{}\"\n",
        toml_str(id),
        toml_str(team),
        to_hex(&hash_key(key))
    )
}

/// What `keys new --append` adds to the keys file at `path` (missing: created) for `entry`,
/// a new key with id `id`, once the file with it is known to load: an id already there
/// would make the running gateway refuse the reload and the next start fail.
pub fn append_text(
    path: &Path,
    id: &str,
    entry: &str,
    defaults: Limits,
    pool: &LimiterPool,
) -> Result<String, KeysError> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(KeysError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if KeyTable::parse(&existing, path, defaults, pool)?.has_id(id) {
        return Err(KeysError::IdTaken {
            path: path.to_path_buf(),
            id: id.to_string(),
        });
    }
    let addition = format!("\n{entry}");
    KeyTable::parse(&format!("{existing}{addition}"), path, defaults, pool)?;
    Ok(addition)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The keys in force, reloadable from their file.
pub struct Keys {
    current: ArcSwap<KeyTable>,
    path: PathBuf,
    defaults: Limits,
    pool: Arc<LimiterPool>,
    digest: Mutex<Option<[u8; 32]>>,
}

impl Keys {
    /// Loads the keys file. A missing file gives an empty table (every request refused),
    /// so a fresh install starts and tells the operator how to add a key; it counts as
    /// seen, so the reload checks say nothing until it appears.
    pub fn load(path: &Path, defaults: Limits, pool: Arc<LimiterPool>) -> Result<Self, KeysError> {
        let read = std::fs::read(path);
        let keys = Self {
            current: ArcSwap::from_pointee(KeyTable::default()),
            path: path.to_path_buf(),
            defaults,
            pool,
            digest: Mutex::new(Some(read_digest(&read))),
        };
        match read {
            Ok(bytes) => {
                keys.install(&bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KeysError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        Ok(keys)
    }

    /// The table in force now.
    pub fn table(&self) -> Arc<KeyTable> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed since last looked at. On any error the old keys
    /// stay in force; each change (or each new way of failing to read) is tried and reported
    /// once, not on every check. Returns the number of keys when a new table was installed.
    pub fn reload_if_changed(&self) -> Result<Option<usize>, KeysError> {
        let read = std::fs::read(&self.path);
        let digest = read_digest(&read);
        {
            let mut seen = self.digest.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == Some(digest) {
                return Ok(None);
            }
            *seen = Some(digest);
        }
        let bytes = read.map_err(|source| KeysError::Read {
            path: self.path.clone(),
            source,
        })?;
        self.install(&bytes).map(Some)
    }

    fn install(&self, bytes: &[u8]) -> Result<usize, KeysError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeysError::Invalid {
            path: self.path.clone(),
            reason: "not UTF-8 text".into(),
        })?;
        let table = KeyTable::parse(text, &self.path, self.defaults, &self.pool)?;
        let n = table.len();
        self.current.store(Arc::new(table));
        Ok(n)
    }
}

/// What a reload check compares with the last one: the file's digest, or the way it failed
/// to read (so each new way is reported once).
fn read_digest(read: &std::io::Result<Vec<u8>>) -> [u8; 32] {
    match read {
        Ok(bytes) => Sha256::digest(bytes).into(),
        Err(e) => Sha256::digest(format!("unreadable: {:?}", e.kind())).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Limits = Limits {
        requests_per_minute: 60,
        burst: 5,
        max_in_flight: 2,
        reads_per_minute: 600,
        read_burst: 60,
        tokens: TokenLimits {
            tokens_per_minute: None,
            tokens_per_day: None,
            tokens_per_month: None,
            max_output_tokens: None,
            max_context: None,
        },
    };

    fn table(text: &str) -> Result<KeyTable, KeysError> {
        KeyTable::parse(
            text,
            Path::new("keys.toml"),
            DEFAULTS,
            &LimiterPool::default(),
        )
    }

    #[test]
    fn generated_keys_hash_and_parse_round_trip() {
        let key = generate_key().unwrap();
        assert!(key.starts_with("ogw_") && key.len() == 4 + 43, "{key}");
        assert_ne!(key, generate_key().unwrap());
        let t = table(&entry_toml("team-a-ci", "team-a", &key)).unwrap();
        let found = t.lookup(&key).unwrap();
        assert_eq!(&*found.id, "team-a-ci");
        assert_eq!(found.quota.limits, DEFAULTS);
        assert!(found.enabled);
        assert!(t.lookup(&format!("{key}x")).is_none());
        assert!(
            t.lookup(&format!(" {key}\n")).is_some(),
            "whitespace is not part of a key"
        );
    }

    #[test]
    fn contract_example_parses_with_overrides_and_models() {
        let hash = to_hex(&hash_key("ogw_test"));
        let text = format!(
            "[[keys]]\nid = \"team-a-ci\"\nteam = \"team-a\"\nsha256 = \"{hash}\"\nrequests_per_minute = 120\nburst = 20\nmax_in_flight = 4\nmodels = [\"llama3:*\", \"openai/gpt-4o-mini\"]\nenabled = true\n"
        );
        let t = table(&text).unwrap();
        let k = t.lookup("ogw_test").unwrap();
        assert_eq!(k.quota.limits.burst, 20);
        assert!(k.allows_model("llama3:instruct"));
        assert!(k.allows_model("openai/gpt-4o-mini"));
        assert!(!k.allows_model("openai/gpt-4o"));
        assert!(!k.allows_model("mistral"));
    }

    #[test]
    fn a_model_without_a_tag_is_its_latest_tag() {
        let hash = to_hex(&hash_key("ogw_test"));
        let text = format!(
            "[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{hash}\"\nmodels = [\"nomic-embed-text\", \"llama3:*\", \"qwen:latest\", \"localhost:5000/m\"]\n"
        );
        let t = table(&text).unwrap();
        let k = t.lookup("ogw_test").unwrap();
        for allowed in [
            "nomic-embed-text",
            "nomic-embed-text:latest",
            "llama3",
            "llama3:8b",
            "qwen",
            "qwen:latest",
            "localhost:5000/m",
            "localhost:5000/m:latest",
        ] {
            assert!(k.allows_model(allowed), "{allowed}");
        }
        for refused in [
            "nomic-embed-text:v1.5",
            "qwen:7b",
            "llama",
            "localhost:5000/m:v2",
            "localhost:latest",
        ] {
            assert!(!k.allows_model(refused), "{refused}");
        }
    }

    #[test]
    fn committed_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keys.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let t = KeyTable::parse(&text, &path, DEFAULTS, &LimiterPool::default()).unwrap();
        let k = t.lookup("ogw_example_do_not_use").unwrap();
        assert_eq!(&*k.team, "team-a");
        assert!(k.allows_model("llama3:instruct"));
        assert_eq!(t.networks(), 0, "no network is trusted by default");
        // The commented-out network example, uncommented, is valid too.
        let (_, example) = text.split_once("# [[networks]]").unwrap();
        let uncommented: String = std::iter::once("[[networks]]")
            .chain(example.lines().filter_map(|l| l.strip_prefix("# ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let t = KeyTable::parse(&uncommented, &path, DEFAULTS, &LimiterPool::default()).unwrap();
        let lab = t.network(IpAddr::from([10, 30, 0, 7])).unwrap();
        assert_eq!((&*lab.id, &*lab.team), ("lab-workstations", "research"));
    }

    #[test]
    fn role_admin_is_read_and_unknown_roles_name_their_entry() {
        let entry =
            |id: &str, key: &str, extra: &str| format!("{}{extra}", entry_toml(id, "ops", key));
        let text = [
            entry("ops-admin", "ogw_a", Role::Admin.toml_line()),
            entry("ops-user", "ogw_u", Role::User.toml_line()),
        ]
        .join("\n");
        let t = table(&text).unwrap();
        assert_eq!(t.lookup("ogw_a").unwrap().role, Role::Admin);
        assert_eq!(t.lookup("ogw_u").unwrap().role, Role::User);
        for role in ["Admin", "root", ""] {
            let text = format!(
                "{}\n{}",
                entry("first", "ogw_1", ""),
                entry("second", "ogw_2", &format!("role = {role:?}\n"))
            );
            let err = table(&text).unwrap_err().to_string();
            assert!(
                err.contains("key #2 (\"second\")")
                    && err.contains(&format!("role {role:?} is unknown")),
                "{err}"
            );
        }
    }

    #[test]
    fn invalid_files_are_rejected_with_reasons() {
        let h = to_hex(&hash_key("k"));
        for (text, needle) in [
            ("[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"abc\"\n".to_string(), "sha256"),
            (format!("[[keys]]\nid = \"a b\"\nteam = \"t\"\nsha256 = \"{h}\"\n"), "id"),
            (format!("[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{h}\"\nburst = 0\n"), "greater than 0"),
            (format!("[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{h}\"\nsecret = \"x\"\n"), "secret"),
            (format!("[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{h}\"\n[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{}\"\n", to_hex(&hash_key("j"))), "twice"),
            (format!("[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{h}\"\n[[keys]]\nid = \"b\"\nteam = \"t\"\nsha256 = \"{h}\"\n"), "twice"),
            (format!("[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{h}\"\nmodels = [\"[\"]\n"), "pattern"),
            ("[[keys]\n".to_string(), "keys.toml"),
        ] {
            let err = table(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(table("").unwrap().is_empty());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_serve_their_addresses_most_specific_first() {
        let text = format!(
            "{}[[networks]]\nid = \"lab\"\nteam = \"research\"\ncidrs = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n\
             [[networks]]\nid = \"gpu-box\"\nteam = \"ml\"\ncidrs = [\"10.1.2.3\"]\nmax_in_flight = 9\nread_burst = 7\nmodels = [\"llama3:*\"]\n\
             [[networks]]\nid = \"printers\"\nteam = \"it\"\ncidrs = [\"10.9.0.0/16\"]\nenabled = false\n",
            entry_toml("k", "t", "ogw_k")
        );
        let t = table(&text).unwrap();
        assert_eq!((t.len(), t.networks()), (1, 3));
        let id = |addr: &str| t.network(ip(addr)).map(|n| n.id.to_string());
        assert_eq!(id("10.200.0.1").as_deref(), Some("lab"));
        assert_eq!(id("2001:db8::7").as_deref(), Some("lab"));
        assert_eq!(id("10.1.2.3").as_deref(), Some("gpu-box"), "longest prefix");
        assert_eq!(id("10.1.2.4").as_deref(), Some("lab"));
        assert_eq!(
            id("10.9.1.1"),
            None,
            "a disabled network carves its addresses out"
        );
        assert_eq!(id("192.168.1.1"), None);
        let gpu = t.network(ip("10.1.2.3")).unwrap();
        assert_eq!(&*gpu.team, "ml");
        assert_eq!(gpu.quota.limits.max_in_flight, 9);
        assert_eq!(gpu.quota.limits.read_burst, 7);
        assert_eq!(gpu.quota.limits.burst, DEFAULTS.burst);
        assert!(gpu.allows_model("llama3:8b") && !gpu.allows_model("mistral"));
        assert!(t.has_id("printers") && t.has_id("k") && !t.has_id("nope"));
        assert!(t.lookup("ogw_k").is_some());
        assert_eq!(table("").unwrap().networks(), 0);
    }

    #[test]
    fn invalid_networks_are_rejected_naming_them() {
        let net = |extra: &str| {
            format!("[[networks]]\nid = \"lab\"\nteam = \"t\"\ncidrs = [\"10.0.0.0/8\"]\n{extra}")
        };
        let h = to_hex(&hash_key("k"));
        for (text, needle) in [
            (
                "[[networks]]\nid = \"lab\"\nteam = \"t\"\ncidrs = [\"10.0.0.0/33\"]\n".to_string(),
                "network #1 (\"lab\"): cidr \"10.0.0.0/33\" is not an IP network",
            ),
            (
                "[[networks]]\nid = \"lab\"\nteam = \"t\"\ncidrs = [\"10.0.0.1/8\"]\n".to_string(),
                "\"10.0.0.1/8\" has host bits set",
            ),
            (
                "[[networks]]\nid = \"lab\"\nteam = \"t\"\ncidrs = [\"::ffff:10.0.0.0/104\"]\n".to_string(),
                "IPv4-mapped",
            ),
            ("[[networks]]\nid = \"lab\"\nteam = \"t\"\n".to_string(), "cidrs is required"),
            ("[[networks]]\nid = \"lab\"\nteam = \"t\"\ncidrs = []\n".to_string(), "cidrs is required"),
            (net(&format!("sha256 = \"{h}\"\n")), "sha256 belongs in a [[keys]] entry"),
            (net("burst = 0\n"), "greater than 0"),
            (net("read_burst = 0\n"), "greater than 0"),
            (net("secret = \"x\"\n"), "secret"),
            (
                format!("{}{}", entry_toml("lab", "t", "ogw_k"), net("")),
                "network #1 (\"lab\"): the id is used twice",
            ),
            (format!("{}{}", net(""), net("")), "network #2 (\"lab\"): the id is used twice"),
            (
                format!("{}{}", net(""), net("").replace("\"lab\"", "\"lab2\"")),
                "network #2 (\"lab2\"): cidr 10.0.0.0/8 is listed twice (also in network \"lab\")",
            ),
            (
                format!("[[keys]]\nid = \"a\"\nteam = \"t\"\nsha256 = \"{h}\"\ncidrs = [\"10.0.0.0/8\"]\n"),
                "key #1 (\"a\"): cidrs belongs in a [[networks]] entry",
            ),
            ("[[keys]]\nid = \"a\"\nteam = \"t\"\n".to_string(), "sha256 must be 64 hex"),
        ] {
            let err = table(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
