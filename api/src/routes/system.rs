//! Health, readiness, metrics, the OpenAPI document and the bundled example.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: PostgreSQL answers. Also says how live events are fanned out.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = Object), (status = 503, body = Object)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = phasefleet::db::ping(&state.pool).await;
    let status = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({ "database": if db { "ok" } else { "unreachable" }, "event_bus": state.bus.kind() }),
        ),
    )
}

/// Prometheus metrics: this process's counters and the fleet gauges of the last
/// refresh (no database work per scrape). With `PHASEFLEET_METRICS_TOKEN` set, the
/// scraper sends it as a bearer token.
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, content_type = "text/plain"), (status = 401, body = Object)))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(expected) = state.metrics_token {
        use sha2::Digest;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(|t| <[u8; 32]>::from(sha2::Sha256::digest(t.trim().as_bytes())));
        let matches = given.is_some_and(|g| {
            g.iter()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        });
        if !matches {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "metrics need the metrics token: Authorization: Bearer <PHASEFLEET_METRICS_TOKEN>",
            ));
        }
    }
    let mut text = state.metrics.render();
    text.push_str(&state.gauges.render());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// The bundled example workflow (used by the UI's "use the example" button).
#[utoipa::path(get, path = "/v1/examples/spec-review-verify", tag = "system", responses((status = 200, body = Object)))]
pub async fn example() -> Json<serde_json::Value> {
    Json(json!({
        "template": include_str!("../../../examples/spec-review-verify.yaml"),
        "personas": [
            include_str!("../../../examples/personas/synthetic-author.yaml"),
            include_str!("../../../examples/personas/synthetic-reviewer.yaml"),
        ],
        "requirements": include_str!("../../../examples/requirements.md"),
    }))
}
