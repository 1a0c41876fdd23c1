//! The model providers a worker serves, built once at start from the operator's
//! configuration: one HTTP client per provider (one connection pool and TLS setup for
//! every phase), and its key read from the one environment variable the provider names.
//! A worker reads no other variable for keys; a provider whose key is missing is not
//! served by this worker.

use super::openai::{ApiKey, ChatClient, RetryPolicy};
use crate::config::{Config, Price, ProviderConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One configured provider and its client.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub config: ProviderConfig,
    pub client: ChatClient,
}

impl Provider {
    /// The configured price of `model`; `None` when it has none (and is not free).
    #[must_use]
    pub fn price(&self, model: &str) -> Option<Price> {
        self.config
            .model(model)
            .and_then(crate::config::ModelConfig::price)
    }
}

/// The providers this worker can call, by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: Arc<BTreeMap<String, Arc<Provider>>>,
}

impl Providers {
    /// Build a client for every configured provider whose key is present.
    ///
    /// # Errors
    /// When an HTTP client cannot be built.
    pub fn from_config(
        config: &Config,
        call_timeout: Duration,
        retry: RetryPolicy,
    ) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for (name, p) in &config.providers {
            let key = match &p.api_key_env {
                None => None,
                Some(var) => match std::env::var(var) {
                    Ok(k) if !k.trim().is_empty() => Some(ApiKey(k.trim().to_owned())),
                    _ => {
                        tracing::warn!(provider = %name, variable = %var, "the provider's key variable is not set; this worker does not serve it");
                        continue;
                    }
                },
            };
            let client = ChatClient::new(&p.base_url, key, call_timeout, retry, p.http2)
                .map_err(|e| format!("provider {name}: building the HTTP client: {e}"))?;
            by_name.insert(
                name.clone(),
                Arc::new(Provider {
                    name: name.clone(),
                    config: p.clone(),
                    client,
                }),
            );
        }
        Ok(Self {
            by_name: Arc::new(by_name),
        })
    }

    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// Names of the providers served (their keys are present).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
