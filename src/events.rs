//! The run event log: what happened to a run, in order. One constructor per kind of
//! event builds its kind, payload and idempotency key; `store::events::events_append`
//! writes a transaction's events in one statement with a dense per-run sequence (read
//! from the run row, never by counting) and skips keys the run already used, so a
//! replayed step appends nothing.

use crate::ids::{ApprovalId, RunId};
use crate::state::RunState;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;

/// Channel notified with `run_id:seq` after each append (for live event streams).
pub const EVENTS_CHANNEL: &str = "phasefleet_events";

/// Wake-ups for live event streams sent after a commit, many runs to a statement.
///
/// PostgreSQL serialises the commits of transactions that NOTIFY (each holds a
/// database-wide lock from its notification to the end of its commit), so a phase's
/// transaction appends its events without one and [`Self::after_commit`] announces
/// them: it notes the run's last seq and rings a sender task (started on first use,
/// ended when the last clone is dropped), which sends every noted wake-up in one
/// statement, so they batch themselves under load. A wake-up lost (a process ending
/// between commit and wake-up, a failed statement) costs a stream latency, never an
/// event: streams also poll.
#[derive(Clone)]
pub struct StreamWakeUps {
    inner: Arc<WakeUpsInner>,
}

struct WakeUpsInner {
    pool: PgPool,
    /// The last seq to announce per run, shared with the sender task.
    pending: Arc<Mutex<HashMap<RunId, i64>>>,
    /// Rings the sender task; one ring waiting is enough.
    doorbell: OnceLock<mpsc::Sender<()>>,
}

impl StreamWakeUps {
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(WakeUpsInner {
                pool,
                pending: Arc::new(Mutex::new(HashMap::new())),
                doorbell: OnceLock::new(),
            }),
        }
    }

    /// Announce that `run` has events up to `seq`, committed already. Returns at once.
    pub fn after_commit(&self, run: RunId, seq: i64) {
        {
            let mut pending = lock(&self.inner.pending);
            let last = pending.entry(run).or_insert(seq);
            *last = (*last).max(seq);
        }
        let doorbell = self.inner.doorbell.get_or_init(|| {
            let (ring, rung) = mpsc::channel(1);
            tokio::spawn(send_wake_ups(
                self.inner.pool.clone(),
                self.inner.pending.clone(),
                rung,
            ));
            ring
        });
        // Full: a ring is waiting already, and its batch takes this one.
        let _ = doorbell.try_send(());
    }
}

fn lock(pending: &Mutex<HashMap<RunId, i64>>) -> std::sync::MutexGuard<'_, HashMap<RunId, i64>> {
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long the sender task gathers wake-ups after a ring before it sends them: a
/// stream hears of an event this much later, and a busy worker sends a statement per
/// this much time instead of one per commit.
const GATHER_WAKE_UPS: std::time::Duration = std::time::Duration::from_millis(5);

/// The sender task: on each ring, gather for [`GATHER_WAKE_UPS`], then send what is
/// noted in one statement.
async fn send_wake_ups(
    pool: PgPool,
    pending: Arc<Mutex<HashMap<RunId, i64>>>,
    mut rung: mpsc::Receiver<()>,
) {
    while rung.recv().await.is_some() {
        // Let the phases committing at the same moment note theirs too: one statement
        // wakes them all.
        tokio::time::sleep(GATHER_WAKE_UPS).await;
        let batch: Vec<(RunId, i64)> = lock(&pending).drain().collect();
        if batch.is_empty() {
            continue;
        }
        let sent = match pool.acquire().await {
            Ok(mut conn) => crate::store::events::events_wake_streams(&mut conn, &batch).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, runs = batch.len(), "waking live event streams failed; they poll");
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub phase: Option<String>,
    /// Unique per run: appending the same key again changes nothing.
    pub key: String,
    pub data: Value,
}

fn phase_event(kind: &'static str, phase: &str, key: String, data: Value) -> NewEvent {
    NewEvent {
        kind,
        phase: Some(phase.to_owned()),
        key,
        data,
    }
}

impl NewEvent {
    #[must_use]
    pub fn run_submitted(template: &str, template_hash: &str, phases: usize, team: &str) -> Self {
        Self {
            kind: "run.submitted",
            phase: None,
            key: "run.submitted".into(),
            data: json!({ "template": template, "template_hash": template_hash, "phases": phases, "team": team }),
        }
    }

    #[must_use]
    pub fn run_started() -> Self {
        Self {
            kind: "run.started",
            phase: None,
            key: "run.started".into(),
            data: json!({}),
        }
    }

    /// The run ended in `state`; a run an operator re-opened ends again under a new key.
    #[must_use]
    pub fn run_ended(state: RunState, error: Option<&str>, retries: i32) -> Self {
        let kind = match state {
            RunState::Completed => "run.completed",
            RunState::Failed => "run.failed",
            RunState::Aborted => "run.aborted",
            RunState::Cancelled => "run.cancelled",
            // Not an end; never built (the callers end runs only).
            RunState::Queued
            | RunState::Running
            | RunState::AwaitingApproval
            | RunState::AwaitingBudget => "run.ended",
        };
        Self {
            kind,
            phase: None,
            key: if retries == 0 {
                kind.to_owned()
            } else {
                format!("{kind}:retry{retries}")
            },
            data: json!({ "error": error }),
        }
    }

    #[must_use]
    pub fn run_retried(
        phase: &str,
        round: i32,
        retries: i32,
        previous_error: Option<&str>,
        by: Option<&str>,
    ) -> Self {
        phase_event(
            "run.retried",
            phase,
            format!("run.retried:{retries}"),
            json!({ "phase": phase, "round": round, "previous_error": previous_error, "by": by }),
        )
    }

    /// The budget ran out at `phase` (or `phase` stopped while the run already waited,
    /// and joins park number `park`); the run waits for a top-up.
    #[must_use]
    pub fn run_awaiting_budget(phase: &str, park: i32, reason: &str) -> Self {
        phase_event(
            "run.awaiting_budget",
            phase,
            format!("run.awaiting_budget:{park}:{phase}"),
            json!({ "reason": reason }),
        )
    }

    /// An approver raised the budget; the run resumes at `phase`.
    #[must_use]
    pub fn run_budget_raised(
        phase: &str,
        park: i32,
        usd: Option<f64>,
        tokens: Option<i64>,
        by: Option<&str>,
    ) -> Self {
        phase_event(
            "run.budget_raised",
            phase,
            format!("run.budget_raised:{park}"),
            json!({ "budget_usd": usd, "budget_tokens": tokens, "by": by }),
        )
    }

    #[must_use]
    pub fn phase_started(phase: &str, round: i32, attempt: i32) -> Self {
        phase_event(
            "phase.started",
            phase,
            format!("phase:{phase}:r{round}:a{attempt}:started"),
            json!({ "round": round, "attempt": attempt }),
        )
    }

    /// Attempt 1 of `round` was enqueued (the next phase, or a revision).
    #[must_use]
    pub fn phase_queued(phase: &str, round: i32, revise: bool) -> Self {
        let data = if revise {
            json!({ "revise": true })
        } else {
            json!({})
        };
        phase_event(
            "phase.queued",
            phase,
            format!("phase:{phase}:r{round}:queued"),
            data,
        )
    }

    /// A phase whose condition did not hold is skipped; the phases that need it go on.
    #[must_use]
    pub fn phase_skipped(phase: &str, round: i32, condition: &str) -> Self {
        phase_event(
            "phase.skipped",
            phase,
            format!("phase:{phase}:r{round}:skipped"),
            json!({ "round": round, "condition": condition, "held": false }),
        )
    }

    /// A fan-out phase started one item per element (`items` of them).
    #[must_use]
    pub fn phase_fanned_out(phase: &str, round: i32, items: usize, over: &str) -> Self {
        phase_event(
            "phase.fanned_out",
            phase,
            format!("phase:{phase}:r{round}:fanned_out"),
            json!({ "round": round, "items": items, "over": over }),
        )
    }

    #[must_use]
    pub fn phase_completed(phase: &str, round: i32) -> Self {
        phase_event(
            "phase.completed",
            phase,
            format!("phase:{phase}:r{round}:completed"),
            json!({ "round": round }),
        )
    }

    #[must_use]
    pub fn phase_failed(phase: &str, round: i32, attempt: i32, error: &str) -> Self {
        phase_event(
            "phase.failed",
            phase,
            format!("phase:{phase}:r{round}:a{attempt}:failed"),
            json!({ "error": error }),
        )
    }

    #[must_use]
    pub fn phase_repair_scheduled(phase: &str, round: i32, attempt: i32) -> Self {
        phase_event(
            "phase.repair_scheduled",
            phase,
            format!("phase:{phase}:r{round}:a{attempt}:repair"),
            json!({ "next_attempt": attempt + 1 }),
        )
    }

    /// An attempt's artifact was stored (`artifact.valid` or `artifact.invalid`).
    #[must_use]
    pub fn artifact_recorded(
        phase: &str,
        round: i32,
        attempt: i32,
        artifact: &RecordedArtifact<'_>,
    ) -> Self {
        phase_event(
            if artifact.valid {
                "artifact.valid"
            } else {
                "artifact.invalid"
            },
            phase,
            format!("phase:{phase}:r{round}:a{attempt}:artifact"),
            json!({ "artifact_id": artifact.id, "path": artifact.path, "sha256": artifact.sha256,
                    "files": artifact.files, "issues": artifact.issues }),
        )
    }

    /// `request_key` is the approval request's own idempotency key.
    #[must_use]
    pub fn approval_requested(
        phase: &str,
        approval: ApprovalId,
        gates: &[String],
        round: i32,
        request_key: &str,
    ) -> Self {
        phase_event(
            "approval.requested",
            phase,
            format!("approval:{request_key}"),
            json!({ "approval_id": approval, "gates": gates, "round": round }),
        )
    }

    #[must_use]
    pub fn approval_decided(
        phase: &str,
        approval: ApprovalId,
        action: &str,
        comment: Option<&str>,
        by: Option<&str>,
    ) -> Self {
        phase_event(
            "approval.decided",
            phase,
            format!("approval:{approval}:decided"),
            json!({ "approval_id": approval, "action": action, "comment": comment, "by": by }),
        )
    }

    /// The approval's deadline passed undecided and it went to `group`.
    #[must_use]
    pub fn approval_escalated(phase: &str, approval: ApprovalId, group: &str) -> Self {
        phase_event(
            "approval.escalated",
            phase,
            format!("approval:{approval}:escalated"),
            json!({ "approval_id": approval, "group": group }),
        )
    }

    /// A model HTTP attempt is about to be sent (its ledger row was just written).
    #[must_use]
    pub fn model_call_started(at: &CallSite<'_>, call_id: uuid::Uuid, model: &str) -> Self {
        phase_event(
            "model.call_started",
            at.phase,
            format!("model:{call_id}:started"),
            json!({ "call_id": call_id, "attempt": at.attempt, "turn": at.turn, "model": model }),
        )
    }

    /// A model HTTP attempt ended: its status, tokens, cost and latency.
    #[must_use]
    pub fn model_call_finished(
        at: &CallSite<'_>,
        call_id: uuid::Uuid,
        call: &CallSummary<'_>,
    ) -> Self {
        phase_event(
            "model.call_finished",
            at.phase,
            format!("model:{call_id}:finished"),
            json!({ "call_id": call_id, "attempt": at.attempt, "turn": at.turn, "model": call.model,
                    "status": call.status, "tokens_in": call.tokens_in, "tokens_out": call.tokens_out,
                    "cost_usd": call.cost_usd, "latency_ms": call.latency_ms }),
        )
    }

    /// The agent called a tool (`tool_call_id` is its row in the tool audit).
    #[must_use]
    pub fn tool_called(at: &CallSite<'_>, tool_call_id: i64, tool: &ToolSummary<'_>) -> Self {
        phase_event(
            "tool.called",
            at.phase,
            format!("tool:{tool_call_id}"),
            json!({ "tool_call_id": tool_call_id, "attempt": at.attempt, "turn": at.turn,
                    "tool": tool.name, "path": tool.path, "ok": tool.ok,
                    "bytes_in": tool.bytes_in, "bytes_out": tool.bytes_out }),
        )
    }
}

/// Where a model or tool call happened: the phase attempt and the agent's turn.
#[derive(Debug, Clone, Copy)]
pub struct CallSite<'a> {
    pub phase: &'a str,
    pub attempt: i32,
    pub turn: i32,
}

/// What `model.call_finished` says about a call.
#[derive(Debug, Clone, Copy)]
pub struct CallSummary<'a> {
    pub model: &'a str,
    pub status: &'a str,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub latency_ms: i64,
}

/// What `tool.called` says about a tool call: its name, the workspace path it named
/// (if any), whether it succeeded (`false`: refused or failed), and the size of its
/// arguments and of its answer in bytes.
#[derive(Debug, Clone, Copy)]
pub struct ToolSummary<'a> {
    pub name: &'a str,
    pub path: Option<&'a str>,
    pub ok: bool,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

/// What the `artifact.*` events say about a stored artifact.
#[derive(Debug, Clone, Copy)]
pub struct RecordedArtifact<'a> {
    pub id: i64,
    /// `None` for a phase whose output is files.
    pub path: Option<&'a str>,
    /// How many files the attempt wrote.
    pub files: usize,
    pub sha256: Option<&'a str>,
    pub valid: bool,
    pub issues: &'a Value,
}

/// An event as read back.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Event {
    pub seq: i64,
    pub kind: String,
    pub phase_key: Option<String>,
    pub data: Value,
    pub created_at: DateTime<Utc>,
}
