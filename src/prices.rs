//! Model prices, so a USD budget never fails open: the operator's configured price (or
//! `free = true`) first, then the provider's price list (`price_list_url`, OpenRouter's
//! `/models` format), fetched when needed and cached in PostgreSQL for the provider's
//! `price_list_ttl_secs`. A list that cannot be fetched leaves the cached prices in
//! use; a model with neither is unpriced, and a run with a USD budget may not use it.

use crate::config::{Config, Price, ProviderConfig};
use crate::store::model_prices::{model_prices_age, model_prices_get, model_prices_replace};
use serde::Deserialize;
use sqlx::PgConnection;
use std::time::Duration;

/// Largest price list read.
const MAX_LIST_BYTES: usize = 32 * 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("price list of provider {provider}: {message}")]
    Fetch { provider: String, message: String },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// The price of `model` on `provider`: configured, else from the cached price list
/// (fetched first when the cache is older than the provider's TTL). `None`: unpriced.
///
/// # Errors
/// Database errors. A failed fetch is logged and the cache used as it is.
pub async fn price_of(
    conn: &mut PgConnection,
    config: &Config,
    provider: &str,
    model: &str,
) -> Result<Option<Price>, PriceError> {
    let Some(p) = config.providers.get(provider) else {
        return Ok(None);
    };
    if let Some(price) = p.model(model).and_then(crate::config::ModelConfig::price) {
        return Ok(Some(price));
    }
    let Some(url) = &p.price_list_url else {
        return Ok(None);
    };
    let age = model_prices_age(conn, provider).await?;
    if age.is_none_or(|a| a > Duration::from_secs(p.price_list_ttl_secs)) {
        match fetch(provider, p, url).await {
            Ok(prices) if !prices.is_empty() => {
                model_prices_replace(conn, provider, &prices).await?;
            }
            Ok(_) => tracing::warn!(
                provider,
                "the price list priced no model; using cached prices"
            ),
            Err(e) => tracing::warn!(error = %e, "using cached prices"),
        }
    }
    cached_price(conn, provider, model).await
}

/// A cached list price, whatever its age (a worker pricing a call it already made).
///
/// # Errors
/// Database errors.
pub async fn cached_price(
    conn: &mut PgConnection,
    provider: &str,
    model: &str,
) -> Result<Option<Price>, PriceError> {
    Ok(model_prices_get(conn, provider, model).await?)
}

#[derive(Deserialize)]
struct PriceList {
    data: Vec<ListedModel>,
}

#[derive(Deserialize)]
struct ListedModel {
    id: String,
    #[serde(default)]
    pricing: Option<ListedPricing>,
}

/// USD per token, as decimal strings (or numbers).
#[derive(Deserialize)]
struct ListedPricing {
    prompt: serde_json::Value,
    completion: serde_json::Value,
    #[serde(default)]
    input_cache_read: Option<serde_json::Value>,
}

fn per_mtok(v: &serde_json::Value) -> Option<f64> {
    let per_token = match v {
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        serde_json::Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    // Negative prices mean "varies" (routers): not a price.
    (per_token.is_finite() && per_token >= 0.0).then_some(per_token * 1e6)
}

/// Parse a price list; models without a usable price are left out.
///
/// # Errors
/// When the body is not a price list.
pub fn parse_price_list(body: &[u8]) -> Result<Vec<(String, Price)>, serde_json::Error> {
    let list: PriceList = serde_json::from_slice(body)?;
    let mut seen = std::collections::HashSet::new();
    Ok(list
        .data
        .into_iter()
        .filter(|m| seen.insert(m.id.clone()))
        .filter_map(|m| {
            let p = m.pricing?;
            let (input, output) = (per_mtok(&p.prompt)?, per_mtok(&p.completion)?);
            let cached_input = p
                .input_cache_read
                .as_ref()
                .and_then(per_mtok)
                .unwrap_or(input);
            if m.id.len() > 200 {
                return None;
            }
            let price = Price {
                input,
                cached_input,
                output,
            };
            Some((m.id, price))
        })
        .collect())
}

async fn fetch(
    provider: &str,
    p: &ProviderConfig,
    url: &str,
) -> Result<Vec<(String, Price)>, PriceError> {
    let failed = |message: String| PriceError::Fetch {
        provider: provider.to_owned(),
        message,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut request = client.get(url);
    if let Some(key) = p.api_key_env.as_deref().and_then(|v| std::env::var(v).ok()) {
        request = request.bearer_auth(key);
    }
    let mut resp = request.send().await.map_err(|e| failed(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(failed(format!("HTTP {}", resp.status().as_u16())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(e.to_string()))? {
        if body.len() + chunk.len() > MAX_LIST_BYTES {
            return Err(failed(format!("larger than {MAX_LIST_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    // Parsing a large list is CPU work.
    tokio::task::spawn_blocking(move || parse_price_list(&body))
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(format!("not a price list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openrouter_style_lists_parse_and_variable_prices_are_left_out() {
        let body = br#"{"data":[
            {"id":"openai/gpt-4o-mini","pricing":{"prompt":"0.00000015","completion":"0.0000006","input_cache_read":"0.000000075"}},
            {"id":"openrouter/auto","pricing":{"prompt":"-1","completion":"-1"}},
            {"id":"no-pricing"}]}"#;
        let prices = parse_price_list(body).unwrap();
        assert_eq!(prices.len(), 1);
        let (id, p) = &prices[0];
        assert_eq!(id, "openai/gpt-4o-mini");
        assert!((p.input - 0.15).abs() < 1e-9 && (p.output - 0.6).abs() < 1e-9);
        assert!((p.cached_input - 0.075).abs() < 1e-9);
        assert!(parse_price_list(b"[]").is_err());
    }
}
