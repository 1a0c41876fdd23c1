//! The LLM call ledger and the tool-call audit: one row per model HTTP attempt (tokens,
//! cost, latency, status, provider request id), one per tool call. Spending is added to
//! the run as it happens (saturating), so the budget check before each call sees the
//! whole fleet's spend on this run. The row written before a request refuses, in the
//! same statement, when the run is no longer running: nothing is sent for an ended run.
//! A row finished after its run ended re-composes the report, so the report's cost is
//! always the ledger's sum.

use super::AgentError;
use crate::ids::RunId;
use sqlx::PgPool;

/// Where a phase attempt's calls are recorded.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
    run_id: RunId,
    phase: String,
    attempt: i32,
}

#[derive(sqlx::FromRow)]
struct BudgetRow {
    state: String,
    budget_usd: Option<f64>,
    budget_tokens: Option<i64>,
    spent_usd: f64,
    spent_tokens: i64,
}

/// One model call's accounting.
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
    /// The row [`Ledger::begin_call`] wrote before sending; `None` inserts a new row.
    pub call_id: Option<uuid::Uuid>,
    /// What the provider said the call cost, when that differs in trust from `cost_usd`.
    pub reported_cost_usd: Option<f64>,
    /// Where `cost_usd` came from (`provider`, `config`, ...).
    pub cost_source: Option<&'a str>,
}

/// Why [`Ledger::begin_call`] refused.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    #[error("the run is no longer running")]
    RunEnded,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl Ledger {
    #[must_use]
    pub fn new(pool: PgPool, run_id: RunId, phase: &str, attempt: u32) -> Self {
        Self {
            pool,
            run_id,
            phase: phase.to_owned(),
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
        }
    }

    /// Refuse the next call when the run is over budget, or no longer running (a cancel
    /// that the worker has not noticed yet still stops the call).
    ///
    /// # Errors
    /// [`AgentError::Budget`], [`AgentError::Cancelled`], or [`AgentError::Transient`]
    /// when the database cannot be read.
    pub async fn check_budget(&self) -> Result<(), AgentError> {
        let row: Option<BudgetRow> = sqlx::query_as(
            "SELECT state::text AS state, budget_usd, budget_tokens, spent_usd, spent_tokens FROM runs WHERE id = $1",
        )
        .bind(self.run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| AgentError::Transient(format!("reading the run budget: {e}")))?;
        let Some(BudgetRow {
            state,
            budget_usd,
            budget_tokens,
            spent_usd,
            spent_tokens,
        }) = row
        else {
            return Err(AgentError::Cancelled);
        };
        if state != "running" {
            return Err(AgentError::Cancelled);
        }
        if let Some(b) = budget_usd.filter(|b| spent_usd >= *b) {
            return Err(AgentError::Budget(format!(
                "spent ${spent_usd:.4} of ${b:.4}"
            )));
        }
        if let Some(b) = budget_tokens.filter(|b| spent_tokens >= *b) {
            return Err(AgentError::Budget(format!(
                "spent {spent_tokens} of {b} tokens"
            )));
        }
        Ok(())
    }

    /// Record that a model HTTP attempt is about to be sent (status `in_flight`). A
    /// worker killed before [`Ledger::record_call`] leaves this row behind, so the
    /// ledger still accounts for the request. Refuses, in the same statement, when the
    /// run is no longer running (cancelled, ended): then nothing may be sent.
    ///
    /// # Errors
    /// [`BeginError::RunEnded`]; database errors.
    pub async fn begin_call(
        &self,
        turn: i32,
        model: &str,
        backend: &str,
        call_id: uuid::Uuid,
    ) -> Result<(), BeginError> {
        let inserted = sqlx::query(
            "INSERT INTO llm_calls (run_id, phase_key, attempt, turn, model, backend, status, call_id)
             SELECT $1, $2, $3, $4, $5, $6, 'in_flight', $7
              WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND state = 'running')",
        )
        .bind(self.run_id)
        .bind(&self.phase)
        .bind(self.attempt)
        .bind(turn)
        .bind(model)
        .bind(backend)
        .bind(call_id)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(BeginError::RunEnded);
        }
        Ok(())
    }

    /// Record a model call and add its spend to the run, in one transaction.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_call(&self, c: &CallRecord<'_>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
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
        .bind(self.run_id)
        .bind(&self.phase)
        .bind(self.attempt)
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
        .execute(&mut *tx)
        .await?;
        let tokens = c.tokens_in.saturating_add(c.tokens_out);
        if tokens > 0 || c.cost_usd > 0.0 {
            // Sums saturate: no provider report can overflow them or make them negative.
            let (state,): (crate::runs::RunState,) = sqlx::query_as(
                "UPDATE runs SET spent_usd = LEAST(spent_usd + GREATEST($2, 0), 1e15),
                        spent_tokens = LEAST(spent_tokens::numeric + GREATEST($3, 0), 9223372036854775807)::bigint
                  WHERE id = $1 RETURNING state",
            )
            .bind(self.run_id)
            .bind(c.cost_usd)
            .bind(tokens)
            .fetch_one(&mut *tx)
            .await?;
            if state.is_terminal() {
                // A call that finished after its run ended: the report must show it.
                crate::report::compose_and_store(&mut tx, self.run_id).await?;
            }
        }
        tx.commit().await?;
        let model = c.model.to_owned();
        metrics::counter!("phasefleet_llm_calls_total", "model" => model.clone(), "status" => c.status.to_owned())
            .increment(1);
        for (kind, n) in [
            ("in", c.tokens_in),
            ("out", c.tokens_out),
            ("cached", c.tokens_cached),
            ("reasoning", c.tokens_reasoning),
        ] {
            metrics::counter!("phasefleet_llm_tokens_total", "model" => model.clone(), "kind" => kind)
                .increment(u64::try_from(n).unwrap_or(0));
        }
        // Micro-dollars: counters are integers.
        metrics::counter!("phasefleet_llm_cost_microusd_total", "model" => model)
            .increment((c.cost_usd.max(0.0) * 1e6).round() as u64);
        Ok(())
    }

    /// Audit one tool call.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_tool(
        &self,
        turn: i32,
        tool: &str,
        arguments: &str,
        ok: bool,
        summary: &str,
    ) -> Result<(), sqlx::Error> {
        // Arguments are stored as JSON; unparseable ones are kept as a string. PostgreSQL
        // holds no NUL, so a model's NUL becomes U+FFFD in the audit (never an error).
        let mut end = arguments.len().min(64 * 1024);
        while !arguments.is_char_boundary(end) {
            end -= 1;
        }
        let clean = arguments[..end]
            .replace('\0', "\u{FFFD}")
            .replace("\\u0000", "\\uFFFD");
        let args = serde_json::from_str::<serde_json::Value>(&clean)
            .unwrap_or(serde_json::Value::String(clean));
        let summary: String = summary
            .chars()
            .take(500)
            .collect::<String>()
            .replace('\0', "");
        let tool = super::tools::printable(tool, 64);
        sqlx::query(
            "INSERT INTO tool_calls (run_id, phase_key, attempt, turn, tool, arguments, ok, result_summary)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(self.run_id)
        .bind(&self.phase)
        .bind(self.attempt)
        .bind(turn)
        .bind(tool)
        .bind(args)
        .bind(ok)
        .bind(summary)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
