//! Moving a run forward after a phase is accepted (validated, or approved): enqueue the
//! next phase, or complete the run; and ending a run in any terminal state with its
//! report. Always called inside the caller's transaction, with the run row locked; the
//! events go into the caller's batch (appended once, at the end of the transaction).

use crate::events::NewEvent;
use crate::phase_job::PhaseJob;
use crate::queue::QueueError;
use crate::report;
use crate::state::{PhaseState, RunState};
use crate::store::StoreError;
use crate::store::run_phases::{self, PhaseRow};
use crate::store::runs::{self, RunRow};

use sqlx::PgConnection;

#[derive(Debug, thiserror::Error)]
pub enum AdvanceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// A run read under its lock, with its phases, and the events the transaction appends.
pub struct LockedRun {
    pub run: RunRow,
    pub phases: Vec<PhaseRow>,
    pub events: Vec<NewEvent>,
}

impl LockedRun {
    #[must_use]
    pub fn new(run: RunRow, phases: Vec<PhaseRow>) -> Self {
        Self {
            run,
            phases,
            events: Vec::new(),
        }
    }

    /// The phase `key`, as read under the lock (and changed since, through `self`).
    #[must_use]
    pub fn phase(&self, key: &str) -> Option<&PhaseRow> {
        self.phases.iter().find(|p| p.phase_key == key)
    }

    /// Move the run to `next` (checked against the transition table).
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn set_state(
        &mut self,
        conn: &mut PgConnection,
        next: RunState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.run = runs::runs_set_state(conn, &self.run, next, error).await?;
        Ok(())
    }

    /// Move phase `key` to `next` (checked against the transition table).
    ///
    /// # Errors
    /// [`StoreError`]; a phase the run does not have is [`StoreError::Stale`].
    pub async fn set_phase_state(
        &mut self,
        conn: &mut PgConnection,
        key: &str,
        next: PhaseState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let phase = self
            .phases
            .iter_mut()
            .find(|p| p.phase_key == key)
            .ok_or(StoreError::Stale("phase"))?;
        run_phases::run_phases_set_state(conn, self.run.id, phase, next, error).await?;
        phase.state = next;
        phase.error = error.map(str::to_owned);
        Ok(())
    }

    /// Append the collected events (one statement).
    ///
    /// # Errors
    /// Database errors.
    pub async fn flush_events(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let events = std::mem::take(&mut self.events);
        crate::store::events::events_append(conn, self.run.id, &events).await?;
        Ok(())
    }
}

/// Mark `phase` completed and start the next phase, or complete the run.
///
/// # Errors
/// [`AdvanceError`].
pub async fn phase_accepted(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    key: &str,
) -> Result<(), AdvanceError> {
    let run_id = locked.run.id;
    locked
        .set_phase_state(conn, key, PhaseState::Completed, None)
        .await?;
    let (position, round) = locked
        .phase(key)
        .map(|p| (p.position, p.round))
        .ok_or(StoreError::Stale("phase"))?;
    locked.events.push(NewEvent::phase_completed(key, round));
    let next = locked
        .phases
        .iter()
        .filter(|p| p.position > position)
        .min_by_key(|p| p.position)
        .cloned();
    match next {
        Some(next) => {
            if locked.run.state != RunState::Running {
                locked.set_state(conn, RunState::Running, None).await?;
            }
            PhaseJob::first_attempt(
                run_id,
                &next.phase_key,
                next.round,
                next.requires.as_deref(),
            )
            .enqueue(conn, &locked.run.queue)
            .await?;
            locked
                .events
                .push(NewEvent::phase_queued(&next.phase_key, next.round, false));
        }
        None => end_run(conn, locked, RunState::Completed, None).await?,
    }
    Ok(())
}

/// Fail the attempt `p` of its phase (when the phase's state allows it), with its
/// event, and end the run as failed.
///
/// # Errors
/// Store, queue and database errors.
pub async fn fail_phase_and_run(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    p: &PhaseJob,
    error: &str,
) -> Result<(), AdvanceError> {
    if locked
        .phase(&p.phase)
        .is_some_and(|ph| ph.state.can_become(PhaseState::Failed))
    {
        locked
            .set_phase_state(conn, &p.phase, PhaseState::Failed, Some(error))
            .await?;
        locked
            .events
            .push(NewEvent::phase_failed(&p.phase, p.round, p.attempt, error));
    }
    end_run(conn, locked, RunState::Failed, Some(error)).await
}

/// End the run in `state` (completed, failed, aborted or cancelled): skip unfinished
/// phases, cancel its remaining jobs (a running one's worker is told at commit), record
/// the event and store the report.
///
/// # Errors
/// [`AdvanceError`].
pub async fn end_run(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    state: RunState,
    error: Option<&str>,
) -> Result<(), AdvanceError> {
    let run_id = locked.run.id;
    locked.set_state(conn, state, error).await?;
    let mut unfinished = false;
    for p in &mut locked.phases {
        if p.state.can_become(PhaseState::Skipped) {
            p.state = PhaseState::Skipped;
            unfinished = true;
        }
    }
    if unfinished {
        run_phases::run_phases_skip_unfinished(conn, run_id).await?;
    }
    // A run completes only when its last phase was accepted: no other job is left.
    if state != RunState::Completed {
        crate::queue::cancel_run_jobs(conn, run_id).await?;
    }
    locked
        .events
        .push(NewEvent::run_ended(state, error, locked.run.retries));
    report::compose_and_store(conn, run_id).await?;
    tracing::info!(run_id = %run_id, state = state.as_str(), "run ended");
    Ok(())
}
