//! Operator configuration: which model providers exist (base URL, the environment
//! variable that holds the key, allowed models and their prices) and which teams may use
//! which queues and budgets. Read from a TOML file (`phasefleet.toml`, path from
//! `PHASEFLEET_CONFIG`) with environment overrides `PHASEFLEET__<SECTION>__<KEY>`, e.g.
//! `PHASEFLEET__PROVIDERS__LOCAL__BASE_URL`. Nothing a request or a model sends can change
//! it: a persona names a provider and a model, never a URL or a variable.
//!
//! ```toml
//! [providers.openrouter]
//! base_url = "https://openrouter.ai/api/v1"
//! api_key_env = "OPENROUTER_API_KEY"
//! [providers.openrouter.models."openai/gpt-4o-mini"]
//! input_usd_per_mtok = 0.15
//! output_usd_per_mtok = 0.60
//!
//! [providers.local]
//! base_url = "http://127.0.0.1:8089/v1"
//! allow_insecure_loopback = true     # plain http, only to a loopback address
//! models.local = { free = true }
//!
//! [teams.team-a]
//! queues = ["default", "team-a"]
//! max_budget_usd = 5.0
//!
//! [webhooks.ops]
//! url = "https://hooks.example.com/phasefleet"
//! secret_env = "OPS_WEBHOOK_SECRET"            # HMAC-SHA256 signing secret
//! events = ["approval.requested", "run.ended"] # default: every notification
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The file the configuration is read from, when set.
pub const CONFIG_PATH_ENV: &str = "PHASEFLEET_CONFIG";
/// Prefix of the environment overrides (`PHASEFLEET__PROVIDERS__LOCAL__BASE_URL`).
pub const OVERRIDE_PREFIX: &str = "PHASEFLEET__";

/// Variables a provider may never name as its key: they hold the fleet's own secrets.
const RESERVED_ENV: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "PHASEFLEET_API_TOKENS",
    "PHASEFLEET_METRICS_TOKEN",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration `{field}`: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Everything an operator configures in the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub teams: BTreeMap<String, TeamConfig>,
    /// Where approvals, decisions, run ends and exhausted budgets are announced.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
}

/// One webhook: what it receives, where, signed with which secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://…` (plain http only to a loopback address, with
    /// `allow_insecure_loopback`).
    pub url: String,
    /// The environment variable holding the signing secret (HMAC-SHA256).
    pub secret_env: String,
    #[serde(default)]
    pub allow_insecure_loopback: bool,
    /// Which notifications (default: all of [`crate::webhooks::NOTIFICATIONS`]).
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Only runs of these teams (default: every team).
    #[serde(default)]
    pub teams: Option<Vec<String>>,
    /// Delivery attempts before a delivery is dead-lettered (default 8; 1 to 50).
    #[serde(default)]
    pub max_attempts: Option<i32>,
}

/// One OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// e.g. `https://openrouter.ai/api/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// The environment variable holding the API key; the only one a worker reads for
    /// this provider. None: no key is sent (local servers).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Allow `http://` when the host is a loopback address (a local llama.cpp server,
    /// the test mock). Anything else must be `https://`.
    #[serde(default)]
    pub allow_insecure_loopback: bool,
    /// Models personas may name, with their prices. The key `*` allows any model.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// The provider enforces a tool's parameter schema when asked (`strict: true` on
    /// `submit_artifact`; OpenAI and OpenRouter do).
    #[serde(default)]
    pub strict_tools: bool,
    /// A price list in OpenRouter's `/models` format (`data[].id`, `data[].pricing`
    /// in USD per token), for models without a configured price. Fetched when a submit
    /// needs a price, cached in PostgreSQL for `price_list_ttl_secs`.
    #[serde(default)]
    pub price_list_url: Option<String>,
    #[serde(default = "default_price_list_ttl_secs")]
    pub price_list_ttl_secs: u64,
    /// Speak HTTP/2 to this provider from the first byte (prior knowledge; cleartext
    /// h2c on a loopback `http://` URL). One connection then carries every call of the
    /// worker, which saves a connection and its buffers per call in flight; but the
    /// server's limit on concurrent streams (often 100 to 250) caps this worker's calls
    /// in flight to the provider, and calls beyond it wait. Off (the default): HTTP/1.1,
    /// one connection per call in flight, reused between calls.
    #[serde(default)]
    pub http2: bool,
}

fn default_price_list_ttl_secs() -> u64 {
    24 * 3600
}

/// Prices in USD per million tokens, or `free`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub input_usd_per_mtok: Option<f64>,
    /// Price of prompt tokens served from the provider's cache (default: the input price).
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    pub output_usd_per_mtok: Option<f64>,
    /// The operator declares that this model costs nothing (a local server).
    #[serde(default)]
    pub free: bool,
}

/// What a team may do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// Queues the team's runs may use; default `["default"]`.
    #[serde(default)]
    pub queues: Option<Vec<String>>,
    /// Ceiling of a run's USD budget; a run without a budget gets this one.
    #[serde(default)]
    pub max_budget_usd: Option<f64>,
    #[serde(default)]
    pub max_budget_tokens: Option<i64>,
}

/// A model's token prices (USD per million tokens).
#[derive(Debug, Clone, Copy, PartialEq, sqlx::FromRow)]
pub struct Price {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

impl Price {
    /// Cost of a call from its token counts; `cached` is part of `prompt`.
    #[must_use]
    pub fn cost(&self, prompt: i64, cached: i64, completion: i64) -> f64 {
        let uncached = (prompt - cached).max(0) as f64;
        (uncached * self.input
            + cached.max(0) as f64 * self.cached_input
            + completion.max(0) as f64 * self.output)
            / 1_000_000.0
    }
}

impl ModelConfig {
    /// The configured price; `None` when the model has neither prices nor `free`.
    #[must_use]
    pub fn price(&self) -> Option<Price> {
        if self.free {
            return Some(Price {
                input: 0.0,
                cached_input: 0.0,
                output: 0.0,
            });
        }
        let (input, output) = (self.input_usd_per_mtok?, self.output_usd_per_mtok?);
        Some(Price {
            input,
            cached_input: self.cached_input_usd_per_mtok.unwrap_or(input),
            output,
        })
    }
}

impl ProviderConfig {
    /// The model's entry, or the `*` entry; `None` when the provider does not allow it.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.get(name).or_else(|| self.models.get("*"))
    }
}

impl TeamConfig {
    /// Whether runs of this team may go to `queue`.
    #[must_use]
    pub fn allows_queue(&self, queue: &str) -> bool {
        match &self.queues {
            Some(queues) => queues.iter().any(|q| q == queue || q == "*"),
            None => queue == crate::queue::DEFAULT_QUEUE,
        }
    }
}

/// Whether `s` is a plain name: letters, digits, `_`, `-`, `.`, at most 64 bytes.
#[must_use]
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// Check a provider's base URL: https, or http to a loopback host when allowed; no
/// credentials, query or fragment in it.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_base_url(raw: &str, allow_insecure_loopback: bool) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let host = url.host().ok_or_else(|| format!("{raw:?} has no host"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_loopback && is_loopback(&host) => {}
        "http" if allow_insecure_loopback => {
            return Err(format!(
                "{raw:?}: plain http is allowed only to a loopback address (127.0.0.1, ::1, localhost)"
            ));
        }
        "http" => {
            return Err(format!(
                "{raw:?}: use https (plain http only to a loopback address, with allow_insecure_loopback = true)"
            ));
        }
        other => return Err(format!("{raw:?}: scheme {other:?} is not http(s)")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in the URL; use api_key_env".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{raw:?}: no query or fragment"));
    }
    Ok(url)
}

impl Config {
    /// Read the file named by `PHASEFLEET_CONFIG` (none: an empty configuration) and
    /// apply the `PHASEFLEET__…` environment overrides, then check it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, or the field at fault.
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from);
        if let Some(p) = &path
            && !p.is_file()
        {
            return Err(ConfigError::Load(format!(
                "{CONFIG_PATH_ENV}={} is not a readable file",
                p.display()
            )));
        }
        Self::load(path.as_deref())
    }

    /// Read `file` (when given) with the environment overrides, then check.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        use figment::providers::{Env, Format, Toml};
        let mut figment = figment::Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file(file));
        }
        let config: Self = figment
            .merge(Env::prefixed(OVERRIDE_PREFIX).split("__"))
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// Parse TOML text and check it (tests, and `phasefleet config check`).
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        use figment::providers::{Format, Toml};
        let config: Self = figment::Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check_webhooks(&self) -> Result<(), ConfigError> {
        for (name, w) in &self.webhooks {
            let at = |f: &str| format!("webhooks.{name}.{f}");
            if !is_name(name) {
                return Err(invalid(
                    format!("webhooks.{name}"),
                    "webhook names use letters, digits, '_', '-', '.'",
                ));
            }
            check_base_url(&w.url, w.allow_insecure_loopback).map_err(|m| invalid(at("url"), m))?;
            if !is_env_name(&w.secret_env) || RESERVED_ENV.contains(&w.secret_env.as_str()) {
                return Err(invalid(
                    at("secret_env"),
                    "must be the NAME of an environment variable holding the secret (not one of the fleet's own)",
                ));
            }
            let known = crate::webhooks::NOTIFICATIONS;
            if let Some(bad) = w
                .events
                .iter()
                .flatten()
                .find(|e| !known.contains(&e.as_str()))
            {
                return Err(invalid(
                    at("events"),
                    format!("{bad:?} is not a notification; known: {}", known.join(", ")),
                ));
            }
            if w.max_attempts.is_some_and(|n| !(1..=50).contains(&n)) {
                return Err(invalid(at("max_attempts"), "must be 1 to 50"));
            }
        }
        Ok(())
    }

    /// Structural checks serde cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.check_webhooks()?;
        for (name, p) in &self.providers {
            check_provider(name, p)?;
        }
        for (name, t) in &self.teams {
            check_team(name, t)?;
        }
        Ok(())
    }

    /// Whether provider `provider` is configured and allows `model`.
    ///
    /// # Errors
    /// A message saying which is not the case.
    pub fn check_model(&self, provider: &str, model: &str) -> Result<&ProviderConfig, String> {
        let p = self.providers.get(provider).ok_or_else(|| {
            format!(
                "provider {provider:?} is not configured (configured: {:?})",
                self.providers.keys().collect::<Vec<_>>()
            )
        })?;
        if p.model(model).is_none() {
            return Err(format!(
                "provider {provider:?} does not allow model {model:?} (allowed: {:?})",
                p.models.keys().collect::<Vec<_>>()
            ));
        }
        Ok(p)
    }

    /// The team's settings (an unconfigured team: queue `default`, no budget ceiling).
    #[must_use]
    pub fn team(&self, name: &str) -> TeamConfig {
        self.teams.get(name).cloned().unwrap_or_default()
    }
}

/// A provider's name, URLs, key variable, models and prices.
fn check_provider(name: &str, p: &ProviderConfig) -> Result<(), ConfigError> {
    let at = |f: &str| format!("providers.{name}.{f}");
    if !is_name(name) {
        return Err(invalid(
            format!("providers.{name}"),
            "provider names use letters, digits, '_', '-', '.'",
        ));
    }
    check_base_url(&p.base_url, p.allow_insecure_loopback)
        .map_err(|m| invalid(at("base_url"), m))?;
    if let Some(url) = &p.price_list_url {
        check_base_url(url, p.allow_insecure_loopback)
            .map_err(|m| invalid(at("price_list_url"), m))?;
    }
    if let Some(env) = &p.api_key_env {
        if !is_env_name(env) {
            return Err(invalid(
                at("api_key_env"),
                "must be the NAME of an environment variable, not a key",
            ));
        }
        if RESERVED_ENV.contains(&env.as_str()) {
            return Err(invalid(
                at("api_key_env"),
                format!("{env} holds the fleet's own secret and is never sent to a provider"),
            ));
        }
    }
    if p.models.is_empty() {
        return Err(invalid(
            at("models"),
            "declare the models personas may use (the key \"*\" allows any)",
        ));
    }
    for (model, m) in &p.models {
        let prices = [
            m.input_usd_per_mtok,
            m.cached_input_usd_per_mtok,
            m.output_usd_per_mtok,
        ];
        if prices
            .iter()
            .flatten()
            .any(|v| !v.is_finite() || *v < 0.0 || *v > 100_000.0)
        {
            return Err(invalid(
                at(&format!("models.{model}")),
                "prices are USD per million tokens, 0 to 100000",
            ));
        }
    }
    Ok(())
}

/// A team's name and budget caps.
fn check_team(name: &str, t: &TeamConfig) -> Result<(), ConfigError> {
    let at = |f: &str| format!("teams.{name}.{f}");
    if !is_name(name) {
        return Err(invalid(
            format!("teams.{name}"),
            "team names use letters, digits, '_', '-', '.'",
        ));
    }
    if t.max_budget_usd
        .is_some_and(|b| !(b > 0.0 && b.is_finite()))
    {
        return Err(invalid(at("max_budget_usd"), "must be a positive number"));
    }
    if t.max_budget_tokens.is_some_and(|b| b <= 0) {
        return Err(invalid(at("max_budget_tokens"), "must be positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_must_be_https_or_allowed_loopback_and_never_name_fleet_secrets() {
        let ok = Config::from_toml(
            r#"
            [providers.local]
            base_url = "http://127.0.0.1:8089/v1"
            allow_insecure_loopback = true
            models.local = { free = true }
            [providers.or]
            base_url = "https://openrouter.ai/api/v1"
            api_key_env = "OPENROUTER_API_KEY"
            [providers.or.models."openai/gpt-4o-mini"]
            input_usd_per_mtok = 0.15
            output_usd_per_mtok = 0.6
            "#,
        )
        .unwrap();
        let price = ok.providers["or"]
            .model("openai/gpt-4o-mini")
            .and_then(ModelConfig::price)
            .unwrap();
        assert!((price.cost(1_000_000, 0, 1_000_000) - 0.75).abs() < 1e-9);
        assert!(ok.providers["or"].model("other").is_none());
        let cases = [
            (
                "base_url = \"http://example.com/v1\"",
                "providers.p.base_url",
            ),
            (
                "base_url = \"http://10.0.0.1/v1\"\nallow_insecure_loopback = true",
                "providers.p.base_url",
            ),
            (
                "base_url = \"https://u:pw@example.com/v1\"",
                "providers.p.base_url",
            ),
            ("base_url = \"file:///etc/passwd\"", "providers.p.base_url"),
            (
                "base_url = \"https://x.dev\"\napi_key_env = \"DATABASE_URL\"",
                "providers.p.api_key_env",
            ),
            (
                "base_url = \"https://x.dev\"\napi_key_env = \"sk-live-123\"",
                "providers.p.api_key_env",
            ),
        ];
        for (body, field) in cases {
            let text = format!("[providers.p]\n{body}\nmodels.m = {{ free = true }}\n");
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
        let err = Config::from_toml("[providers.p]\nbase_url = \"https://x.dev\"\nmodelz = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("modelz"), "{err}");
    }

    #[test]
    fn teams_default_to_the_default_queue() {
        let c = Config::from_toml("[teams.a]\nqueues = [\"a\"]\nmax_budget_usd = 2.0").unwrap();
        assert!(c.team("a").allows_queue("a") && !c.team("a").allows_queue("default"));
        assert!(c.team("b").allows_queue("default") && !c.team("b").allows_queue("a"));
    }
}
