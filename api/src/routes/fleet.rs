//! `/v1/admin/...` for operating the fleet: workers, queues, jobs, operator actions and
//! their audit. Every route needs a fleet-wide admin token; every action is recorded
//! (`phasefleet::operator`).

use super::admin::require_fleet_admin;
use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Query};
use axum::Json;
use axum::extract::State;
use phasefleet::operator::{self, Operator, OperatorAction, Outcome, Via};
use phasefleet::queue::workers::WorkerRow;
use phasefleet::queue::{self, JobRow, JobState, QueueSummary, ThroughputPoint};
use phasefleet::store::operator_actions::{self, OperatorActionRow};
use phasefleet::store::webhook_deliveries::{self, DeliveryAttempt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WorkersQuery {
    /// Include stopped workers.
    #[param(default = false)]
    pub all: Option<bool>,
}

/// Workers, live ones first: state, heartbeat age, jobs in flight, drain requested.
#[utoipa::path(get, operation_id = "list_workers", path = "/v1/admin/workers", tag = "admin", params(WorkersQuery),
    responses((status = 200, body = Vec<WorkerRow>)),
    security(("bearer" = ["admin"])))]
pub async fn workers(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<WorkersQuery>,
) -> Result<Json<Vec<WorkerRow>>, ApiError> {
    require_fleet_admin(&caller)?;
    Ok(Json(
        queue::workers::list_workers(&state.pool, q.all.unwrap_or(false)).await?,
    ))
}

/// The queues and the fleet's throughput.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuesView {
    pub queues: Vec<QueueSummary>,
    /// Jobs completed per minute over the last 15 minutes, oldest first.
    pub throughput: Vec<ThroughputPoint>,
}

/// Every queue with work, a pause, recent completions or a live worker: depth by state,
/// the oldest ready job's age, whether it is paused, and completions per minute.
#[utoipa::path(get, operation_id = "list_queues", path = "/v1/admin/queues", tag = "admin",
    responses((status = 200, body = QueuesView)),
    security(("bearer" = ["admin"])))]
pub async fn queues(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<QueuesView>, ApiError> {
    require_fleet_admin(&caller)?;
    let mut conn = state.pool.acquire().await?;
    let queues = queue::queue_summaries(&mut conn, 500).await?;
    let throughput = queue::throughput_by_minute(&mut conn, 15).await?;
    Ok(Json(QueuesView { queues, throughput }))
}

/// Which jobs to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Completed jobs are not kept: `ready`, `running`, `dead` or `cancelled`.
    #[param(value_type = Option<String>, pattern = "^(ready|running|dead|cancelled)$")]
    pub state: Option<JobState>,
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 100)]
    pub limit: Option<i64>,
}

/// Jobs by state and queue, newest first (dead-lettered jobs with `state=dead`).
#[utoipa::path(get, operation_id = "list_jobs", path = "/v1/admin/jobs", tag = "admin", params(JobsQuery),
    responses((status = 200, body = Vec<JobRow>),
              (status = 422, body = ErrorBody, description = "state `completed` (completed jobs are not kept)")),
    security(("bearer" = ["admin"])))]
pub async fn jobs(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Vec<JobRow>>, ApiError> {
    require_fleet_admin(&caller)?;
    let limit = super::page_limit(q.limit, 100, 500)?;
    if q.queue
        .as_deref()
        .is_some_and(|name| !phasefleet::config::is_name(name))
    {
        return Err(ApiError::bad_request(
            "queue must be 1-64 characters of letters, digits, '_', '.', '-'",
        ));
    }
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        queue::list(&mut conn, q.state, q.queue.as_deref(), None, limit).await?,
    ))
}

/// Take an operator action: pause or resume a queue, drain or undrain one worker or
/// all, requeue a job or a queue's dead jobs, rescue stuck jobs, cancel a job. The
/// action is recorded in the audit, done or refused.
#[utoipa::path(post, operation_id = "operator_action", path = "/v1/admin/actions", tag = "admin", request_body = OperatorAction,
    responses((status = 200, body = Outcome),
              (status = 404, body = ErrorBody, description = "no such job or live worker"),
              (status = 409, body = ErrorBody, description = "the job runs (cancel it or wait for its lease)"),
              (status = 422, body = ErrorBody, description = "not a queue name, or a reason too long")),
    security(("bearer" = ["admin"])))]
pub async fn act(
    State(state): State<AppState>,
    caller: Caller,
    Body(action): Body<OperatorAction>,
) -> Result<Json<Outcome>, ApiError> {
    require_fleet_admin(&caller)?;
    let who = Operator {
        actor: &caller.name,
        via: Via::Api,
    };
    Ok(Json(operator::perform(&state.pool, who, &action).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only rows older than this id (the last id of the previous page).
    pub before: Option<i64>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<i64>,
}

/// The audit of operator actions (API, web UI and CLI), newest first.
#[utoipa::path(get, operation_id = "list_operator_actions", path = "/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Vec<OperatorActionRow>)),
    security(("bearer" = ["admin"])))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<OperatorActionRow>>, ApiError> {
    require_fleet_admin(&caller)?;
    let limit = super::page_limit(q.limit, 50, 500)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        operator_actions::operator_actions_list(&mut conn, q.before, limit).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Only this run's notifications.
    #[param(value_type = Option<String>, format = Uuid)]
    pub run: Option<phasefleet::RunId>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<i64>,
}

/// Webhook delivery attempts, newest first: which notification, which attempt, the
/// receiver's status or the error.
#[utoipa::path(get, operation_id = "list_webhook_deliveries", path = "/v1/admin/webhooks/deliveries", tag = "admin", params(DeliveriesQuery),
    responses((status = 200, body = Vec<DeliveryAttempt>)),
    security(("bearer" = ["admin"])))]
pub async fn webhook_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<DeliveryAttempt>>, ApiError> {
    require_fleet_admin(&caller)?;
    let limit = super::page_limit(q.limit, 50, 500)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        webhook_deliveries::webhook_deliveries_list(&mut conn, q.run, limit).await?,
    ))
}
