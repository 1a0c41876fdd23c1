//! Personas: which model plays a role, through which provider, with which prompt. A
//! persona names an operator-configured provider (`[providers.NAME]` in the
//! configuration) and a model; it can never carry a URL or the name of a variable.

use super::{DefinitionError, canonical_json, parse, read, sha256_hex};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Built-in offline backend that writes a schema-valid artifact. For demos and tests.
    Synthetic,
    /// An OpenAI-compatible Chat Completions provider (OpenRouter, OpenAI, Ollama,
    /// vLLM, llama.cpp) that the operator configured; the persona names it in `provider`.
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
    /// The operator-configured provider that serves `model` (backend `openai` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Refused: providers are operator configuration. Kept so the error names the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<serde_json::Value>,
    /// Refused, like `base_url`: the key's variable is the provider's, in the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<serde_json::Value>,
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
        for (field, present) in [
            ("base_url", self.base_url.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
        ] {
            if present {
                return Err(bad(
                    field,
                    format!(
                        "a persona cannot carry `{field}`: providers are operator configuration; name one with `provider`"
                    ),
                ));
            }
        }
        for (field, text, max) in [
            ("name", &self.name, 64),
            ("version", &self.version, 64),
            ("model", &self.model, 200),
            ("system_prompt", &self.system_prompt, 64 * 1024),
        ] {
            if text.len() > max {
                return Err(bad(
                    field,
                    format!("at most {max} bytes, got {}", text.len()),
                ));
            }
        }
        if !crate::config::is_name(&self.name) {
            return Err(bad(
                "name",
                "persona names use letters, digits, '_', '-', '.'".into(),
            ));
        }
        match (self.backend, &self.provider) {
            (Backend::Openai, None) => {
                return Err(bad(
                    "provider",
                    "backend openai needs the name of an operator-configured provider".into(),
                ));
            }
            (Backend::Synthetic, Some(_)) => {
                return Err(bad(
                    "provider",
                    "the synthetic backend uses no provider".into(),
                ));
            }
            (_, Some(p)) if !crate::config::is_name(p) => {
                return Err(bad(
                    "provider",
                    "provider names use letters, digits, '_', '-', '.'".into(),
                ));
            }
            _ => {}
        }
        if self.max_tokens.is_some_and(|t| t == 0 || t > 1_000_000) {
            return Err(bad("max_tokens", "must be 1..=1000000".into()));
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
