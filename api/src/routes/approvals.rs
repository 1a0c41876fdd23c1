//! `/v1/approvals`: the inbox and decisions. Needs the `approve` role.

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Path, Query};
use axum::Json;
use axum::extract::State;
use phasefleet::ApprovalId;
use phasefleet::approval::{Action, ApprovalRow, Decided};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    /// Requests per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    pub limit: Option<i64>,
}

/// Approval requests waiting on a human, oldest first. Needs the `approve` role.
#[utoipa::path(get, operation_id = "list_approvals", path = "/v1/approvals", tag = "approvals", params(PendingQuery),
    responses((status = 200, body = Vec<ApprovalRow>)), security(("bearer" = ["approve"])))]
pub async fn pending(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PendingQuery>,
) -> Result<Json<Vec<ApprovalRow>>, ApiError> {
    caller.require(Role::Approve)?;
    let limit = super::page_limit(q.limit, 100, 1000)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        phasefleet::approval::pending(&mut conn, &caller.scope, limit).await?,
    ))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"action": "revise", "comment": "List the error cases too."}))]
pub struct DecisionBody {
    /// Revise needs a comment.
    #[schema(value_type = Action)]
    pub action: String,
    /// Shown with the decision; for revise, what the agent should change.
    #[schema(max_length = 20000)]
    pub comment: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionResponse {
    pub outcome: DecisionOutcome,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionOutcome {
    Recorded,
    /// The same decision was made before; nothing changed.
    AlreadyDecided,
}

/// Decide an approval request. The same decision twice is a no-op; a different one is
/// 409. Needs the `approve` role.
#[utoipa::path(post, operation_id = "decide_approval", path = "/v1/approvals/{id}/decision", tag = "approvals",
    params(("id" = String, Path, format = Uuid)), request_body = DecisionBody,
    responses((status = 200, body = DecisionResponse),
              (status = 404, body = ErrorBody, description = "no such approval request in the caller's team"),
              (status = 409, body = ErrorBody, description = "a different decision was made before, or the request was escalated to an approver group the token is not in"),
              (status = 422, body = ErrorBody, description = "`revise` without a comment, or an invalid body")),
    security(("bearer" = ["approve"])))]
pub async fn decide(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<ApprovalId>,
    Body(body): Body<DecisionBody>,
) -> Result<Json<DecisionResponse>, ApiError> {
    caller.require(Role::Approve)?;
    let action: Action = body
        .action
        .parse()
        .map_err(|e: String| ApiError::invalid("action", e))?;
    // A fleet-wide admin decides any request; anyone else only within their groups.
    let groups =
        (caller.scope != phasefleet::teams::Scope::Fleet).then_some(caller.groups.as_slice());
    let out = phasefleet::approval::decide_as_member(
        &state.pool,
        &caller.scope,
        groups,
        id,
        action,
        body.comment.as_deref(),
        Some(&caller.name),
    )
    .await?;
    Ok(Json(DecisionResponse {
        outcome: match out {
            Decided::Recorded => DecisionOutcome::Recorded,
            Decided::AlreadyDecided => DecisionOutcome::AlreadyDecided,
        },
    }))
}
