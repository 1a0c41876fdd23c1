//! Health, readiness, metrics, the OpenAPI document and the bundled example.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// Liveness: the process answers.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "system", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: PostgreSQL answers (within 2 s). Also says how live events are fanned
/// out and whether Redis answers; Redis unreachable keeps the replica ready, since its
/// own LISTEN carries live events meanwhile (docs/adr/0014-partitions-and-failover.md).
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "system",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness, description = "PostgreSQL does not answer")))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = phasefleet::db::ping(&state.pool).await;
    let status = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            database: if db { "ok" } else { "unreachable" },
            event_bus: state.bus.kind(),
            redis: state.bus.redis_state(),
        }),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// How live events reach this replica: `redis` or `postgres`.
    pub event_bus: &'static str,
    /// `ok`, `unreachable` (live events then come through PostgreSQL) or `off`.
    pub redis: &'static str,
}

/// The bundled example: YAML texts ready for `POST /v1/runs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Example {
    pub template: &'static str,
    pub personas: Vec<&'static str>,
    /// Markdown, for `inputs.requirements`.
    pub requirements: &'static str,
}

/// Prometheus metrics: this process's counters and the fleet gauges of the last
/// refresh (no database work per scrape). With `PHASEFLEET_METRICS_TOKEN` set, the
/// scraper sends it as a bearer token.
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "system", responses((status = 200, body = String, content_type = "text/plain"),
    (status = 401, body = crate::error::ErrorBody, description = "PHASEFLEET_METRICS_TOKEN is set and the request does not carry it")))]
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
#[utoipa::path(get, operation_id = "get_example", path = "/v1/examples/spec-review-verify", tag = "system", responses((status = 200, body = Example)))]
pub async fn example() -> Json<Example> {
    Json(Example {
        template: include_str!("../../../examples/spec-review-verify.yaml"),
        personas: vec![
            include_str!("../../../examples/personas/synthetic-author.yaml"),
            include_str!("../../../examples/personas/synthetic-reviewer.yaml"),
        ],
        requirements: include_str!("../../../examples/requirements.md"),
    })
}
