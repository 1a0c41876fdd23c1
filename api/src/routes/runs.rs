//! `/v1/runs`: submit, list, show, events, report, artifacts, cancel.

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Path, Query};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use phasefleet::RunId;
use phasefleet::input_files::{FileContent, InputFile};
use phasefleet::store::runs::RunRow;
use phasefleet::submit::{Budget, RunInputs, SubmitRequest, Submitted};
use phasefleet::views::{RunFilter, RunPage};
use phasefleet::workflow::Definition;
use phasefleet::workflow::{DefinitionError, Persona, WorkflowTemplate, document};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// A run to start.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// The workflow template: a JSON object, or YAML (or JSON) text.
    #[schema(value_type = Object)]
    pub template: Value,
    /// Every persona the template or a binding names: objects, or YAML/JSON texts.
    #[schema(value_type = Vec<Object>)]
    pub personas: Vec<Value>,
    /// `{requirements: markdown, objective: {}, extra: {}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: Option<Value>,
    /// role -> persona name, overriding the template's defaults for this run.
    #[serde(default)]
    pub bindings: BTreeMap<String, String>,
    #[serde(default)]
    pub budget: Option<BudgetBody>,
    /// Queue for the run's phase jobs (default `default`); one the team may use.
    #[serde(default)]
    pub queue: Option<String>,
    /// The run's team: a team's token submits for its own team; a fleet-wide admin
    /// may name any (default `default`).
    #[serde(default)]
    pub team: Option<String>,
    /// Input files the agent's workspace starts with: path -> text, `{"text": ...}`,
    /// or `{"sha256": ...}` naming content this team uploaded (`POST /v1/uploads`).
    #[serde(default)]
    pub files: BTreeMap<String, FileBody>,
    /// Queue the run even when no live worker serves a provider it needs (its jobs
    /// wait until one does); default: refuse with 422.
    #[serde(default)]
    pub allow_unserved: bool,
}

/// One input file of a submit.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum FileBody {
    Text(String),
    Inline { text: String },
    Uploaded { sha256: String },
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    pub usd: Option<f64>,
    pub tokens: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitResponse {
    #[schema(value_type = String, format = Uuid)]
    pub run_id: RunId,
    /// `created`, or `existing` when the Idempotency-Key was used before.
    pub outcome: &'static str,
}

fn definition_error(field: &str, e: DefinitionError) -> ApiError {
    match e {
        DefinitionError::Invalid {
            field: f, message, ..
        } => ApiError::invalid(format!("{field}.{f}"), message),
        other => ApiError::invalid(field, other.to_string()),
    }
}

fn text_or_object(field: &str, v: &Value) -> Result<(String, String), ApiError> {
    match v {
        Value::String(s) => Ok((format!("{field}.yaml"), s.clone())),
        Value::Object(_) => Ok((format!("{field}.json"), v.to_string())),
        _ => Err(ApiError::invalid(
            field,
            "expected an object or YAML/JSON text",
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .ok_or_else(|| {
            ApiError::bad_request("Idempotency-Key must be 1 to 200 visible ASCII characters")
        })?;
    Ok(Some(s.to_owned()))
}

fn build_request(
    body: SubmitBody,
    key: Option<String>,
    caller: &Caller,
) -> Result<SubmitRequest, ApiError> {
    let team = caller.submit_team(body.team.as_deref())?;
    let (file, text) = text_or_object("template", &body.template)?;
    let template = WorkflowTemplate::from_str_named(&file, &text)
        .map_err(|e| definition_error("template", e))?;
    if body.personas.is_empty() {
        return Err(ApiError::invalid(
            "personas",
            "at least one persona is needed",
        ));
    }
    let personas = body
        .personas
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("personas[{i}]");
            let (file, text) = text_or_object(&field, p)?;
            Persona::from_str_named(&file, &text).map_err(|e| definition_error(&field, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inputs: RunInputs = match body.inputs {
        None | Some(Value::Null) => RunInputs {
            objective: serde_json::json!({}),
            extra: serde_json::json!({}),
            ..RunInputs::default()
        },
        Some(v) => document::from_value(v).map_err(|e| {
            let field = e
                .path
                .as_ref()
                .map_or("inputs".to_owned(), |p| format!("inputs.{p}"));
            ApiError::invalid(field, e.message)
        })?,
    };
    let budget = body.budget.map_or(Budget::default(), |b| Budget {
        usd: b.usd,
        tokens: b.tokens,
    });
    // Inputs, budget, queue and team limits are checked by `phasefleet::submit`, for
    // every caller.
    let queue = body
        .queue
        .unwrap_or_else(|| phasefleet::queue::DEFAULT_QUEUE.to_owned());
    let files = body
        .files
        .into_iter()
        .map(|(path, f)| InputFile {
            path,
            content: match f {
                FileBody::Text(text) | FileBody::Inline { text } => {
                    FileContent::Bytes(text.into_bytes())
                }
                FileBody::Uploaded { sha256 } => FileContent::Uploaded { sha256 },
            },
        })
        .collect();
    Ok(SubmitRequest {
        template,
        personas,
        inputs,
        files,
        bindings: body.bindings,
        budget,
        idempotency_key: key,
        submitted_by: Some(caller.name.clone()),
        queue,
        team,
        may_define_provider_personas: caller.role == Role::Admin,
        allow_unserved: body.allow_unserved,
    })
}

/// Submit a run.
#[utoipa::path(post, path = "/v1/runs", tag = "runs", request_body = SubmitBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "A repeat with the same key (and the same request) returns the same run")),
    responses((status = 201, body = SubmitResponse), (status = 200, body = SubmitResponse, description = "existing run for this key"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "key reused with a different request"), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<Value>,
) -> Result<Response, ApiError> {
    caller.require(Role::Submit)?;
    let key = idempotency_key(&headers)?;
    let body: SubmitBody = document::from_value(body)
        .map_err(|e| ApiError::invalid(e.path.as_deref().unwrap_or("body"), e.message))?;
    let req = build_request(body, key, &caller)?;
    let out = phasefleet::submit::submit(&state.pool, &state.schemas, &state.config, req).await?;
    let (status, outcome, run_id) = match out {
        Submitted::Created(id) => (StatusCode::CREATED, "created", id),
        Submitted::Existing(id) => (StatusCode::OK, "existing", id),
    };
    metrics::counter!("phasefleet_api_runs_submitted_total", "outcome" => outcome).increment(1);
    Ok((
        status,
        [(header::LOCATION, format!("/v1/runs/{run_id}"))],
        Json(SubmitResponse { run_id, outcome }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// queued, running, awaiting_approval, completed, failed, aborted, cancelled
    pub state: Option<String>,
    /// Template name.
    pub template: Option<String>,
    pub submitted_by: Option<String>,
    /// Only this team's runs (a team's token always sees its own team only).
    pub team: Option<String>,
    /// 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List runs, newest first.
#[utoipa::path(get, path = "/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, description = "`{runs: [...], next_cursor}`", body = Object), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<RunPage>, ApiError> {
    caller.require(Role::Read)?;
    let team = match caller.scope.team() {
        Some(own) => Some(own.to_owned()),
        None => q.team,
    };
    let filter = RunFilter {
        team,
        state: q
            .state
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| ApiError {
                field: Some("state".into()),
                ..ApiError::bad_request(e)
            })?,
        template: q.template,
        submitted_by: q.submitted_by,
    };
    if q.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    let cursor = q
        .cursor
        .as_deref()
        .map(phasefleet::views::Cursor::parse)
        .transpose()
        .map_err(|e| ApiError {
            field: Some("cursor".into()),
            ..ApiError::bad_request(e.to_string())
        })?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        phasefleet::views::list_runs(&mut conn, &filter, cursor, q.limit.unwrap_or(50)).await?,
    ))
}

fn run_not_found(id: RunId) -> ApiError {
    ApiError::not_found(format!("run {id} not found"))
}

/// The run, when it exists and the caller's team may see it (404 otherwise, so another
/// team's run ids reveal nothing).
pub async fn visible_run(state: &AppState, caller: &Caller, id: RunId) -> Result<RunRow, ApiError> {
    let mut conn = state.pool.acquire().await?;
    phasefleet::store::runs::runs_get(&mut conn, id)
        .await?
        .filter(|r| caller.scope.sees(&r.team))
        .ok_or_else(|| run_not_found(id))
}

/// One run: phases, artifacts (without content), approvals, costs, report.
#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
) -> Result<Json<phasefleet::views::RunDetail>, ApiError> {
    caller.require(Role::Read)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    phasefleet::views::run_detail(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| run_not_found(id))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a larger seq.
    pub after: Option<i64>,
    /// 1 to 1000 (default 500).
    pub limit: Option<i64>,
}

/// A run's events, in order.
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "runs", params(("id" = String, Path, format = Uuid), EventsQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<phasefleet::events::Event>>, ApiError> {
    caller.require(Role::Read)?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        phasefleet::store::events::events_list(
            &mut conn,
            id,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(500),
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `json` (default) or `markdown`.
    pub format: Option<String>,
}

/// The report of an ended run, as JSON or Markdown.
#[utoipa::path(get, path = "/v1/runs/{id}/report", tag = "runs", params(("id" = String, Path, format = Uuid), ReportQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody, description = "no such run, or it has not ended")),
    security(("bearer" = [])))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let run = visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    let Some((json, md)) = phasefleet::report::get(&mut conn, id).await? else {
        return Err(ApiError::not_found(format!(
            "run {id} is {} and has no report yet; reports are written when a run ends",
            run.state.as_str()
        )));
    };
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(json).into_response()),
        Some("markdown" | "md") => {
            Ok(([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], md).into_response())
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown format {other:?}: use json or markdown"
        ))),
    }
}

/// One artifact with its content.
#[utoipa::path(get, path = "/v1/runs/{id}/artifacts/{artifact_id}", tag = "runs",
    params(("id" = String, Path, format = Uuid), ("artifact_id" = i64, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, artifact_id)): Path<(RunId, i64)>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Read)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    let (meta, content) = phasefleet::views::artifact_content(&mut conn, id, artifact_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} has no artifact {artifact_id}")))?;
    Ok(Json(artifact_body(&meta, content)))
}

/// An artifact as the API shows it: its row, its content, and the content parsed.
pub fn artifact_body(
    meta: &phasefleet::store::artifacts::ArtifactMeta,
    content: Option<String>,
) -> Value {
    let parsed = content
        .as_deref()
        .and_then(|c| serde_json::from_str::<Value>(c).ok());
    serde_json::json!({ "artifact": meta, "json": parsed, "content": content })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    pub reason: Option<String>,
}

/// Cancel a run; an in-flight agent is interrupted. Cancelling an ended run changes nothing.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs", params(("id" = String, Path, format = Uuid)),
    request_body(content = Option<CancelBody>),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Submit)?;
    let body: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("body is not a cancel request: {e}")))?
    };
    if body.reason.as_ref().is_some_and(|r| r.len() > 2000) {
        return Err(ApiError::invalid("reason", "longer than 2000 bytes"));
    }
    let reason = body.reason.map(|r| format!("{r} (by {})", caller.name));
    let out =
        phasefleet::cancel::cancel_run(&state.pool, &caller.scope, id, reason.as_deref()).await?;
    Ok(Json(match out {
        phasefleet::cancel::Cancelled::Cancelled => serde_json::json!({ "outcome": "cancelled" }),
        phasefleet::cancel::Cancelled::AlreadyEnded(s) => {
            serde_json::json!({ "outcome": "already_ended", "state": s })
        }
    }))
}

/// Raise the budget of a run (a run awaiting budget resumes), or abort a run awaiting
/// budget: `{"action": "raise", "usd": 2.0}` or `{"action": "abort", "reason": "..."}`.
#[utoipa::path(post, path = "/v1/runs/{id}/budget", tag = "runs", params(("id" = String, Path, format = Uuid)),
    request_body(content = Object, description = "`{action: raise, usd?, tokens?}` or `{action: abort, reason?}`"),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    Body(body): Body<Value>,
) -> Result<Json<phasefleet::budget::BudgetOutcome>, ApiError> {
    caller.require(Role::Approve)?;
    let decision: phasefleet::budget::BudgetDecision = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid("body", format!("not a budget decision: {e}")))?;
    if let phasefleet::budget::BudgetDecision::Abort { reason: Some(r) } = &decision
        && r.len() > 2000
    {
        return Err(ApiError::invalid("reason", "longer than 2000 bytes"));
    }
    Ok(Json(
        phasefleet::budget::decide(
            &state.pool,
            &caller.scope,
            id,
            &decision,
            Some(&caller.name),
        )
        .await?,
    ))
}
