//! USD prices per million tokens for models whose provider reports no cost (OpenAI,
//! local servers). OpenRouter reports `usage.cost`, which wins when present. Unknown
//! models (local llama.cpp, Ollama) cost 0.

/// (model prefix, input $/Mtok, cached input $/Mtok, output $/Mtok)
const PRICES: &[(&str, f64, f64, f64)] = &[
    ("gpt-4.1-mini", 0.40, 0.10, 1.60),
    ("gpt-4.1-nano", 0.10, 0.025, 0.40),
    ("gpt-4.1", 2.00, 0.50, 8.00),
    ("gpt-4o-mini", 0.15, 0.075, 0.60),
    ("gpt-4o", 2.50, 1.25, 10.00),
    ("o4-mini", 1.10, 0.275, 4.40),
    ("mock/", 1.00, 0.50, 2.00),
];

/// Cost of a call from its token counts; `cached` is part of `prompt`.
#[must_use]
pub fn price_usd(model: &str, prompt: i64, cached: i64, completion: i64) -> f64 {
    let name = model
        .rsplit_once('/')
        .filter(|(p, _)| *p != "mock")
        .map_or(model, |(_, m)| m);
    let Some((_, input, cached_price, output)) = PRICES
        .iter()
        .find(|(prefix, ..)| name.starts_with(prefix) || model.starts_with(prefix))
    else {
        return 0.0;
    };
    let uncached = (prompt - cached).max(0) as f64;
    (uncached * input + cached.max(0) as f64 * cached_price + completion.max(0) as f64 * output)
        / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_known_models_and_zero_for_local_ones() {
        let c = price_usd("openai/gpt-4o-mini", 1_000_000, 0, 1_000_000);
        assert!((c - 0.75).abs() < 1e-9, "{c}");
        let cached = price_usd("gpt-4o-mini", 1_000_000, 1_000_000, 0);
        assert!((cached - 0.075).abs() < 1e-9, "{cached}");
        assert_eq!(price_usd("llama-3.2-3b-instruct", 1000, 0, 1000), 0.0);
    }
}
