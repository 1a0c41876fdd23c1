//! Step 1 of a phase job: in one transaction, lock the run, skip a stale delivery,
//! read what the attempt starts from, and mark the attempt (and, on its first phase,
//! the run) started.

use super::PhaseError;
use super::Shared;
use super::definitions::Definitions;
use crate::advance::LockedRun;
use crate::events::NewEvent;
use crate::phase_job::PhaseJob;
use crate::state::{PhaseState, RunState};
use crate::store::files::{self, SeedFile};
use crate::store::run_inputs::{self, AttemptContext, PreviousArtifact, PriorArtifact};
use crate::store::run_phases::PhaseRow;
use crate::store::runs::{self, RunRow};
use crate::workflow::{Persona, Phase, RunInputs, WorkflowTemplate};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;

/// What the worker learned at the start of an attempt.
pub(super) struct Started {
    /// The run's template (its phase graph, for what the attempt's outcome starts).
    pub template: Arc<WorkflowTemplate>,
    pub phase: Phase,
    /// For an item of a fan-out: its element.
    pub item: Option<Item>,
    /// Shared with the worker's parsed definitions: cloned once, into the agent's
    /// request.
    pub persona: Arc<Persona>,
    pub inputs: RunInputs,
    pub prior: Vec<PriorArtifact>,
    /// The latest earlier artifact of this phase (a repair, a retry or a revision
    /// starts from it).
    pub previous: Option<PreviousArtifact>,
    pub revise_comment: Option<String>,
    /// The files the workspace starts with: inputs and earlier phases' outputs.
    pub files: Vec<SeedFile>,
    /// The phases upstream of this one (what it reads artifacts and files of).
    pub upstream: Vec<String>,
}

/// The element an item of a fan-out works on.
pub(super) struct Item {
    /// The name it has in the prompt (the fan-out's `as`).
    pub name: String,
    pub index: i32,
    /// Where it comes from (`spec#/requirements`).
    pub over: String,
    pub element: serde_json::Value,
}

/// Whether this delivery is not the attempt the phase is at (the run moved on, another
/// delivery finished it, or it belongs to an older round).
fn is_stale(run: &RunRow, phase: &PhaseRow, p: &PhaseJob) -> bool {
    !matches!(
        run.state,
        RunState::Queued | RunState::Running | RunState::AwaitingBudget
    ) || phase.state.is_terminal()
        || phase.state == PhaseState::AwaitingApproval
        || phase.round != p.round
        || phase.attempts > p.attempt
}

/// How a delivery starts.
pub(super) enum Start {
    /// The run moved on, or this attempt is recorded already: nothing to do.
    Nothing,
    /// The run's budget is spent: park it (with the job's completion).
    OutOfBudget(String),
    Ready(Box<Started>),
}

/// Start the attempt.
///
/// # Errors
/// [`PhaseError`].
pub(super) async fn start(
    pool: &PgPool,
    shared: &Shared,
    p: &PhaseJob,
) -> Result<Start, PhaseError> {
    let mut tx = pool.begin().await?;
    // 1. Lock the run with its phases.
    let Some((run, phases)) = runs::runs_lock_with_phases(&mut tx, p.run_id).await? else {
        return Ok(Start::Nothing);
    };
    let phase = phases
        .iter()
        .find(|ph| ph.phase_key == p.phase)
        .cloned()
        .ok_or_else(|| {
            PhaseError::Permanent(format!("run {} has no phase {:?}", p.run_id, p.phase))
        })?;
    if is_stale(&run, &phase, p) {
        return Ok(Start::Nothing);
    }
    let mut locked = LockedRun::new(run, phases).defer_phase_writes();
    // 2. Read what the attempt starts from.
    let ctx = read_context(&mut tx, &locked, p).await?;
    if ctx.recorded {
        return Ok(Start::Nothing);
    }
    // 3. A run out of budget waits for a top-up, before any call (parked together
    //    with this job's completion); so does a branch that starts while another
    //    branch's park holds the run.
    if let Some(spent) = crate::budget::Spend::from(&locked.run).exhausted() {
        return Ok(Start::OutOfBudget(format!("budget exhausted: {spent}")));
    }
    if locked.run.state == RunState::AwaitingBudget {
        let reason = locked.run.error.clone().unwrap_or_default();
        return Ok(Start::OutOfBudget(reason));
    }
    // 4. Mark the attempt started; read the files it starts with (its inputs and what
    //    the phases upstream of it wrote).
    let started = begin(&mut tx, &shared.definitions, &mut locked, &phase, p, ctx).await?;
    let last_seq = locked.flush_events_wake_after_commit(&mut tx).await?;
    tx.commit().await?;
    if let Some(seq) = last_seq {
        shared.wake_ups.after_commit(p.run_id, seq);
    }
    Ok(Start::Ready(Box::new(started)))
}

/// Start `p` (of `phase`) in the transaction that made it due and handed this worker's
/// job over to it: the run is locked, running and within its budget. The caller
/// appends the events.
///
/// # Errors
/// [`PhaseError`].
pub(super) async fn start_handed_over(
    conn: &mut PgConnection,
    definitions: &Definitions,
    locked: &mut LockedRun,
    phase: &PhaseRow,
    p: &PhaseJob,
) -> Result<Started, PhaseError> {
    let ctx = read_context(conn, locked, p).await?;
    begin(conn, definitions, locked, phase, p, ctx).await
}

async fn read_context(
    conn: &mut PgConnection,
    locked: &LockedRun,
    p: &PhaseJob,
) -> Result<AttemptContext, sqlx::Error> {
    let completed = locked.completed_phase_keys();
    run_inputs::run_inputs_attempt_context(conn, p.run_id, &p.phase, p.round, p.attempt, &completed)
        .await
}

/// Mark the attempt started and read the files it starts with (its inputs and what the
/// phases upstream of it wrote).
async fn begin(
    conn: &mut PgConnection,
    definitions: &Definitions,
    locked: &mut LockedRun,
    phase: &PhaseRow,
    p: &PhaseJob,
    ctx: AttemptContext,
) -> Result<Started, PhaseError> {
    let has_files = ctx.has_files;
    let template = definitions.template(conn, &ctx.template_hash).await?;
    let persona = definitions.persona(conn, &ctx.persona_hash).await?;
    let mut started = parse_context(ctx, template, persona, phase, p)?;
    mark_started(conn, locked, p).await?;
    if has_files {
        let completed = locked.completed_phase_keys();
        started.files =
            files::run_files_seed(conn, p.run_id, &started.upstream, &completed).await?;
    }
    Ok(started)
}

async fn mark_started(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    p: &PhaseJob,
) -> Result<(), PhaseError> {
    if locked.run.state == RunState::Queued {
        locked.set_state(conn, RunState::Running, None).await?;
        locked.events.push(NewEvent::run_started());
    }
    locked.start_attempt(conn, &p.phase, p.attempt).await?;
    locked
        .events
        .push(NewEvent::phase_started(&p.phase, p.round, p.attempt));
    Ok(())
}

fn parse_context(
    ctx: AttemptContext,
    template: Arc<WorkflowTemplate>,
    persona: Arc<Persona>,
    row: &PhaseRow,
    p: &PhaseJob,
) -> Result<Started, PhaseError> {
    let template_phase = template
        .phase(row.template_key())
        .map(|(_, ph)| ph.clone())
        .ok_or_else(|| PhaseError::Permanent(format!("template has no phase {:?}", p.phase)))?;
    // Only the phases upstream of this one: a parallel branch's artifact is not an input.
    let upstream = template.upstream_of(row.template_key());
    let prior = ctx
        .prior
        .0
        .into_iter()
        .filter(|a| upstream.contains(&a.phase_key))
        .collect();
    let item = match (&template_phase.fan_out, ctx.item, row.item_index) {
        (Some(f), Some(element), Some(index)) => Some(Item {
            name: f.as_name.clone(),
            index,
            over: f.over.clone(),
            element,
        }),
        _ => None,
    };
    Ok(Started {
        template,
        phase: template_phase,
        item,
        persona,
        inputs: RunInputs {
            requirements: ctx.requirements,
            objective: ctx.objective,
            extra: ctx.extra,
        },
        prior,
        previous: ctx.previous.map(|p| p.0),
        revise_comment: row.revise_comment.clone(),
        files: Vec::new(),
        upstream: upstream.into_iter().collect(),
    })
}
