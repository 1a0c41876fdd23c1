//! What a model call cost. The provider's reported cost (OpenRouter's `usage.cost`) wins
//! when it is plausible; a negative, non-finite or absurd one is not trusted and the
//! price the operator configured is used instead, with the report kept beside it.

use super::types::Usage;
use crate::config::Price;

/// No model charges more than this per token ($1000 per million tokens)…
const MAX_USD_PER_TOKEN: f64 = 0.001;
/// …plus this per call (request fees such as web search).
const MAX_USD_PER_CALL: f64 = 0.05;

/// Where a ledger row's cost came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostSource {
    /// The provider reported it.
    Provider,
    /// The operator's configured price.
    Config,
    /// The provider reported an implausible cost; the configured price was used.
    ConfigOverUntrustedReport,
    /// No report and no configured price: recorded as 0.
    Unpriced,
}

impl CostSource {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Config => "config",
            Self::ConfigOverUntrustedReport => "config_over_untrusted_report",
            Self::Unpriced => "unpriced",
        }
    }
}

/// A call's cost, where it came from, and what the provider said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    pub usd: f64,
    pub source: CostSource,
    pub reported: Option<f64>,
}

fn plausible(reported: f64, usage: &Usage) -> bool {
    let tokens = (usage.prompt() + usage.completion()) as f64;
    reported.is_finite()
        && reported >= 0.0
        && reported <= tokens * MAX_USD_PER_TOKEN + MAX_USD_PER_CALL
}

/// Decide what a call cost from the provider's usage and the configured price.
#[must_use]
pub fn call_cost(usage: &Usage, price: Option<Price>) -> Cost {
    let computed = price.map(|p| p.cost(usage.prompt(), usage.cached(), usage.completion()));
    match (usage.cost, computed) {
        (Some(r), _) if plausible(r, usage) => Cost {
            usd: r,
            source: CostSource::Provider,
            reported: Some(r),
        },
        (reported @ Some(_), Some(c)) => Cost {
            usd: c,
            source: CostSource::ConfigOverUntrustedReport,
            reported,
        },
        (reported @ Some(_), None) => Cost {
            usd: 0.0,
            source: CostSource::Unpriced,
            reported,
        },
        (None, Some(c)) => Cost {
            usd: c,
            source: CostSource::Config,
            reported: None,
        },
        (None, None) => Cost {
            usd: 0.0,
            source: CostSource::Unpriced,
            reported: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cost: Option<f64>) -> Usage {
        Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cost,
            ..Usage::default()
        }
    }

    #[test]
    fn implausible_reports_fall_back_to_the_configured_price() {
        let price = Some(Price {
            input: 1.0,
            cached_input: 0.5,
            output: 2.0,
        });
        assert_eq!(
            call_cost(&usage(Some(0.002)), price).source,
            CostSource::Provider
        );
        for bad in [-5.0, f64::NAN, f64::INFINITY, 1e12, 2.0] {
            let c = call_cost(&usage(Some(bad)), price);
            assert_eq!(c.source, CostSource::ConfigOverUntrustedReport, "{bad}");
            assert!((c.usd - 0.0012).abs() < 1e-12, "{bad}: {c:?}");
        }
        assert_eq!(call_cost(&usage(None), None).usd, 0.0);
        assert_eq!(
            call_cost(&usage(Some(-1.0)), None).source,
            CostSource::Unpriced
        );
    }
}
