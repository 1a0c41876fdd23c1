//! `model_prices`: each provider's price list as last fetched, one row per model,
//! read when a model is priced (`crate::prices`).

use crate::config::Price;
use sqlx::PgConnection;
use std::time::Duration;

/// The cached price of `model` on `provider`, whatever its age.
///
/// # Errors
/// Database errors.
pub async fn model_prices_get(
    conn: &mut PgConnection,
    provider: &str,
    model: &str,
) -> Result<Option<Price>, sqlx::Error> {
    sqlx::query_as::<_, Price>(
        "SELECT input_usd_per_mtok AS input, cached_input_usd_per_mtok AS cached_input,
                output_usd_per_mtok AS output
           FROM model_prices WHERE provider = $1 AND model = $2",
    )
    .bind(provider)
    .bind(model)
    .fetch_optional(&mut *conn)
    .await
}

/// How long ago `provider`'s list was last fetched (`None`: never).
///
/// # Errors
/// Database errors.
pub async fn model_prices_age(
    conn: &mut PgConnection,
    provider: &str,
) -> Result<Option<Duration>, sqlx::Error> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - max(fetched_at))::float8 FROM model_prices WHERE provider = $1",
    )
    .bind(provider)
    .fetch_one(&mut *conn)
    .await?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// Replace `provider`'s list with `prices` (models no longer listed are deleted).
///
/// # Errors
/// Database errors.
pub async fn model_prices_replace(
    conn: &mut PgConnection,
    provider: &str,
    prices: &[(String, Price)],
) -> Result<(), sqlx::Error> {
    let models: Vec<&str> = prices.iter().map(|(m, _)| m.as_str()).collect();
    let col = |f: fn(&Price) -> f64| prices.iter().map(|(_, p)| f(p)).collect::<Vec<_>>();
    sqlx::query(
        "WITH gone AS (DELETE FROM model_prices WHERE provider = $1 AND NOT (model = ANY($2)))
         INSERT INTO model_prices (provider, model, input_usd_per_mtok, cached_input_usd_per_mtok, output_usd_per_mtok)
         SELECT $1, m, i, c, o FROM UNNEST($2::text[], $3::float8[], $4::float8[], $5::float8[]) AS t(m, i, c, o)
         ON CONFLICT (provider, model) DO UPDATE SET input_usd_per_mtok = EXCLUDED.input_usd_per_mtok,
             cached_input_usd_per_mtok = EXCLUDED.cached_input_usd_per_mtok,
             output_usd_per_mtok = EXCLUDED.output_usd_per_mtok, fetched_at = now()",
    )
    .bind(provider)
    .bind(&models)
    .bind(col(|p| p.input))
    .bind(col(|p| p.cached_input))
    .bind(col(|p| p.output))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
