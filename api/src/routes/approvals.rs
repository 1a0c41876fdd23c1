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
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    /// 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// Approval requests waiting on a human, oldest first.
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(PendingQuery),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
pub async fn pending(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PendingQuery>,
) -> Result<Json<Vec<ApprovalRow>>, ApiError> {
    caller.require(Role::Approve)?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        phasefleet::approval::pending(&mut conn, &caller.scope, q.limit.unwrap_or(100)).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// approve, reject, abort or revise (revise needs a comment).
    #[schema(value_type = String)]
    pub action: String,
    pub comment: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionResponse {
    /// `recorded`, or `already_decided` when the same decision was made before.
    pub outcome: &'static str,
}

/// Decide an approval request. The same decision twice is a no-op; a different one is 409.
#[utoipa::path(post, path = "/v1/approvals/{id}/decision", tag = "approvals",
    params(("id" = String, Path, format = Uuid)), request_body = DecisionBody,
    responses((status = 200, body = DecisionResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
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
    let out = phasefleet::approval::decide(
        &state.pool,
        &caller.scope,
        id,
        action,
        body.comment.as_deref(),
        Some(&caller.name),
    )
    .await?;
    Ok(Json(DecisionResponse {
        outcome: match out {
            Decided::Recorded => "recorded",
            Decided::AlreadyDecided => "already_decided",
        },
    }))
}
