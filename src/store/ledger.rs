//! `llm_calls` and `tool_calls`: one row per model HTTP attempt (written before the
//! request is sent, finished after), one per tool call.

use crate::ids::RunId;
use crate::queue::Lease;
use serde::Serialize;
use sqlx::PgConnection;

/// Which attempt a ledger row belongs to.
#[derive(Debug, Clone)]
pub struct AttemptKey {
    pub run: RunId,
    pub phase: String,
    pub attempt: i32,
    /// The queue lease the attempt runs under, when it runs under one: a call is
    /// begun only while the lease is still this delivery's.
    pub lease: Option<Lease>,
}

/// Write the `in_flight` row of a model HTTP attempt, unless the run is no longer
/// running or the attempt's lease is no longer held (another worker took the job
/// while this one was cut off), both checked in the same statement. Returns whether
/// the row was written.
///
/// # Errors
/// Database errors.
pub async fn llm_calls_begin(
    conn: &mut PgConnection,
    at: &AttemptKey,
    turn: i32,
    model: &str,
    backend: &str,
    call_id: uuid::Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO llm_calls (run_id, phase_key, attempt, turn, model, backend, status, call_id)
         SELECT $1, $2, $3, $4, $5, $6, 'in_flight', $7
          WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND state = 'running')
            AND ($8::bigint IS NULL OR EXISTS (
                 SELECT 1 FROM jobs WHERE id = $8 AND lease_token = $9 AND state = 'running'))",
    )
    .bind(at.run)
    .bind(&at.phase)
    .bind(at.attempt)
    .bind(turn)
    .bind(model)
    .bind(backend)
    .bind(call_id)
    .bind(at.lease.map(|l| l.job_id))
    .bind(at.lease.map(|l| l.token))
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// A model call's accounting.
#[derive(Debug, Clone, Default)]
pub struct CallRecord<'a> {
    pub turn: i32,
    pub model: &'a str,
    pub backend: &'a str,
    pub status: &'a str,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tokens_cached: i64,
    pub tokens_reasoning: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub provider_request_id: Option<&'a str>,
    pub error: Option<&'a str>,
    /// The row [`llm_calls_begin`] wrote; `None` inserts a new row.
    pub call_id: Option<uuid::Uuid>,
    /// What the provider said the call cost, kept beside `cost_usd`.
    pub reported_cost_usd: Option<f64>,
    /// Where `cost_usd` came from (`provider`, `config`, ...).
    pub cost_source: Option<&'a str>,
}

/// Finish a call's row (or insert it, without a `call_id`).
///
/// # Errors
/// Database errors.
pub async fn llm_calls_finish(
    conn: &mut PgConnection,
    at: &AttemptKey,
    c: &CallRecord<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO llm_calls (run_id, phase_key, attempt, turn, model, backend, status, tokens_in, tokens_out,
                                tokens_cached, tokens_reasoning, cost_usd, latency_ms, provider_request_id, error,
                                call_id, reported_cost_usd, cost_source, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, now())
         ON CONFLICT (call_id) WHERE call_id IS NOT NULL DO UPDATE SET
            status = EXCLUDED.status, tokens_in = EXCLUDED.tokens_in, tokens_out = EXCLUDED.tokens_out,
            tokens_cached = EXCLUDED.tokens_cached, tokens_reasoning = EXCLUDED.tokens_reasoning,
            cost_usd = EXCLUDED.cost_usd, latency_ms = EXCLUDED.latency_ms,
            provider_request_id = EXCLUDED.provider_request_id, error = EXCLUDED.error,
            reported_cost_usd = EXCLUDED.reported_cost_usd, cost_source = EXCLUDED.cost_source,
            finished_at = now()",
    )
    .bind(at.run)
    .bind(&at.phase)
    .bind(at.attempt)
    .bind(c.turn)
    .bind(c.model)
    .bind(c.backend)
    .bind(c.status)
    .bind(c.tokens_in)
    .bind(c.tokens_out)
    .bind(c.tokens_cached)
    .bind(c.tokens_reasoning)
    .bind(c.cost_usd)
    .bind(c.latency_ms)
    .bind(c.provider_request_id)
    .bind(c.error)
    .bind(c.call_id)
    .bind(c.reported_cost_usd.filter(|r| r.is_finite()))
    .bind(c.cost_source)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Audit one tool call (arguments as JSON, or as a string when they do not parse).
/// Returns the audit row's id.
///
/// # Errors
/// Database errors.
pub async fn tool_calls_insert(
    conn: &mut PgConnection,
    at: &AttemptKey,
    turn: i32,
    tool: &str,
    arguments: &serde_json::Value,
    ok: bool,
    summary: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO tool_calls (run_id, phase_key, attempt, turn, tool, arguments, ok, result_summary)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(at.run)
    .bind(&at.phase)
    .bind(at.attempt)
    .bind(turn)
    .bind(tool)
    .bind(arguments)
    .bind(ok)
    .bind(summary)
    .fetch_one(&mut *conn)
    .await
}

/// One row of the tool audit.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: i64,
    pub phase_key: String,
    pub attempt: i32,
    pub turn: i32,
    pub tool: String,
    /// The arguments the model sent (JSON, or a string when they did not parse; at
    /// most 64 KiB).
    pub arguments: serde_json::Value,
    pub ok: bool,
    /// The start of the tool's answer (at most 500 characters).
    pub result_summary: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A run's tool calls after audit row `after_id`, oldest first.
///
/// # Errors
/// Database errors.
pub async fn tool_calls_list(
    conn: &mut PgConnection,
    run: RunId,
    after_id: i64,
    limit: i64,
) -> Result<Vec<ToolCall>, sqlx::Error> {
    sqlx::query_as::<_, ToolCall>(
        "SELECT id, phase_key, attempt, turn, tool, arguments, ok, result_summary, created_at
           FROM tool_calls WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(run)
    .bind(after_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// LLM spend of a run, per phase and model.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CostLine {
    pub phase_key: String,
    pub model: String,
    pub calls: i64,
    pub failed_calls: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub tokens_cached: i64,
    pub tokens_reasoning: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
}

/// The cost ledger of a run summed per phase and model.
///
/// # Errors
/// Database errors.
pub async fn llm_calls_cost_lines(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Vec<CostLine>, sqlx::Error> {
    sqlx::query_as::<_, CostLine>(
        "SELECT phase_key, model, count(*) AS calls, count(*) FILTER (WHERE status <> 'ok') AS failed_calls,
                COALESCE(sum(tokens_in), 0)::bigint AS tokens_in, COALESCE(sum(tokens_out), 0)::bigint AS tokens_out,
                COALESCE(sum(tokens_cached), 0)::bigint AS tokens_cached,
                COALESCE(sum(tokens_reasoning), 0)::bigint AS tokens_reasoning,
                COALESCE(sum(cost_usd), 0)::float8 AS cost_usd, COALESCE(sum(latency_ms), 0)::bigint AS latency_ms
           FROM llm_calls WHERE run_id = $1 GROUP BY phase_key, model ORDER BY min(id)",
    )
    .bind(run)
    .fetch_all(&mut *conn)
    .await
}

/// How many model HTTP attempts one phase attempt made (over all its deliveries).
///
/// # Errors
/// Database errors.
pub async fn llm_calls_count(
    conn: &mut PgConnection,
    run: RunId,
    phase: &str,
    attempt: i32,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM llm_calls WHERE run_id = $1 AND phase_key = $2 AND attempt = $3",
    )
    .bind(run)
    .bind(phase)
    .bind(attempt)
    .fetch_one(&mut *conn)
    .await
}
