//! Starting the phases whose needs are met: a phase whose condition does not hold is
//! skipped (and what needs it may start in turn), a fan-out phase starts one item per
//! element of the array it names, any other phase gets its first attempt enqueued. And
//! the join of a fan-out: when its last item is accepted, the items' artifacts are
//! gathered, in order, into the fan-out phase's artifact.
//!
//! Called only with the run locked, for phases that just became ready (their last need
//! was accepted or skipped in this transaction), so each starts exactly once; the phase
//! job's unique key makes a second enqueue of the same attempt a no-op besides.

use super::{AdvanceError, LockedRun, end_run};
use crate::events::NewEvent;
use crate::phase_job::PhaseJob;
use crate::state::{PhaseState, RunState};
use crate::store::StoreError;
use crate::store::artifacts::{self, Gathered};
use crate::store::run_phases::{self, NewItems, PhaseRow};
use crate::workflow::{Condition, FanOut, Phase};
use serde_json::Value;
use sqlx::PgConnection;
use std::collections::VecDeque;

/// Most bytes a fan-out's gathered artifact may hold (a later phase reads it whole).
pub const MAX_GATHERED_BYTES: i64 = 4 * 1024 * 1024;

/// What starting a phase did.
enum Started {
    /// Its job (or its items' jobs) wait on the queue.
    Queued,
    /// It is skipped, or it fanned out over no element: it is satisfied already, and
    /// what needs it may be ready.
    Satisfied,
    /// It could not start; the run failed.
    RunEnded,
}

/// Start each phase of `ready` (pending, needs met), in order; a phase that is
/// satisfied at once (skipped, or an empty fan-out) makes its own dependents ready.
///
/// # Errors
/// [`AdvanceError`].
pub async fn start_ready(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    ready: Vec<String>,
) -> Result<(), AdvanceError> {
    let template = locked.template(conn).await?;
    let mut ready: VecDeque<String> = ready.into();
    while let Some(key) = ready.pop_front() {
        let (_, phase) = template.phase(&key).ok_or(StoreError::Stale("phase"))?;
        match start_phase(conn, locked, phase).await? {
            Started::Queued => {}
            Started::Satisfied => ready.extend(locked.ready_dependents(&key)),
            Started::RunEnded => return Ok(()),
        }
    }
    Ok(())
}

async fn start_phase(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    phase: &Phase,
) -> Result<Started, AdvanceError> {
    let row = locked
        .phase(&phase.key)
        .cloned()
        .ok_or(StoreError::Stale("phase"))?;
    if row.state != PhaseState::Pending {
        return Ok(Started::Queued);
    }
    // 1. A condition that does not hold skips the phase.
    if let Some(condition) = &phase.when
        && !condition_holds(conn, locked, condition).await?
    {
        locked
            .set_phase_state(conn, &phase.key, PhaseState::Skipped, None)
            .await?;
        locked.events.push(NewEvent::phase_skipped(
            &phase.key,
            row.round,
            &condition.describe(),
        ));
        return Ok(Started::Satisfied);
    }
    // 2. A fan-out starts its items.
    if let Some(fan_out) = &phase.fan_out {
        return fan_out_items(conn, locked, &row, fan_out).await;
    }
    // 3. Any other phase: its first attempt.
    enqueue_first_attempt(conn, locked, &row, false).await?;
    Ok(Started::Queued)
}

/// Enqueue attempt 1 of `row`'s round, with its `phase.queued` event (`revise`: the
/// round is a reviewer's revision).
///
/// # Errors
/// Queue errors.
pub async fn enqueue_first_attempt(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    row: &PhaseRow,
    revise: bool,
) -> Result<(), AdvanceError> {
    let job = PhaseJob::first_attempt(
        locked.run.id,
        &row.phase_key,
        row.round,
        row.requires.as_deref(),
    )
    .traced(locked.run.traceparent.clone());
    locked.enqueue_attempt(conn, job).await?;
    locked
        .events
        .push(NewEvent::phase_queued(&row.phase_key, row.round, revise));
    Ok(())
}

/// The accepted artifact of `phase`, parsed; `None` when it has none (it was skipped).
async fn accepted_artifact(
    conn: &mut PgConnection,
    locked: &LockedRun,
    phase: &str,
) -> Result<Option<Value>, AdvanceError> {
    let content = artifacts::artifacts_accepted_content(conn, locked.run.id, phase).await?;
    Ok(content.and_then(|c| serde_json::from_str(&c).ok()))
}

async fn condition_holds(
    conn: &mut PgConnection,
    locked: &LockedRun,
    condition: &Condition,
) -> Result<bool, AdvanceError> {
    let artifact = accepted_artifact(conn, locked, &condition.artifact).await?;
    Ok(condition.holds(artifact.as_ref()))
}

/// Start the items of fan-out phase `row`: one per element of the array it names (made
/// now; or, when an operator re-opened the run, the items it has that are not done).
async fn fan_out_items(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    row: &PhaseRow,
    fan_out: &FanOut,
) -> Result<Started, AdvanceError> {
    let key = row.phase_key.as_str();
    let source = fan_out.source().map_or("", |(phase, _)| phase);
    // Nothing to go over: the phase it fans out over was skipped by its condition.
    if locked
        .phase(source)
        .is_some_and(|s| s.state == PhaseState::Skipped)
    {
        locked
            .set_phase_state(conn, key, PhaseState::Skipped, None)
            .await?;
        locked.events.push(NewEvent::phase_skipped(
            key,
            row.round,
            &format!("{source} was skipped: no array to fan out over"),
        ));
        return Ok(Started::Satisfied);
    }
    let existing = locked.items_of(key).next().is_some();
    if !existing {
        let artifact = accepted_artifact(conn, locked, source).await?;
        let elements = match fan_out.items(artifact.as_ref()) {
            Ok(elements) => elements,
            Err(problem) => {
                let error = format!("phase {key} cannot fan out: {problem}");
                fail_without_attempt(conn, locked, row, &error).await?;
                return Ok(Started::RunEnded);
            }
        };
        let new = NewItems {
            parent: row,
            elements: &elements,
        };
        let mut items = run_phases::run_phases_insert_items(conn, locked.run.id, &new).await?;
        items.sort_by_key(|i| i.item_index);
        locked.phases.extend(items);
        locked.events.push(NewEvent::phase_fanned_out(
            key,
            row.round,
            elements.len(),
            &fan_out.over,
        ));
    }
    // The fan-out phase runs (from now: its duration spans its items).
    locked.start_attempt(conn, key, 0).await?;
    let pending: Vec<PhaseRow> = locked
        .items_of(key)
        .filter(|i| i.state == PhaseState::Pending)
        .cloned()
        .collect();
    if pending.is_empty() {
        // No element (or, re-opened, every item done): gather what there is.
        return Ok(if gather(conn, locked, key).await? {
            Started::Satisfied
        } else {
            Started::RunEnded
        });
    }
    for item in &pending {
        enqueue_first_attempt(conn, locked, item, false).await?;
    }
    Ok(Started::Queued)
}

/// A phase that fails outside any attempt (its fan-out has no array to go over, or its
/// items' artifacts are too large to gather) fails, and so does the run.
async fn fail_without_attempt(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    row: &PhaseRow,
    error: &str,
) -> Result<(), AdvanceError> {
    locked
        .set_phase_state(conn, &row.phase_key, PhaseState::Failed, Some(error))
        .await?;
    locked
        .events
        .push(NewEvent::phase_failed(&row.phase_key, row.round, 0, error));
    end_run(conn, locked, RunState::Failed, Some(error)).await
}

/// The join of fan-out phase `key`, whose items are all accepted: store their artifacts
/// gathered in item order as its artifact, and complete it. `false` when the array is
/// too large to gather (the run failed).
///
/// # Errors
/// [`AdvanceError`].
pub(super) async fn gather(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    key: &str,
) -> Result<bool, AdvanceError> {
    let template = locked.template(conn).await?;
    let row = locked
        .phase(key)
        .cloned()
        .ok_or(StoreError::Stale("phase"))?;
    let expected = template
        .phase(key)
        .and_then(|(_, p)| p.expected_artifact.clone())
        .ok_or(StoreError::Stale("phase"))?;
    // An array of artifacts of the items' schema.
    let schema_id = format!("{}[]", expected.schema);
    let gathered = Gathered {
        run: locked.run.id,
        phase: key,
        round: row.round,
        path: &expected.path,
        schema_id: &schema_id,
        max_bytes: MAX_GATHERED_BYTES,
    };
    if let Err(size) = artifacts::artifacts_gather(conn, &gathered).await? {
        let error = format!(
            "phase {key}: its items' artifacts hold {size} bytes, more than the {MAX_GATHERED_BYTES} one gathered artifact may"
        );
        fail_without_attempt(conn, locked, &row, &error).await?;
        return Ok(false);
    }
    super::complete_phase(conn, locked, key).await?;
    Ok(true)
}
