//! Personas: which model plays a role, through which backend, with which prompt.

use super::{DefinitionError, canonical_json, parse, read, sha256_hex};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Built-in offline backend that writes a schema-valid artifact. For demos and tests.
    Synthetic,
    /// Any OpenAI-compatible Chat Completions endpoint (OpenRouter, OpenAI, Ollama,
    /// vLLM, llama.cpp).
    Openai,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub name: String,
    pub version: String,
    pub backend: Backend,
    pub model: String,
    pub system_prompt: String,
    /// Base URL of the OpenAI-compatible API (e.g. `https://openrouter.ai/api/v1` or
    /// `http://127.0.0.1:8080/v1` for llama.cpp). Default: `$PHASEFLEET_LLM_BASE_URL`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the env var that holds the API key. The key itself is never stored.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Bound on model turns per attempt.
    #[serde(default = "default_max_turns")]
    pub max_turns: u32,
}

fn default_max_turns() -> u32 {
    20
}

impl Persona {
    /// Load from a YAML or JSON file and check it.
    ///
    /// # Errors
    /// [`DefinitionError`] naming the file and the field.
    pub fn load(path: &Path) -> Result<Self, DefinitionError> {
        Self::from_str_named(&path.display().to_string(), &read(path)?)
    }

    /// # Errors
    /// [`DefinitionError`] naming the file and the field.
    pub fn from_str_named(file: &str, text: &str) -> Result<Self, DefinitionError> {
        let p: Self = parse(file, text)?;
        p.check(file)?;
        Ok(p)
    }

    /// # Errors
    /// [`DefinitionError::Invalid`] naming the field.
    pub fn check(&self, file: &str) -> Result<(), DefinitionError> {
        let bad = |field: &str, message: String| DefinitionError::Invalid {
            file: file.to_owned(),
            field: field.to_owned(),
            message,
        };
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if self.model.trim().is_empty() {
            return Err(bad("model", "must not be empty".into()));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(bad("temperature", format!("must be within 0..=2, got {t}")));
        }
        if let Some(p) = self.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(bad("top_p", format!("must be within 0..=1, got {p}")));
        }
        if self.max_turns == 0 || self.max_turns > 200 {
            return Err(bad(
                "max_turns",
                format!("must be 1..=200, got {}", self.max_turns),
            ));
        }
        if let Some(url) = &self.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(bad(
                "base_url",
                format!("must start with http:// or https://, got {url:?}"),
            ));
        }
        if let Some(env) = &self.api_key_env
            && (env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(bad(
                "api_key_env",
                "must be the NAME of an environment variable, not a key".into(),
            ));
        }
        Ok(())
    }

    #[must_use]
    pub fn canonical(&self) -> (serde_json::Value, String) {
        let body = serde_json::to_value(self).unwrap_or_default();
        let hash = sha256_hex(canonical_json(&body));
        (body, hash)
    }
}
