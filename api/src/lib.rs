//! The HTTP API (axum): runs, approvals, live events (SSE), metrics, OpenAPI and the
//! web UI. Everything it serves is read from PostgreSQL.
//!
//! Layout: [`routes`] holds the handlers (one module per resource), [`auth`] the bearer
//! tokens and roles, [`extract`] extractors with JSON errors, [`error`] the one error
//! shape, [`bus`] live-event wake-ups (PostgreSQL LISTEN or Redis), [`metrics`] the
//! Prometheus endpoint, [`openapi`] the document.

pub mod auth;
pub mod bus;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod routes;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use error::ApiError;
use phasefleet::validate::SchemaRegistry;
use routes::{approvals, runs, stream, system, ui};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

/// Request bodies above this are refused with 413.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub schemas: Arc<SchemaRegistry>,
    pub tokens: Arc<auth::Tokens>,
    pub bus: bus::EventBus,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Fires on shutdown; live streams end with it.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// State for one API instance; starts the event bus (Redis when `redis_url` is set).
    #[must_use]
    pub fn new(
        pool: PgPool,
        schemas: SchemaRegistry,
        tokens: auth::Tokens,
        redis_url: Option<String>,
        shutdown: CancellationToken,
    ) -> Self {
        let bus = bus::EventBus::start(pool.clone(), redis_url, shutdown.clone());
        Self {
            pool,
            schemas: Arc::new(schemas),
            tokens: Arc::new(tokens),
            bus,
            metrics: metrics::recorder(),
            shutdown,
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

async fn count_requests(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    ::metrics::counter!("phasefleet_http_requests_total", "method" => method, "route" => route,
        "status" => res.status().as_u16().to_string())
    .increment(1);
    res
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/runs", post(runs::submit).get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/events/stream", get(stream::stream))
        .route("/runs/{id}/report", get(runs::report))
        .route("/runs/{id}/artifacts/{artifact_id}", get(runs::artifact))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/approvals", get(approvals::pending))
        .route("/approvals/{id}/decision", post(approvals::decide))
        .route("/examples/spec-review-verify", get(system::example));
    Router::new()
        .nest("/v1", v1)
        .route("/", get(ui::index))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::ApiDoc::openapi()) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serve until `shutdown` fires; open event streams end with it.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
