//! Moving a run forward after a phase is accepted (validated, or approved): start the
//! phases it was the last need of (`schedule.rs`: conditions, fan-outs, the join of a
//! fan-out's items), settle the run's state from its phases, or complete the run; and
//! ending a run in any terminal state with its report. Always called inside the
//! caller's transaction, with the run row locked (so two workers accepting the last two
//! needs of a join at the same instant take turns, and only the second sees the join
//! ready); the events go into the caller's batch (appended once, at the end of the
//! transaction).

mod schedule;

pub use schedule::{enqueue_first_attempt, start_ready};

use crate::events::NewEvent;
use crate::phase_job::PhaseJob;
use crate::queue::QueueError;
use crate::report;
use crate::state::{PhaseState, RunState};
use crate::store::StoreError;
use crate::store::run_phases::{self, PhaseRow, PhaseWrite};
use crate::store::runs::{self, RunRow};

use crate::workflow::WorkflowTemplate;
use sqlx::PgConnection;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AdvanceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// `From<AdvanceError>` for a flow's error enum that has the same three variants
/// (`Queue`, `Store`, `Db`): what advancing a run can fail with passes through as is.
#[macro_export]
macro_rules! from_advance_error {
    ($error:ty) => {
        impl From<$crate::advance::AdvanceError> for $error {
            fn from(e: $crate::advance::AdvanceError) -> Self {
                match e {
                    $crate::advance::AdvanceError::Queue(q) => Self::Queue(q),
                    $crate::advance::AdvanceError::Store(s) => Self::Store(s),
                    $crate::advance::AdvanceError::Db(d) => Self::Db(d),
                }
            }
        }
    };
}

/// A run read under its lock, with its phases, and the events the transaction appends.
pub struct LockedRun {
    pub run: RunRow,
    pub phases: Vec<PhaseRow>,
    pub events: Vec<NewEvent>,
    /// The run's template, once read (see [`LockedRun::template`]).
    template: Option<Arc<WorkflowTemplate>>,
    /// A phase job's offer to go on with an attempt this transaction makes due.
    hand_over: Option<HandOverOffer>,
    /// Phase rows changed in memory and not yet written, when the transaction holds
    /// them back ([`LockedRun::defer_phase_writes`]).
    phase_writes: Option<Vec<PhaseWrite>>,
}

/// When a transaction writes events, whether live streams are notified in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WakeStreams {
    /// A NOTIFY in the appending transaction (delivered at its commit).
    InTransaction,
    /// The caller wakes them after its commit ([`crate::events::StreamWakeUps`]).
    AfterCommit,
}

/// A worker's offer, made by the phase job that holds the run's lock, to go on itself
/// with the next attempt the transaction makes due (`queue::hand_over`). Only when the
/// transaction makes exactly one attempt due, and one the worker can run: parallel
/// branches are all enqueued, so that they run side by side on any workers.
struct HandOverOffer {
    /// What the worker can serve (a job that requires something else is enqueued).
    capabilities: Vec<String>,
    taken: Option<PhaseJob>,
    /// A second attempt became due (or one the worker cannot run): none is kept.
    declined: bool,
}

impl LockedRun {
    #[must_use]
    pub fn new(run: RunRow, phases: Vec<PhaseRow>) -> Self {
        Self {
            run,
            phases,
            events: Vec::new(),
            template: None,
            hand_over: None,
            phase_writes: None,
        }
    }

    /// Hold the phase rows' changes back until the events are written, and write them
    /// with the events in one statement ([`Self::flush_events_wake_after_commit`]). What
    /// reads the phase rows' states or writes them otherwise in the transaction writes
    /// them first ([`Self::flush_phase_writes`]: ending the run, a new round); a read in
    /// between must not take states from the rows (take them from `self.phases`).
    #[must_use]
    pub fn defer_phase_writes(mut self) -> Self {
        self.phase_writes = Some(Vec::new());
        self
    }

    /// Write the phase rows' changes held back so far (one statement, none when there
    /// are none).
    ///
    /// # Errors
    /// [`StoreError::Stale`] when a row changed under the lock; database errors.
    pub async fn flush_phase_writes(&mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let Some(writes) = self.phase_writes.as_mut().filter(|w| !w.is_empty()) else {
            return Ok(());
        };
        let writes = std::mem::take(writes);
        run_phases::run_phases_write_many(conn, self.run.id, &writes).await
    }

    /// The keys of the phases completed, as this transaction sees them.
    #[must_use]
    pub fn completed_phase_keys(&self) -> Vec<String> {
        self.phases
            .iter()
            .filter(|p| p.state == PhaseState::Completed)
            .map(|p| p.phase_key.clone())
            .collect()
    }

    /// Offer to go on with the first attempt this transaction makes due that a worker
    /// with `capabilities` can run (see [`LockedRun::enqueue_attempt`]).
    pub fn offer_hand_over(&mut self, capabilities: Vec<String>) {
        self.hand_over = Some(HandOverOffer {
            capabilities,
            taken: None,
            declined: false,
        });
    }

    /// The attempt kept for the offering worker, if any; the offer ends.
    pub fn take_handed_over(&mut self) -> Option<PhaseJob> {
        self.hand_over.take().and_then(|offer| offer.taken)
    }

    /// Make `job` due: kept for the worker that offered to go on with it, or enqueued on
    /// the run's queue.
    ///
    /// # Errors
    /// [`QueueError`] from the enqueue.
    pub async fn enqueue_attempt(
        &mut self,
        conn: &mut PgConnection,
        job: PhaseJob,
    ) -> Result<(), QueueError> {
        if let Some(offer) = self.hand_over.as_mut().filter(|o| !o.declined) {
            let runnable = job
                .requires
                .as_ref()
                .is_none_or(|r| offer.capabilities.contains(r));
            if runnable && offer.taken.is_none() {
                offer.taken = Some(job);
                return Ok(());
            }
            offer.declined = true;
            if let Some(kept) = offer.taken.take() {
                kept.enqueue(conn, &self.run.queue).await?;
            }
        }
        job.enqueue(conn, &self.run.queue).await
    }

    /// The same, with the run's template already read (a phase job has it).
    #[must_use]
    pub fn with_template(mut self, template: Arc<WorkflowTemplate>) -> Self {
        self.template = Some(template);
        self
    }

    /// The run's template (read from the database once per transaction).
    ///
    /// # Errors
    /// Database errors; a stored template that does not parse is [`StoreError::Corrupt`].
    pub async fn template(
        &mut self,
        conn: &mut PgConnection,
    ) -> Result<Arc<WorkflowTemplate>, StoreError> {
        if let Some(t) = &self.template {
            return Ok(t.clone());
        }
        let body =
            crate::store::templates::templates_get_body(conn, &self.run.template_hash).await?;
        let template: WorkflowTemplate = serde_json::from_value(body)
            .map_err(|e| StoreError::Corrupt(format!("template does not parse: {e}")))?;
        let template = Arc::new(template);
        self.template = Some(template.clone());
        Ok(template)
    }

    /// Whether every phase `row` needs is accepted or skipped.
    #[must_use]
    pub fn needs_met(&self, row: &PhaseRow) -> bool {
        row.needs_in(&self.phases).iter().all(|need| {
            self.phase(need)
                .is_some_and(|p| matches!(p.state, PhaseState::Completed | PhaseState::Skipped))
        })
    }

    /// The pending top-level phases that need `key` and whose needs are all met now.
    #[must_use]
    pub fn ready_dependents(&self, key: &str) -> Vec<String> {
        self.phases
            .iter()
            .filter(|p| p.parent.is_none() && p.state == PhaseState::Pending)
            .filter(|p| p.needs_in(&self.phases).iter().any(|n| n == key) && self.needs_met(p))
            .map(|p| p.phase_key.clone())
            .collect()
    }

    /// The items of fan-out phase `key`, in order.
    pub fn items_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a PhaseRow> + 'a {
        self.phases
            .iter()
            .filter(move |p| p.parent.as_deref() == Some(key))
    }

    /// Whether some phase is queued or running: an attempt that is not a fan-out phase
    /// (whose items do the work), or a pending phase whose needs are met (its job
    /// waits on the queue).
    #[must_use]
    pub fn has_active_phase(&self) -> bool {
        self.phases.iter().any(|p| match p.state {
            PhaseState::Running => self.items_of(&p.phase_key).next().is_none(),
            PhaseState::Pending => match &p.parent {
                Some(parent) => self
                    .phase(parent)
                    .is_some_and(|f| f.state == PhaseState::Running),
                None => self.needs_met(p),
            },
            _ => false,
        })
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
        let phase = phase_mut(&mut self.phases, key)?;
        match self.phase_writes.as_mut() {
            Some(writes) => {
                phase.state.check_becomes(next)?;
                hold_back(writes, phase, next, None, error);
            }
            None => run_phases::run_phases_set_state(conn, self.run.id, phase, next, error).await?,
        }
        phase.state = next;
        phase.error = error.map(str::to_owned);
        Ok(())
    }

    /// Start attempt `attempt` of phase `key`: it becomes running with that attempt
    /// count (checked against the transition table).
    ///
    /// # Errors
    /// [`StoreError`]; a phase the run does not have is [`StoreError::Stale`].
    pub async fn start_attempt(
        &mut self,
        conn: &mut PgConnection,
        key: &str,
        attempt: i32,
    ) -> Result<(), StoreError> {
        let phase = phase_mut(&mut self.phases, key)?;
        match self.phase_writes.as_mut() {
            Some(writes) => {
                phase.state.check_becomes(PhaseState::Running)?;
                hold_back(writes, phase, PhaseState::Running, Some(attempt), None);
            }
            None => {
                run_phases::run_phases_start_attempt(conn, self.run.id, phase, attempt).await?;
            }
        }
        phase.state = PhaseState::Running;
        phase.attempts = attempt;
        phase.error = None;
        Ok(())
    }

    /// Start a new round of phase `key` (a revision with the reviewer's `comment`, or
    /// an operator's retry): it becomes pending with no attempts. Returns the round.
    ///
    /// # Errors
    /// [`StoreError`]; a phase the run does not have is [`StoreError::Stale`].
    pub async fn new_round(
        &mut self,
        conn: &mut PgConnection,
        key: &str,
        comment: Option<&str>,
    ) -> Result<i32, StoreError> {
        self.flush_phase_writes(conn).await?;
        let phase = phase_mut(&mut self.phases, key)?;
        let round = run_phases::run_phases_new_round(conn, self.run.id, phase, comment).await?;
        phase.state = PhaseState::Pending;
        phase.round = round;
        phase.attempts = 0;
        phase.error = None;
        phase.revise_comment = comment.map(str::to_owned);
        Ok(round)
    }

    /// Append the collected events (one statement), and enqueue a notification job for
    /// each one a webhook may be told of (`crate::webhooks`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn flush_events(&mut self, conn: &mut PgConnection) -> Result<(), AdvanceError> {
        self.append_events(conn, WakeStreams::InTransaction).await?;
        Ok(())
    }

    /// [`Self::flush_events`] without waking live streams: the caller announces the
    /// returned last seq after its commit (`crate::events::StreamWakeUps`).
    ///
    /// # Errors
    /// Database errors.
    pub async fn flush_events_wake_after_commit(
        &mut self,
        conn: &mut PgConnection,
    ) -> Result<Option<i64>, AdvanceError> {
        let appended = self.append_events(conn, WakeStreams::AfterCommit).await?;
        Ok(appended.iter().map(|a| a.seq).max())
    }

    async fn append_events(
        &mut self,
        conn: &mut PgConnection,
        wake: WakeStreams,
    ) -> Result<Vec<crate::store::events::Appended>, AdvanceError> {
        use crate::store::events::{events_append, events_append_with_phase_writes};
        let events = std::mem::take(&mut self.events);
        let appended = match wake {
            WakeStreams::InTransaction => {
                self.flush_phase_writes(conn).await?;
                events_append(conn, self.run.id, &events).await?
            }
            WakeStreams::AfterCommit => {
                let writes = self
                    .phase_writes
                    .as_mut()
                    .map(std::mem::take)
                    .unwrap_or_default();
                events_append_with_phase_writes(conn, self.run.id, &events, &writes).await?
            }
        };
        crate::webhooks::enqueue_notifications(conn, &self.run.queue, self.run.id, &appended)
            .await?;
        Ok(appended)
    }
}

/// Mark `key` completed (an item's last sibling completes its fan-out phase too), start
/// the phases that were waiting on it, and settle the run: running, awaiting approval
/// (nothing else can move), or completed (every phase accepted or skipped).
///
/// # Errors
/// [`AdvanceError`].
pub async fn phase_accepted(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    key: &str,
) -> Result<(), AdvanceError> {
    let row = complete_phase(conn, locked, key).await?;
    // 1. An item completes its fan-out when its siblings are all completed.
    let accepted = match row.parent {
        Some(parent) => {
            if !locked
                .items_of(&parent)
                .all(|i| i.state == PhaseState::Completed)
            {
                return settle(conn, locked).await;
            }
            if !schedule::gather(conn, locked, &parent).await? {
                return Ok(());
            }
            parent
        }
        None => key.to_owned(),
    };
    // 2. Start what it was the last need of; 3. settle the run.
    let ready = locked.ready_dependents(&accepted);
    start_ready(conn, locked, ready).await?;
    settle(conn, locked).await
}

/// Mark `key` completed with its event; returns the row.
async fn complete_phase(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    key: &str,
) -> Result<PhaseRow, AdvanceError> {
    locked
        .set_phase_state(conn, key, PhaseState::Completed, None)
        .await?;
    let row = locked
        .phase(key)
        .cloned()
        .ok_or(StoreError::Stale("phase"))?;
    locked
        .events
        .push(NewEvent::phase_completed(key, row.round));
    Ok(row)
}

/// Set the run's state from its phases: completed when every phase is accepted or
/// skipped; running while a phase is queued or running; awaiting approval when the
/// only thing left is a human's decision. A run that ended or waits on budget stays.
///
/// # Errors
/// [`AdvanceError`].
pub async fn settle(conn: &mut PgConnection, locked: &mut LockedRun) -> Result<(), AdvanceError> {
    if locked.run.state.is_terminal() || locked.run.state == RunState::AwaitingBudget {
        return Ok(());
    }
    if locked
        .phases
        .iter()
        .all(|p| matches!(p.state, PhaseState::Completed | PhaseState::Skipped))
    {
        return end_run(conn, locked, RunState::Completed, None).await;
    }
    let next = if locked.has_active_phase() {
        RunState::Running
    } else if locked
        .phases
        .iter()
        .any(|p| p.state == PhaseState::AwaitingApproval)
    {
        RunState::AwaitingApproval
    } else {
        return Ok(());
    };
    if locked.run.state != next {
        locked.set_state(conn, next, None).await?;
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
    // The report reads the phase rows, and what ends here skips the unfinished ones.
    locked.flush_phase_writes(conn).await?;
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

/// Hold back `phase`'s change to `next`: one write per phase per transaction, from the
/// state its row holds (the first change's source) to the last change's outcome.
fn hold_back(
    writes: &mut Vec<PhaseWrite>,
    phase: &PhaseRow,
    next: PhaseState,
    attempts: Option<i32>,
    error: Option<&str>,
) {
    let index = writes
        .iter()
        .position(|w| w.phase_key == phase.phase_key)
        .unwrap_or_else(|| {
            writes.push(PhaseWrite {
                phase_key: phase.phase_key.clone(),
                from: phase.state,
                to: next,
                attempts: None,
                error: None,
                started: false,
            });
            writes.len() - 1
        });
    let write = &mut writes[index];
    write.to = next;
    write.error = error.map(str::to_owned);
    if attempts.is_some() {
        write.attempts = attempts;
        write.started = true;
    }
}

/// Phase `key` of a locked run's phases; [`StoreError::Stale`] when the run has none.
fn phase_mut<'a>(phases: &'a mut [PhaseRow], key: &str) -> Result<&'a mut PhaseRow, StoreError> {
    phases
        .iter_mut()
        .find(|p| p.phase_key == key)
        .ok_or(StoreError::Stale("phase"))
}
