//! Budgets that never fail open and never dead-end: a run whose USD or token budget
//! runs out (before an attempt, or between two model calls) is parked as
//! `awaiting_budget`, keeping the phase job it stopped at (and the jobs of parallel
//! branches that stop while it waits). An approver raises the budget (the jobs are
//! enqueued again and the attempts resume) or aborts the run.

use crate::advance::{self, LockedRun};
use crate::events::NewEvent;
use crate::ids::RunId;
use crate::phase_job::PhaseJob;
use crate::queue::QueueError;
use crate::state::{PhaseState, RunState};
use crate::store::{StoreError, runs};
use crate::teams::Scope;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// A run's limits and spend.
#[derive(Debug, Clone, Copy)]
pub struct Spend {
    pub budget_usd: Option<f64>,
    pub spent_usd: f64,
    pub budget_tokens: Option<i64>,
    pub spent_tokens: i64,
}

impl Spend {
    /// What is spent out, in words ("spent $0.0010 of $0.0010"); `None` while both
    /// limits hold.
    #[must_use]
    pub fn exhausted(&self) -> Option<String> {
        if let Some(limit) = self.budget_usd.filter(|l| self.spent_usd >= *l) {
            return Some(format!("spent ${:.4} of ${limit:.4}", self.spent_usd));
        }
        self.budget_tokens
            .filter(|l| self.spent_tokens >= *l)
            .map(|limit| format!("spent {} of {limit} tokens", self.spent_tokens))
    }
}

impl From<&runs::RunRow> for Spend {
    fn from(r: &runs::RunRow) -> Self {
        Self {
            budget_usd: r.budget_usd,
            spent_usd: r.spent_usd,
            budget_tokens: r.budget_tokens,
            spent_tokens: r.spent_tokens,
        }
    }
}

impl From<&runs::BudgetRow> for Spend {
    fn from(r: &runs::BudgetRow) -> Self {
        Self {
            budget_usd: r.budget_usd,
            spent_usd: r.spent_usd,
            budget_tokens: r.budget_tokens,
            spent_tokens: r.spent_tokens,
        }
    }
}

/// What an approver decides for a run awaiting budget.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "action")]
#[schema(example = json!({"action": "raise", "usd": 5.0}))]
pub enum BudgetDecision {
    /// New limits (either may stay as it is); each must exceed what was spent.
    Raise {
        #[schema(exclusive_minimum = 0.0)]
        usd: Option<f64>,
        #[schema(minimum = 1)]
        tokens: Option<i64>,
    },
    Abort {
        #[schema(max_length = 2000)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum BudgetOutcome {
    /// The limits changed; `resumed` when a parked run went back to work.
    Raised {
        resumed: bool,
    },
    Aborted,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("run {0} not found")]
    NotFound(RunId),
    #[error("run {run} is {state}; only a run that has not ended has a budget to change")]
    Ended { run: RunId, state: &'static str },
    #[error("run {run} is {state}; only a run awaiting budget can be aborted here")]
    NotParked { run: RunId, state: &'static str },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

crate::from_advance_error!(BudgetError);

/// An abort's reason is stored with the run's error: at most 2000 characters, no NUL.
fn check_reason(reason: &str) -> Result<(), BudgetError> {
    let message = if reason.contains('\0') {
        "contains a NUL character (\\u0000), which cannot be stored"
    } else if reason.chars().count() > 2000 {
        "longer than 2000 characters"
    } else {
        return Ok(());
    };
    Err(BudgetError::Invalid {
        field: "reason",
        message: message.into(),
    })
}

/// Park the locked run for budget at `job` (inside the caller's transaction): its
/// phase, if an attempt was under way, goes back to pending; the run waits.
///
/// # Errors
/// Store and database errors.
pub async fn park(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    job: &PhaseJob,
    reason: &str,
) -> Result<(), StoreError> {
    if locked
        .phase(&job.phase)
        .is_some_and(|p| p.state == PhaseState::Running)
    {
        locked
            .set_phase_state(conn, &job.phase, PhaseState::Pending, None)
            .await?;
    }
    let parked = serde_json::to_value(job).unwrap_or_default();
    // A branch that stops while the run waits already joins the same park.
    let again = locked.run.state == RunState::AwaitingBudget;
    if !again {
        locked
            .set_state(conn, RunState::AwaitingBudget, Some(reason))
            .await?;
    }
    let park = runs::runs_park_for_budget(conn, locked.run.id, &parked, !again).await?;
    locked
        .events
        .push(NewEvent::run_awaiting_budget(&job.phase, park, reason));
    tracing::info!(run_id = %locked.run.id, phase = %job.phase, reason, "run awaits budget");
    Ok(())
}

/// Raise the budget of a run (resuming it when it was parked), or abort a parked run.
///
/// # Errors
/// [`BudgetError`]; a refused request changes nothing.
pub async fn decide(
    pool: &PgPool,
    scope: &Scope,
    run_id: RunId,
    decision: &BudgetDecision,
    by: Option<&str>,
) -> Result<BudgetOutcome, BudgetError> {
    if let BudgetDecision::Abort { reason: Some(r) } = decision {
        check_reason(r)?;
    }
    let mut tx = pool.begin().await?;
    let (run, phases) = runs::runs_lock_with_phases(&mut tx, run_id)
        .await?
        .filter(|(run, _)| scope.sees(&run.team))
        .ok_or(BudgetError::NotFound(run_id))?;
    if run.state.is_terminal() {
        return Err(BudgetError::Ended {
            run: run_id,
            state: run.state.as_str(),
        });
    }
    let mut locked = LockedRun::new(run, phases);
    let outcome = match decision {
        BudgetDecision::Raise { usd, tokens } => {
            raise(&mut tx, &mut locked, *usd, *tokens, by).await?
        }
        BudgetDecision::Abort { reason } => {
            if locked.run.state != RunState::AwaitingBudget {
                return Err(BudgetError::NotParked {
                    run: run_id,
                    state: locked.run.state.as_str(),
                });
            }
            let who = by.unwrap_or("an approver");
            let because = reason
                .as_deref()
                .map_or_else(String::new, |r| format!(": {r}"));
            let error = format!("aborted awaiting budget by {who}{because}");
            advance::end_run(&mut tx, &mut locked, RunState::Aborted, Some(&error)).await?;
            BudgetOutcome::Aborted
        }
    };
    locked.flush_events(&mut tx).await?;
    tx.commit().await?;
    Ok(outcome)
}

fn check_limits(
    run: &runs::RunRow,
    usd: Option<f64>,
    tokens: Option<i64>,
) -> Result<(), BudgetError> {
    if usd.is_none() && tokens.is_none() {
        return Err(BudgetError::Invalid {
            field: "usd",
            message: "give a new USD or token limit".into(),
        });
    }
    if let Some(u) = usd.filter(|u| !(u.is_finite() && *u > run.spent_usd)) {
        return Err(BudgetError::Invalid {
            field: "usd",
            message: format!(
                "${u} does not exceed the ${:.4} already spent",
                run.spent_usd
            ),
        });
    }
    if let Some(t) = tokens.filter(|t| *t <= run.spent_tokens) {
        return Err(BudgetError::Invalid {
            field: "tokens",
            message: format!(
                "{t} does not exceed the {} tokens already spent",
                run.spent_tokens
            ),
        });
    }
    Ok(())
}

/// The jobs a park holds: a list (an earlier release kept one job as an object).
fn parked_jobs(parked: Option<serde_json::Value>) -> Result<Vec<PhaseJob>, StoreError> {
    let list = match parked {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(list)) => list,
        Some(one) => vec![one],
    };
    list.into_iter()
        .map(|j| {
            serde_json::from_value(j)
                .map_err(|e| StoreError::Corrupt(format!("parked job does not parse: {e}")))
        })
        .collect()
}

async fn raise(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    usd: Option<f64>,
    tokens: Option<i64>,
    by: Option<&str>,
) -> Result<BudgetOutcome, BudgetError> {
    check_limits(&locked.run, usd, tokens)?;
    let (parked, park) = runs::runs_set_budget(conn, locked.run.id, usd, tokens).await?;
    let jobs = parked_jobs(parked)?;
    if locked.run.state != RunState::AwaitingBudget || jobs.is_empty() {
        return Ok(BudgetOutcome::Raised { resumed: false });
    }
    // Still out of the other kind of budget: stay parked, with the jobs kept.
    let raised = Spend {
        budget_usd: usd.or(locked.run.budget_usd),
        budget_tokens: tokens.or(locked.run.budget_tokens),
        ..Spend::from(&locked.run)
    };
    if raised.exhausted().is_some() {
        // One job as an object, more as a list (an earlier release reads the object).
        let kept = match jobs.as_slice() {
            [one] => serde_json::to_value(one),
            many => serde_json::to_value(many),
        };
        runs::runs_keep_parked(conn, locked.run.id, &kept.unwrap_or_default()).await?;
        return Ok(BudgetOutcome::Raised { resumed: false });
    }
    locked.set_state(conn, RunState::Running, None).await?;
    for mut job in jobs.iter().cloned() {
        job.resume = park;
        job.enqueue(conn, &locked.run.queue).await?;
    }
    locked.events.push(NewEvent::run_budget_raised(
        &jobs[0].phase,
        park,
        usd,
        tokens,
        by,
    ));
    Ok(BudgetOutcome::Raised { resumed: true })
}
