//! The HTTP API (axum): runs, approvals, live events (SSE), metrics, OpenAPI and the
//! web UI. Everything it serves is read from PostgreSQL.
//!
//! Layout: [`routes`] holds the handlers (one module per resource), [`auth`] the bearer
//! tokens, roles and teams, [`extract`] extractors with JSON errors, [`error`] the one
//! error shape, [`bus`] live-event wake-ups (PostgreSQL LISTEN or Redis), [`metrics`]
//! the Prometheus endpoint, [`openapi`] the document, [`server`] the connection and
//! timeout bounds.

pub mod auth;
pub mod bus;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use error::ApiError;
use phasefleet::config::Config;
use phasefleet::validate::SchemaRegistry;
use routes::{admin, approvals, files, fleet, runs, stream, system, ui};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Request bodies above this are refused with 413.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub schemas: Arc<SchemaRegistry>,
    /// The operator's configuration (providers, teams).
    pub config: Arc<Config>,
    pub tokens: Arc<auth::Tokens>,
    pub bus: bus::EventBus,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub gauges: metrics::FleetGauges,
    /// When set, `/metrics` wants `Authorization: Bearer` with this token (its SHA-256).
    pub metrics_token: Option<[u8; 32]>,
    /// Fires on shutdown; live streams end with it.
    pub shutdown: CancellationToken,
}

impl AppState {
    /// State for one API instance; starts the event bus (Redis when `redis_url` is set)
    /// and the fleet-gauge refresher.
    #[must_use]
    pub fn new(
        pool: PgPool,
        schemas: SchemaRegistry,
        config: Config,
        tokens: auth::Tokens,
        redis_url: Option<String>,
        shutdown: CancellationToken,
    ) -> Self {
        let bus = bus::EventBus::start(pool.clone(), redis_url, shutdown.clone());
        let gauges = metrics::FleetGauges::start(pool.clone(), shutdown.clone());
        Self {
            pool,
            schemas: Arc::new(schemas),
            config: Arc::new(config),
            tokens: Arc::new(tokens),
            bus,
            metrics: metrics::recorder(),
            gauges,
            metrics_token: None,
            shutdown,
        }
    }

    /// Require `token` on `/metrics`.
    #[must_use]
    pub fn with_metrics_token(mut self, token: Option<&str>) -> Self {
        self.metrics_token = token.map(|t| {
            use sha2::Digest;
            sha2::Sha256::digest(t.as_bytes()).into()
        });
        self
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

/// A request's method as a metric label, from a closed set (made-up methods would
/// otherwise create a series each).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

async fn count_requests(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = method_label(req.method());
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

/// The router with every route; bodies must arrive within `body_timeout`.
pub fn router(state: AppState, body_timeout: std::time::Duration) -> Router {
    let v1 = Router::new()
        .route("/runs", post(runs::submit).get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/events/stream", get(stream::stream))
        .route("/runs/{id}/tool-calls", get(runs::tool_calls))
        .route("/runs/{id}/report", get(runs::report))
        .route("/runs/{id}/artifacts/{artifact_id}", get(runs::artifact))
        .route(
            "/runs/{id}/phases/{phase}/artifact",
            get(files::phase_artifact),
        )
        .route("/runs/{id}/files", get(files::list))
        .route("/runs/{id}/files/{*path}", get(files::download))
        .route(
            "/uploads",
            post(files::upload).layer(DefaultBodyLimit::max(files::UPLOAD_BODY_LIMIT)),
        )
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/budget", post(runs::budget))
        .route("/approvals", get(approvals::pending))
        .route("/approvals/{id}/decision", post(approvals::decide))
        .route("/admin/personas", get(admin::list_personas))
        .route("/admin/workers", get(fleet::workers))
        .route("/admin/queues", get(fleet::queues))
        .route("/admin/jobs", get(fleet::jobs))
        .route("/admin/actions", post(fleet::act))
        .route("/admin/audit", get(fleet::audit))
        .route("/admin/webhooks/deliveries", get(fleet::webhook_deliveries))
        .route(
            "/admin/personas/{name}",
            axum::routing::put(admin::register_persona).delete(admin::delete_persona),
        )
        .route("/examples/spec-review-verify", get(system::example));
    Router::new()
        .nest("/v1", v1)
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(DEFAULT_BODY_LIMIT))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serve until `shutdown` fires, within `limits`; open event streams end with it.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: server::Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    server::serve(
        listener,
        router(state, limits.body_timeout),
        limits,
        shutdown,
    )
    .await
}
