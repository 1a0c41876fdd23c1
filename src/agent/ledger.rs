//! The LLM call ledger and the tool-call audit: one row per model HTTP attempt (tokens,
//! cost, latency, status, provider request id), one per tool call. Spending is added to
//! the run as it happens (saturating), so the budget check before each call sees the
//! whole fleet's spend on this run. The row written before a request refuses, in the
//! same statement, when the run is no longer running: nothing is sent for an ended run.
//! A row finished after its run ended re-composes the report, so the report's cost is
//! always the ledger's sum.

use super::AgentError;
use crate::events::{CallSite, CallSummary, NewEvent, ToolSummary};
use crate::ids::RunId;
use crate::state::RunState;
use crate::store::events;
use crate::store::ledger::{self, AttemptKey};
use crate::store::runs;
use sqlx::PgPool;

pub use crate::store::ledger::CallRecord;

/// Where a phase attempt's calls are recorded.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
    at: AttemptKey,
}

/// Why [`Ledger::begin_call`] refused.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    #[error("the run is no longer running, or this delivery's lease is gone")]
    RunEnded,
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl Ledger {
    #[must_use]
    pub fn new(pool: PgPool, run_id: RunId, phase: &str, attempt: i32) -> Self {
        Self {
            pool,
            at: AttemptKey {
                run: run_id,
                phase: phase.to_owned(),
                attempt,
                lease: None,
            },
        }
    }

    /// Begin calls only while `lease` is held (see [`ledger::llm_calls_begin`]).
    #[must_use]
    pub fn under_lease(mut self, lease: crate::queue::Lease) -> Self {
        self.at.lease = Some(lease);
        self
    }

    /// Refuse the next call when the run is over budget, or no longer running (a cancel
    /// that the worker has not noticed yet still stops the call).
    ///
    /// # Errors
    /// [`AgentError::Budget`], [`AgentError::Cancelled`], or [`AgentError::Transient`]
    /// when the database cannot be read.
    pub async fn check_budget(&self) -> Result<(), AgentError> {
        let row = self.budget_row().await?;
        let Some(b) = row.filter(|b| b.state == RunState::Running) else {
            return Err(AgentError::Cancelled);
        };
        match crate::budget::Spend::from(&b).exhausted() {
            Some(spent) => Err(AgentError::Budget(spent)),
            None => Ok(()),
        }
    }

    /// The cached list price of `model` on `provider` (see [`crate::prices`]); `None`
    /// when there is none.
    ///
    /// # Errors
    /// [`AgentError::Transient`] when the database cannot be read.
    pub async fn list_price(
        &self,
        provider: &str,
        model: &str,
    ) -> Result<Option<crate::config::Price>, AgentError> {
        async {
            let mut conn = self.pool.acquire().await?;
            crate::prices::cached_price(&mut conn, provider, model).await
        }
        .await
        .map_err(|e| AgentError::Transient(format!("reading the price list: {e}")))
    }

    /// Whether the run has a budget: (in USD, in tokens).
    ///
    /// # Errors
    /// [`AgentError::Transient`] when the database cannot be read.
    pub async fn budgets(&self) -> Result<(bool, bool), AgentError> {
        let row = self.budget_row().await?;
        Ok(row.map_or((false, false), |b| {
            (b.budget_usd.is_some(), b.budget_tokens.is_some())
        }))
    }

    async fn budget_row(&self) -> Result<Option<runs::BudgetRow>, AgentError> {
        async {
            let mut conn = self.pool.acquire().await?;
            runs::runs_get_budget(&mut conn, self.at.run).await
        }
        .await
        .map_err(|e| AgentError::Transient(format!("reading the run budget: {e}")))
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
        let (mut tx, state) = self.lock_run().await?;
        if state != Some(RunState::Running)
            || !ledger::llm_calls_begin(&mut tx, &self.at, turn, model, backend, call_id).await?
        {
            return Err(BeginError::RunEnded);
        }
        let started = NewEvent::model_call_started(&self.site(turn), call_id, model);
        events::events_append(&mut tx, self.at.run, &[started]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A transaction that locked the run's row first (the engine's order, so a cancel
    /// that committed first is seen), with the run's state.
    async fn lock_run(
        &self,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Option<RunState>), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let state = runs::runs_lock_state(&mut tx, self.at.run).await?;
        Ok((tx, state))
    }

    fn site(&self, turn: i32) -> CallSite<'_> {
        CallSite {
            phase: &self.at.phase,
            attempt: self.at.attempt,
            turn,
        }
    }

    /// Record a model call and add its spend to the run, in one transaction; a call
    /// that finished after its run ended re-composes the report.
    ///
    /// # Errors
    /// Database errors.
    pub async fn record_call(&self, c: &CallRecord<'_>) -> Result<(), sqlx::Error> {
        let (mut tx, state) = self.lock_run().await?;
        // The call is always accounted; its event only until the run ends (a finished
        // call of an ended run is in the ledger and the report, not after the end).
        let open = state.is_some_and(|s| !s.is_terminal());
        ledger::llm_calls_finish(&mut tx, &self.at, c).await?;
        if let Some(call_id) = c.call_id.filter(|_| open) {
            let summary = CallSummary {
                model: c.model,
                status: c.status,
                tokens_in: c.tokens_in,
                tokens_out: c.tokens_out,
                cost_usd: c.cost_usd,
                latency_ms: c.latency_ms,
            };
            let finished = NewEvent::model_call_finished(&self.site(c.turn), call_id, &summary);
            events::events_append(&mut tx, self.at.run, &[finished]).await?;
        }
        let tokens = c.tokens_in.saturating_add(c.tokens_out);
        if tokens > 0 || c.cost_usd > 0.0 {
            let state = runs::runs_add_spend(&mut tx, self.at.run, c.cost_usd, tokens).await?;
            if state.is_terminal() {
                crate::report::compose_and_store(&mut tx, self.at.run).await?;
            }
        }
        tx.commit().await?;
        count_call(c);
        Ok(())
    }

    /// Audit one tool call. Arguments are stored as JSON, or as a string when they do
    /// not parse; PostgreSQL holds no NUL, so a model's NUL becomes U+FFFD in the audit
    /// (never an error).
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
        let answer_bytes = summary.len();
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
        let path: Option<String> = args
            .get("path")
            .and_then(serde_json::Value::as_str)
            .map(|p| super::tools::printable(p, 256));
        let (mut tx, state) = self.lock_run().await?;
        let open = state.is_some_and(|s| !s.is_terminal());
        let id =
            ledger::tool_calls_insert(&mut tx, &self.at, turn, &tool, &args, ok, &summary).await?;
        if !open {
            return tx.commit().await;
        }
        let called = ToolSummary {
            name: &tool,
            path: path.as_deref(),
            ok,
            bytes_in: arguments.len(),
            bytes_out: answer_bytes,
        };
        events::events_append(
            &mut tx,
            self.at.run,
            &[NewEvent::tool_called(&self.site(turn), id, &called)],
        )
        .await?;
        tx.commit().await
    }
}

/// The process's LLM counters (calls, tokens, micro-dollars).
fn count_call(c: &CallRecord<'_>) {
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
}
