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
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tracing::Instrument;
use utoipa::openapi::Ref;
use utoipa::{IntoParams, ToSchema};

/// Names of teams, queues, personas, roles, phases, gates and schemas.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9_.-]{1,64}$";

/// A run to start.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = submit_example)]
pub struct SubmitBody {
    /// The workflow template: an object, or its YAML (or JSON) text.
    #[schema(schema_with = template_schema)]
    pub template: Value,
    /// Every persona the template or a binding names that is not registered: objects,
    /// or YAML/JSON texts.
    #[schema(schema_with = personas_schema)]
    pub personas: Vec<Value>,
    /// What the agent is asked to work from (`null` or absent: nothing).
    #[serde(default)]
    #[schema(value_type = Option<RunInputs>)]
    pub inputs: Option<Value>,
    /// role -> persona name, overriding the template's defaults for this run.
    #[serde(default)]
    pub bindings: BTreeMap<String, String>,
    #[serde(default)]
    pub budget: Option<BudgetBody>,
    /// Queue for the run's phase jobs (default `default`); one the team may use.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: Option<String>,
    /// The run's team: a team's token submits for its own team; a fleet-wide admin
    /// may name any (default `default`).
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
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

/// The bundled example workflow, as a submit body.
fn submit_example() -> Value {
    json!({
        "template": include_str!("../../../examples/spec-review-verify.yaml"),
        "personas": [
            include_str!("../../../examples/personas/synthetic-author.yaml"),
            include_str!("../../../examples/personas/synthetic-reviewer.yaml"),
        ],
        "inputs": { "requirements": include_str!("../../../examples/requirements.md") },
    })
}

fn template_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(Ref::from_schema_name("WorkflowTemplate"))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .description(Some("the template as YAML or JSON text")),
            )
            .build(),
    )
}

fn personas_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let persona = OneOfBuilder::new()
        .item(Ref::from_schema_name("Persona"))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .description(Some("a persona as YAML or JSON text")),
        );
    utoipa::openapi::schema::Schema::Array(
        ArrayBuilder::new()
            .items(persona)
            .min_items(Some(1))
            .max_items(Some(32))
            .build(),
    )
}

/// One input file of a submit.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum FileBody {
    /// The file's text.
    Text(String),
    #[schema(title = "FileText")]
    Inline { text: String },
    /// Content this team uploaded, by its SHA-256.
    #[schema(title = "FileByDigest")]
    Uploaded {
        #[schema(pattern = r"^[0-9a-f]{64}$")]
        sha256: String,
    },
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// US dollars the run may spend on model calls.
    #[schema(exclusive_minimum = 0.0)]
    pub usd: Option<f64>,
    /// Tokens (in + out) the run may use.
    #[schema(minimum = 1)]
    pub tokens: Option<i64>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmitOutcome {
    Created,
    /// The Idempotency-Key was used before with the same request.
    Existing,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitResponse {
    pub run_id: RunId,
    pub outcome: SubmitOutcome,
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
    let bytes = v.as_bytes();
    let visible = |b: &u8| (b'!'..=b'~').contains(b);
    let fits = (1..=200).contains(&bytes.len())
        && bytes.iter().all(|b| *b == b' ' || visible(b))
        && bytes.first().is_some_and(visible)
        && bytes.last().is_some_and(visible);
    if !fits {
        return Err(ApiError {
            field: Some("Idempotency-Key".into()),
            ..ApiError::bad_request(
                "Idempotency-Key must be 1 to 200 printable ASCII characters, not starting or ending with a space",
            )
        });
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The engine's submit request from an HTTP body: its template, personas, inputs and
/// files parsed, each error naming its field.
fn build_request(
    body: SubmitBody,
    key: Option<String>,
    caller: &Caller,
) -> Result<SubmitRequest, ApiError> {
    let team = caller.submit_team(body.team.as_deref())?;
    let (file, text) = text_or_object("template", &body.template)?;
    let template = WorkflowTemplate::from_str_named(&file, &text)
        .map_err(|e| definition_error("template", e))?;
    let personas = parse_personas(&body.personas)?;
    let inputs = parse_inputs(body.inputs)?;
    let budget = body.budget.map_or(Budget::default(), |b| Budget {
        usd: b.usd,
        tokens: b.tokens,
    });
    // Inputs, budget, queue and team limits are checked by `phasefleet::submit`, for
    // every caller.
    let queue = body
        .queue
        .unwrap_or_else(|| phasefleet::queue::DEFAULT_QUEUE.to_owned());
    Ok(SubmitRequest {
        template,
        personas,
        inputs,
        files: input_files(body.files),
        bindings: body.bindings,
        budget,
        idempotency_key: key,
        submitted_by: Some(caller.name.clone()),
        queue,
        team,
        may_define_provider_personas: caller.role == Role::Admin,
        allow_unserved: body.allow_unserved,
        traceparent: None,
    })
}

fn parse_personas(bodies: &[Value]) -> Result<Vec<Persona>, ApiError> {
    if bodies.is_empty() {
        return Err(ApiError::invalid(
            "personas",
            "at least one persona is needed",
        ));
    }
    bodies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("personas[{i}]");
            let (file, text) = text_or_object(&field, p)?;
            Persona::from_str_named(&file, &text).map_err(|e| definition_error(&field, e))
        })
        .collect()
}

/// The run's inputs (`null` or absent: an empty objective and extra).
fn parse_inputs(inputs: Option<Value>) -> Result<RunInputs, ApiError> {
    match inputs {
        None | Some(Value::Null) => Ok(RunInputs {
            objective: json!({}),
            extra: json!({}),
            ..RunInputs::default()
        }),
        Some(v) => document::from_value(v).map_err(|e| {
            let field = e
                .path
                .as_ref()
                .map_or("inputs".to_owned(), |p| format!("inputs.{p}"));
            ApiError::invalid(field, e.message)
        }),
    }
}

fn input_files(files: BTreeMap<String, FileBody>) -> Vec<InputFile> {
    files
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
        .collect()
}

/// Submit a run. Needs the `submit` role.
#[utoipa::path(post, operation_id = "submit_run", path = "/v1/runs", tag = "runs", request_body = SubmitBody,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = r"^[!-~]([ -~]{0,198}[!-~])?$",
            description = "A repeat with the same key (and the same request) returns the same run")),
    responses((status = 201, body = SubmitResponse, description = "the run was created",
               headers(("Location" = String, description = "the run's address"))),
              (status = 200, body = SubmitResponse, description = "the run created earlier with this Idempotency-Key"),
              (status = 409, body = ErrorBody, description = "the Idempotency-Key was used with a different request"),
              (status = 422, body = ErrorBody, description = "the request is not valid; `field` names what is wrong. Besides \
what the schema says, a template's phases must name declared roles and registered schemas, every role must be bound to \
a persona given here or registered, a USD budget needs priced models, providers must be configured and served, and \
uploaded content must be this team's.")),
    security(("bearer" = ["submit"])))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<SubmitBody>,
) -> Result<Response, ApiError> {
    caller.require(Role::Submit)?;
    let key = idempotency_key(&headers)?;
    let mut req = build_request(body, key, &caller)?;
    // The run's trace starts here (under the caller's `traceparent`, if it sent one);
    // its phase attempts continue it.
    let span = tracing::info_span!("submit_run", team = %req.team, queue = %req.queue);
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        phasefleet::telemetry::continue_trace(&span, parent);
    }
    req.traceparent = phasefleet::telemetry::traceparent_of(&span);
    let submitted = phasefleet::submit::submit(&state.pool, &state.schemas, &state.config, req);
    let out = submitted.instrument(span).await?;
    let (status, outcome, run_id) = match out {
        Submitted::Created(id) => (StatusCode::CREATED, SubmitOutcome::Created, id),
        Submitted::Existing(id) => (StatusCode::OK, SubmitOutcome::Existing, id),
    };
    let label = match outcome {
        SubmitOutcome::Created => "created",
        SubmitOutcome::Existing => "existing",
    };
    metrics::counter!("phasefleet_api_runs_submitted_total", "outcome" => label).increment(1);
    Ok((
        status,
        [(header::LOCATION, format!("/v1/runs/{run_id}"))],
        Json(SubmitResponse { run_id, outcome }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only runs in this state.
    #[param(value_type = Option<phasefleet::state::RunState>)]
    pub state: Option<String>,
    /// Template name.
    pub template: Option<String>,
    pub submitted_by: Option<String>,
    /// Only this team's runs (a team's token always sees its own team only).
    pub team: Option<String>,
    /// Runs per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(
        pattern = r"^[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )]
    pub cursor: Option<String>,
}

/// List runs, newest first.
#[utoipa::path(get, operation_id = "list_runs", path = "/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, body = RunPage, description = "a page of runs; pass `next_cursor` as `cursor` for the next")),
    security(("bearer" = ["read"])))]
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
    let limit = super::page_limit(q.limit, 50, 500)?;
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
        phasefleet::views::list_runs(&mut conn, &filter, cursor, limit).await?,
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
#[utoipa::path(get, operation_id = "get_run", path = "/v1/runs/{id}", tag = "runs", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = phasefleet::views::RunDetail), (status = 404, body = ErrorBody, description = "no such run in the caller's team")),
    security(("bearer" = ["read"])))]
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a larger seq.
    #[param(default = 0)]
    pub after: Option<i64>,
    /// Events per page.
    #[param(minimum = 1, maximum = 1000, default = 500)]
    pub limit: Option<i64>,
}

/// A run's events, in order.
#[utoipa::path(get, operation_id = "list_run_events", path = "/v1/runs/{id}/events", tag = "runs", params(("id" = String, Path, format = Uuid), EventsQuery),
    responses((status = 200, body = Vec<phasefleet::events::Event>), (status = 404, body = ErrorBody, description = "no such run in the caller's team")),
    security(("bearer" = ["read"])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<phasefleet::events::Event>>, ApiError> {
    caller.require(Role::Read)?;
    let limit = super::page_limit(q.limit, 500, 1000)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        phasefleet::store::events::events_list(&mut conn, id, q.after.unwrap_or(0), limit).await?,
    ))
}

/// A run's tool calls (the tool audit), oldest first: what each call asked, whether it
/// succeeded, and the start of its answer. `after` is the last `id` already read.
#[utoipa::path(get, operation_id = "list_run_tool_calls", path = "/v1/runs/{id}/tool-calls", tag = "runs", params(("id" = String, Path, format = Uuid), ToolCallsQuery),
    responses((status = 200, body = Vec<phasefleet::store::ledger::ToolCall>), (status = 404, body = ErrorBody, description = "no such run in the caller's team")),
    security(("bearer" = ["read"])))]
pub async fn tool_calls(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    Query(q): Query<ToolCallsQuery>,
) -> Result<Json<Vec<phasefleet::store::ledger::ToolCall>>, ApiError> {
    caller.require(Role::Read)?;
    // Each row carries up to 64 KiB of arguments: pages stay at a few MiB.
    let limit = super::page_limit(q.limit, 50, 100)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        phasefleet::store::ledger::tool_calls_list(&mut conn, id, q.after.unwrap_or(0), limit)
            .await?,
    ))
}

/// A page of the tool audit.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ToolCallsQuery {
    /// Only calls with a larger id.
    #[param(default = 0)]
    pub after: Option<i64>,
    /// Calls per page.
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    #[param(value_type = Option<ReportFormat>, default = "json")]
    pub format: Option<ReportFormat>,
}

/// How a report is sent.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    Json,
    Markdown,
    /// Same as `markdown`.
    Md,
    /// The Markdown rendered as an HTML fragment: raw HTML shown as text, links only
    /// to http(s), mailto, anchors and relative paths.
    Html,
}

/// The report of an ended run, as JSON, Markdown, or Markdown rendered as safe HTML.
#[utoipa::path(get, operation_id = "get_run_report", path = "/v1/runs/{id}/report", tag = "runs", params(("id" = String, Path, format = Uuid), ReportQuery),
    responses((status = 200, description = "the report", content(
                  (Object = "application/json"),
                  (String = "text/markdown"),
                  (String = "text/html"))),
              (status = 404, body = ErrorBody, description = "no such run in the caller's team, or it has not ended")),
    security(("bearer" = ["read"])))]
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
    match q.format.unwrap_or(ReportFormat::Json) {
        ReportFormat::Json => Ok(Json(json).into_response()),
        ReportFormat::Markdown | ReportFormat::Md => {
            Ok(([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], md).into_response())
        }
        ReportFormat::Html => {
            let html =
                tokio::task::spawn_blocking(move || phasefleet::safe_html::markdown_to_html(&md))
                    .await
                    .map_err(|e| ApiError::internal(&e))?;
            let headers = [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'self'",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ];
            Ok((headers, html).into_response())
        }
    }
}

/// One artifact with its content.
#[utoipa::path(get, operation_id = "get_artifact", path = "/v1/runs/{id}/artifacts/{artifact_id}", tag = "runs",
    params(("id" = String, Path, format = Uuid), ("artifact_id" = i64, Path)),
    responses((status = 200, body = ArtifactBody), (status = 404, body = ErrorBody, description = "no such run in the caller's team, or no such artifact")),
    security(("bearer" = ["read"])))]
pub async fn artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, artifact_id)): Path<(RunId, i64)>,
) -> Result<Json<ArtifactBody>, ApiError> {
    caller.require(Role::Read)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    let (meta, content) = phasefleet::views::artifact_content(&mut conn, id, artifact_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} has no artifact {artifact_id}")))?;
    Ok(Json(artifact_body(meta, content)))
}

/// An artifact as the API shows it: its row, its content, and the content parsed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ArtifactBody {
    pub artifact: phasefleet::store::artifacts::ArtifactMeta,
    /// The content parsed as JSON; `null` when it is not JSON or there is none.
    pub json: Value,
    /// The content as written; `null` for a phase whose output is files.
    pub content: Option<String>,
}

/// An artifact as the API shows it: its row, its content, and the content parsed.
pub fn artifact_body(
    meta: phasefleet::store::artifacts::ArtifactMeta,
    content: Option<String>,
) -> ArtifactBody {
    let json = content
        .as_deref()
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .unwrap_or(Value::Null);
    ArtifactBody {
        artifact: meta,
        json,
        content,
    }
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "superseded by a newer request"}))]
pub struct CancelBody {
    /// Recorded with the run's error, with the caller's name.
    #[schema(max_length = 2000)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    Cancelled,
    /// The run had ended before; nothing changed.
    AlreadyEnded,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    pub outcome: CancelOutcome,
    /// The state the run had ended in (`already_ended` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<phasefleet::state::RunState>,
}

/// Cancel a run; an in-flight agent is interrupted. Cancelling an ended run changes
/// nothing. Needs the `submit` role. The body is optional.
#[utoipa::path(post, operation_id = "cancel_run", path = "/v1/runs/{id}/cancel", tag = "runs", params(("id" = String, Path, format = Uuid)),
    request_body(content = Option<CancelBody>),
    responses((status = 200, body = CancelResponse), (status = 404, body = ErrorBody, description = "no such run in the caller's team")),
    security(("bearer" = ["submit"])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    body: axum::body::Bytes,
) -> Result<Json<CancelResponse>, ApiError> {
    caller.require(Role::Submit)?;
    let body = cancel_body(&body)?;
    let reason = body.reason.map(|r| format!("{r} (by {})", caller.name));
    let out =
        phasefleet::cancel::cancel_run(&state.pool, &caller.scope, id, reason.as_deref()).await?;
    Ok(Json(match out {
        phasefleet::cancel::Cancelled::Cancelled => CancelResponse {
            outcome: CancelOutcome::Cancelled,
            state: None,
        },
        phasefleet::cancel::Cancelled::AlreadyEnded(s) => CancelResponse {
            outcome: CancelOutcome::AlreadyEnded,
            state: Some(s),
        },
    }))
}

/// No body, `null` or `{"reason": ...}`; anything else, whitespace alone included, is
/// not JSON and refused.
fn cancel_body(body: &[u8]) -> Result<CancelBody, ApiError> {
    if body.is_empty() {
        return Ok(CancelBody::default());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let body: Option<CancelBody> = crate::extract::typed(value)?;
    let body = body.unwrap_or_default();
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > 2000)
    {
        return Err(ApiError::invalid("reason", "longer than 2000 characters"));
    }
    Ok(body)
}

/// Raise the budget of a run (a run awaiting budget resumes), or abort a run awaiting
/// budget: `{"action": "raise", "usd": 2.0}` or `{"action": "abort", "reason": "..."}`.
#[utoipa::path(post, operation_id = "decide_run_budget", path = "/v1/runs/{id}/budget", tag = "runs", params(("id" = String, Path, format = Uuid)),
    request_body = phasefleet::budget::BudgetDecision,
    responses((status = 200, body = phasefleet::budget::BudgetOutcome),
              (status = 404, body = ErrorBody, description = "no such run in the caller's team"),
              (status = 409, body = ErrorBody, description = "the run has ended, or is not awaiting budget (abort)"),
              (status = 422, body = ErrorBody, description = "a new limit must exceed what the run has spent")),
    security(("bearer" = ["approve"])))]
pub async fn budget(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
    Body(decision): Body<phasefleet::budget::BudgetDecision>,
) -> Result<Json<phasefleet::budget::BudgetOutcome>, ApiError> {
    caller.require(Role::Approve)?;
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
