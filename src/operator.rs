//! Operator actions on the fleet: pause and resume a queue, drain and undrain workers,
//! requeue and cancel jobs. The API (and the web UI through it) and the CLI take them
//! through [`perform`], which records each one in the audit (`operator_actions`): a
//! done action in the same transaction as its effect, a refused one with why.

use crate::ids::{JobId, WorkerId};
use crate::queue::{self, QueueError};
use crate::store::operator_actions::{self, NewOperatorAction};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

/// Who acts, and through what.
#[derive(Debug, Clone, Copy)]
pub struct Operator<'a> {
    /// The API token's label, or `cli:<user>@<host>`.
    pub actor: &'a str,
    pub via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Api,
    Cli,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Cli => "cli",
        }
    }
}

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum OperatorAction {
    /// Stop claiming on a queue (`*`: every queue); running jobs finish.
    PauseQueue {
        #[schema(pattern = r"^([A-Za-z0-9_.-]{1,64}|\*)$")]
        queue: String,
        /// Shown beside the pause (at most 500 characters).
        #[schema(max_length = 500)]
        reason: Option<String>,
    },
    ResumeQueue {
        #[schema(pattern = r"^([A-Za-z0-9_.-]{1,64}|\*)$")]
        queue: String,
    },
    /// Ask one worker (or every live one, without `worker`) to stop claiming and
    /// finish what it holds.
    DrainWorkers {
        worker: Option<WorkerId>,
    },
    UndrainWorkers {
        worker: Option<WorkerId>,
    },
    /// A dead, cancelled or waiting job back to ready with a fresh attempt budget.
    RequeueJob {
        job: JobId,
    },
    /// Every dead job of a queue back to ready.
    RequeueDead {
        #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
        queue: String,
    },
    /// Return every job whose lease expired to ready now.
    RescueStuck,
    CancelJob {
        job: JobId,
    },
}

impl OperatorAction {
    /// The action's name in the audit.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::PauseQueue { .. } => "pause_queue",
            Self::ResumeQueue { .. } => "resume_queue",
            Self::DrainWorkers { .. } => "drain_workers",
            Self::UndrainWorkers { .. } => "undrain_workers",
            Self::RequeueJob { .. } => "requeue_job",
            Self::RequeueDead { .. } => "requeue_dead",
            Self::RescueStuck => "rescue_stuck",
            Self::CancelJob { .. } => "cancel_job",
        }
    }

    /// What it acts on, as the audit shows it.
    #[must_use]
    pub fn target(&self) -> String {
        match self {
            Self::PauseQueue { queue, .. }
            | Self::ResumeQueue { queue }
            | Self::RequeueDead { queue } => queue.clone(),
            Self::DrainWorkers { worker } | Self::UndrainWorkers { worker } => {
                worker.map_or_else(|| "all".to_owned(), |w| w.to_string())
            }
            Self::RequeueJob { job } | Self::CancelJob { job } => job.to_string(),
            Self::RescueStuck => "all".to_owned(),
        }
    }
}

/// What an action did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    /// Its row in the audit.
    pub audit_id: i64,
    pub action: String,
    pub target: String,
    /// In words, as the audit shows it.
    pub result: String,
    /// The jobs it changed.
    pub jobs: Vec<JobId>,
    /// The workers it asked.
    pub workers: Vec<WorkerId>,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("no live worker {0}")]
    NoSuchWorker(WorkerId),
    #[error("no live worker to ask")]
    NoLiveWorker,
    #[error("queue name must be 1-64 characters of letters, digits, '_', '.', '-' (or '*')")]
    BadQueue,
    #[error("a pause reason is at most 500 characters")]
    ReasonTooLong,
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// What [`apply`] changed.
#[derive(Default)]
struct Done {
    result: String,
    jobs: Vec<JobId>,
    workers: Vec<WorkerId>,
}

/// Take `action` as `who` and record it. A refused action changes nothing and is
/// recorded with its reason (unless the database itself is unreachable).
///
/// # Errors
/// [`OperatorError`] saying why the action was refused.
pub async fn perform(
    pool: &PgPool,
    who: Operator<'_>,
    action: &OperatorAction,
) -> Result<Outcome, OperatorError> {
    let mut tx = pool.begin().await?;
    match apply(&mut tx, action).await {
        Ok(done) => {
            let audit_id = audit(&mut tx, who, action, true, &done.result).await?;
            tx.commit().await?;
            Ok(Outcome {
                audit_id,
                action: action.name().to_owned(),
                target: action.target(),
                result: done.result,
                jobs: done.jobs,
                workers: done.workers,
            })
        }
        Err(refused) => {
            drop(tx);
            let recorded = async {
                let mut conn = pool.acquire().await?;
                audit(&mut conn, who, action, false, &refused.to_string()).await
            };
            if let Err(e) = recorded.await {
                tracing::warn!(error = %e, action = action.name(), "a refused operator action could not be audited");
            }
            Err(refused)
        }
    }
}

/// Record an action taken outside [`perform`] (re-opening a run, pruning).
///
/// # Errors
/// Database errors.
pub async fn record(
    pool: &PgPool,
    who: Operator<'_>,
    action: &str,
    target: Option<&str>,
    result: Result<&str, &str>,
) -> Result<i64, sqlx::Error> {
    let (ok, text) = match result {
        Ok(t) => (true, t),
        Err(t) => (false, t),
    };
    let mut conn = pool.acquire().await?;
    operator_actions::operator_actions_insert(
        &mut conn,
        &NewOperatorAction {
            actor: who.actor,
            via: who.via.as_str(),
            action,
            target,
            ok,
            result: text,
            detail: &serde_json::json!({}),
        },
    )
    .await
}

async fn audit(
    conn: &mut PgConnection,
    who: Operator<'_>,
    action: &OperatorAction,
    ok: bool,
    result: &str,
) -> Result<i64, sqlx::Error> {
    let detail = serde_json::to_value(action).unwrap_or_default();
    operator_actions::operator_actions_insert(
        conn,
        &NewOperatorAction {
            actor: who.actor,
            via: who.via.as_str(),
            action: action.name(),
            target: Some(&action.target()),
            ok,
            result,
            detail: &detail,
        },
    )
    .await
}

fn valid_queue(queue: &str) -> Result<(), OperatorError> {
    let ok = queue == "*"
        || (!queue.is_empty()
            && queue.len() <= 64
            && queue
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
    if ok {
        Ok(())
    } else {
        Err(OperatorError::BadQueue)
    }
}

async fn apply(conn: &mut PgConnection, action: &OperatorAction) -> Result<Done, OperatorError> {
    match action {
        OperatorAction::PauseQueue { queue: q, reason } => {
            valid_queue(q)?;
            if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
                return Err(OperatorError::ReasonTooLong);
            }
            queue::pause(conn, q, reason.as_deref()).await?;
            Ok(said(format!("paused {q}")))
        }
        OperatorAction::ResumeQueue { queue: q } => {
            valid_queue(q)?;
            let was = queue::resume(conn, q).await?;
            Ok(said(if was {
                format!("resumed {q}")
            } else {
                format!("{q} was not paused")
            }))
        }
        OperatorAction::DrainWorkers { worker } => ask_workers(conn, *worker, true).await,
        OperatorAction::UndrainWorkers { worker } => ask_workers(conn, *worker, false).await,
        OperatorAction::RequeueJob { job } => {
            queue::requeue(conn, *job).await?;
            Ok(jobs_changed(format!("job {job} requeued"), vec![*job]))
        }
        OperatorAction::RequeueDead { queue: q } => {
            if q == "*" {
                return Err(OperatorError::BadQueue);
            }
            valid_queue(q)?;
            let ids = queue::requeue_dead(conn, q, false).await?;
            Ok(jobs_changed(
                format!("{} dead job(s) of {q} requeued", ids.len()),
                ids,
            ))
        }
        OperatorAction::RescueStuck => {
            let ids: Vec<JobId> = queue::rescue_expired(conn, 10_000)
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
            Ok(jobs_changed(
                format!("{} stuck job(s) rescued", ids.len()),
                ids,
            ))
        }
        OperatorAction::CancelJob { job } => {
            let text = match queue::cancel(conn, *job).await? {
                queue::CancelOutcome::Cancelled => format!("job {job} cancelled"),
                queue::CancelOutcome::Requested => {
                    format!("cancel of running job {job} requested; its worker stops it")
                }
                queue::CancelOutcome::AlreadyFinished(s) => {
                    format!("job {job} had already finished ({})", s.as_str())
                }
            };
            Ok(jobs_changed(text, vec![*job]))
        }
    }
}

fn said(result: String) -> Done {
    Done {
        result,
        ..Done::default()
    }
}

fn jobs_changed(result: String, jobs: Vec<JobId>) -> Done {
    Done {
        result,
        jobs,
        ..Done::default()
    }
}

async fn ask_workers(
    conn: &mut PgConnection,
    worker: Option<WorkerId>,
    drain: bool,
) -> Result<Done, OperatorError> {
    let ids = if drain {
        queue::workers::drain(conn, worker).await?
    } else {
        queue::workers::undrain(conn, worker).await?
    };
    if ids.is_empty() {
        return Err(worker.map_or(OperatorError::NoLiveWorker, OperatorError::NoSuchWorker));
    }
    let verb = if drain {
        "drain requested"
    } else {
        "drain lifted"
    };
    Ok(Done {
        result: format!("{verb} for {} worker(s)", ids.len()),
        workers: ids,
        ..Done::default()
    })
}
