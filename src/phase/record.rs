//! Step 4 of a phase job, in ONE transaction: store the artifact (a duplicate delivery
//! stores nothing and changes nothing) and, when it is valid, the files the attempt
//! wrote; then park on an approval, accept the phase, schedule a repair or fail the
//! run; append the events; complete the job under its lease, or hand the job over to
//! the next attempt this worker goes on with (started in this same transaction). A
//! lost lease rolls all of it back.

use super::PhaseError;
use super::attempt::Validated;
use super::definitions::Definitions;
use super::start::Started;
use crate::advance::{self, LockedRun};
use crate::events::{NewEvent, RecordedArtifact};
use crate::ids::ApprovalId;
use crate::phase_job::PhaseJob;
use crate::queue::{self, ClaimedJob, Completed};
use crate::state::{PhaseState, RunState};
use crate::store::approvals::{self, NewRequest};
use crate::store::artifacts::{self, NewArtifact};
use crate::store::files::{self, Blob};
use crate::store::run_phases::PhaseRow;
use crate::store::runs::{self, RunRow};
use crate::workflow::OnTimeout;
use crate::workflow::sha256_hex;
use sqlx::PgConnection;

/// What recording an attempt did with its job.
pub(super) enum Recorded {
    Completed(Completed),
    /// The job now carries this attempt of the same run, started already: the worker
    /// goes on with it under the same lease.
    HandedOver(Box<(PhaseJob, Started)>),
}

/// What recording an attempt starts from: the delivery, the attempt as started, and
/// what it produced. Owned, so that a transaction shared by several attempts
/// (`super::recorder`) can record it, and record it again alone when the shared
/// transaction rolls back.
pub(super) struct ToRecord {
    pub job: ClaimedJob,
    pub p: PhaseJob,
    pub started: Box<Started>,
    pub outcome: Validated,
    /// What the worker can serve, when it may go on with the next attempt.
    pub go_on: Option<Vec<String>>,
}

/// Record the attempt's outcome and complete the job, in the caller's transaction;
/// with `go_on` (what the worker can serve), hand the job over to the first attempt
/// this makes due that the worker can run instead. Returns what became of the job and
/// the last seq of the events appended (live streams hear of it after the commit).
///
/// # Errors
/// [`PhaseError`]; a lost lease is [`PhaseError::Queue`], and the caller rolls back.
pub(super) async fn record_in(
    tx: &mut PgConnection,
    definitions: &Definitions,
    r: &ToRecord,
) -> Result<(Recorded, Option<i64>), PhaseError> {
    let (job, p, started) = (&r.job, &r.p, &*r.started);
    let mut handed_over = None;
    let mut last_seq = None;
    // 1. Lock the run; a cancel or another delivery may have moved on meanwhile.
    let current = runs::runs_lock_with_phases(tx, p.run_id).await?;
    deliver_again_if_start_lost(current.as_ref(), p)?;
    // A parallel branch may have parked the run for budget meanwhile: this attempt's
    // artifact is recorded all the same.
    if let Some((run, phases)) = current.filter(|(run, phases)| {
        matches!(run.state, RunState::Running | RunState::AwaitingBudget)
            && phases.iter().any(|ph| {
                ph.phase_key == p.phase
                    && ph.state == PhaseState::Running
                    && ph.round == p.round
                    && ph.attempts == p.attempt
            })
    }) {
        let mut locked = LockedRun::new(run, phases)
            .with_template(started.template.clone())
            .defer_phase_writes();
        if let Some(capabilities) = &r.go_on {
            locked.offer_hand_over(capabilities.clone());
        }
        // 2. Store the artifact, then act on it.
        if let Some(artifact_id) = store_artifact(tx, &mut locked, p, started, &r.outcome).await? {
            act(tx, &mut locked, p, started, &r.outcome, artifact_id).await?;
        }
        // 3. Go on with the attempt kept for this worker, or enqueue it.
        handed_over = hand_over_or_enqueue(tx, definitions, &mut locked, job).await?;
        // 4. Append the events (live streams hear of them after the commit).
        last_seq = locked.flush_events_wake_after_commit(tx).await?;
    }
    // 5. Complete the job under its lease (unless it was handed over).
    let recorded = match handed_over {
        Some(next) => Recorded::HandedOver(Box::new(next)),
        None => Recorded::Completed(queue::complete(tx, &job.lease()).await?),
    };
    Ok((recorded, last_seq))
}

/// The attempt kept for this worker: hand the job over to it and start it in this
/// transaction when the run is running within its budget and the queue is not paused;
/// otherwise (or when the lease is lost: the completion then says so) enqueue it.
async fn hand_over_or_enqueue(
    conn: &mut PgConnection,
    definitions: &Definitions,
    locked: &mut LockedRun,
    job: &ClaimedJob,
) -> Result<Option<(PhaseJob, Started)>, PhaseError> {
    let Some(next) = locked.take_handed_over() else {
        return Ok(None);
    };
    // The run ended in this transaction after the attempt was kept (another phase made
    // due with it could not start): its jobs are cancelled, and this one is not made.
    if locked.run.state.is_terminal() {
        return Ok(None);
    }
    let runnable = locked.run.state == RunState::Running
        && crate::budget::Spend::from(&locked.run)
            .exhausted()
            .is_none();
    if let Some(row) = locked.phase(&next.phase).cloned().filter(|_| runnable)
        && queue::hand_over(conn, &job.lease(), &next.to_job(&locked.run.queue)).await?
    {
        let started =
            super::start::start_handed_over(conn, definitions, locked, &row, &next).await?;
        return Ok(Some((next, started)));
    }
    next.enqueue(conn, &locked.run.queue).await?;
    Ok(None)
}

/// After an attempt ran: when the phase is *behind* this delivery (its row has not
/// counted this attempt, although this delivery started it), deliver it again instead
/// of recording, parking or failing on a phase it never started. Only a commit lost
/// after it was acknowledged (a failover to a standby that had not received the start,
/// or the hand-over to this attempt) does that; completing the job as a stale delivery
/// would leave the phase pending with no job.
///
/// # Errors
/// [`PhaseError::Retry`] when the start was lost.
pub(super) fn deliver_again_if_start_lost(
    current: Option<&(RunRow, Vec<PhaseRow>)>,
    p: &PhaseJob,
) -> Result<(), PhaseError> {
    let lost = current.is_some_and(|(_, phases)| {
        phases
            .iter()
            .find(|ph| ph.phase_key == p.phase)
            .is_some_and(|ph| {
                ph.round < p.round || (ph.round == p.round && ph.attempts < p.attempt)
            })
    });
    if lost {
        return Err(PhaseError::Retry(format!(
            "phase {} has not started attempt {} (its start was not kept: a database failover lost it); delivering it again",
            p.phase, p.attempt
        )));
    }
    Ok(())
}

/// Store the artifact; `None` when this attempt's artifact is stored already.
async fn store_artifact(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    p: &PhaseJob,
    started: &Started,
    outcome: &Validated,
) -> Result<Option<i64>, PhaseError> {
    let expected = started.phase.expected_artifact.as_ref();
    let sha = outcome.content.as_deref().map(sha256_hex);
    let issues = serde_json::to_value(&outcome.validation.issues).unwrap_or_default();
    let id = artifacts::artifacts_insert(
        conn,
        &NewArtifact {
            run: p.run_id,
            phase: &p.phase,
            round: p.round,
            attempt: p.attempt,
            path: expected.map(|e| e.path.as_str()),
            schema_id: expected.map(|e| e.schema.as_str()),
            content: outcome.content.as_deref(),
            sha256: sha.as_deref(),
            valid: outcome.validation.valid,
            issues: &issues,
        },
    )
    .await?;
    if let Some(id) = id {
        if outcome.validation.valid {
            store_written_files(conn, p, outcome).await?;
        }
        locked.events.push(NewEvent::artifact_recorded(
            &p.phase,
            p.round,
            p.attempt,
            &RecordedArtifact {
                id,
                path: expected.map(|e| e.path.as_str()),
                files: outcome.written.len(),
                sha256: sha.as_deref(),
                valid: outcome.validation.valid,
                issues: &issues,
            },
        ));
    }
    Ok(id)
}

/// The files a valid attempt wrote become the phase's output (replacing an earlier
/// round's), seen by later phases and downloadable.
async fn store_written_files(
    conn: &mut PgConnection,
    p: &PhaseJob,
    outcome: &Validated,
) -> Result<(), PhaseError> {
    // Nothing written, and no earlier round's files to replace: nothing to do.
    if outcome.written.is_empty() && p.round == 1 {
        return Ok(());
    }
    let blobs: Vec<&Blob> = outcome.written.iter().map(|(_, b)| b).collect();
    files::file_blobs_put(conn, &blobs).await?;
    let entries: Vec<(&str, &str)> = outcome
        .written
        .iter()
        .map(|(path, blob)| (path.as_str(), blob.sha256.as_str()))
        .collect();
    files::run_files_replace(conn, p.run_id, &p.phase, (p.round, p.attempt), &entries).await?;
    Ok(())
}

/// Park, accept, repair or fail, by the validation result and the attempts left.
async fn act(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    p: &PhaseJob,
    started: &Started,
    outcome: &Validated,
    artifact_id: i64,
) -> Result<(), PhaseError> {
    let phase = &started.phase;
    if outcome.validation.valid && phase.gates.is_empty() {
        advance::phase_accepted(conn, locked, &p.phase).await?;
    } else if outcome.validation.valid {
        park(conn, locked, p, started, artifact_id).await?;
    } else if p.attempt < i32::try_from(phase.max_attempts).unwrap_or(i32::MAX) {
        locked.enqueue_attempt(conn, p.next_attempt()).await?;
        locked.events.push(NewEvent::phase_repair_scheduled(
            &p.phase, p.round, p.attempt,
        ));
    } else {
        let error = failure_summary(p, outcome);
        advance::fail_phase_and_run(conn, locked, p, &error).await?;
    }
    Ok(())
}

fn failure_summary(p: &PhaseJob, outcome: &Validated) -> String {
    let summary: Vec<String> = outcome
        .validation
        .issues
        .iter()
        .take(5)
        .map(|i| format!("{} {}", i.at(), i.message))
        .collect();
    format!(
        "phase {} produced no valid artifact after {} attempt(s): {}",
        p.phase,
        p.attempt,
        summary.join("; ")
    )
}

/// Park the run on a human: create the approval request (idempotently, keyed by run,
/// phase, round and artifact path). No process waits.
async fn park(
    conn: &mut PgConnection,
    locked: &mut LockedRun,
    p: &PhaseJob,
    started: &Started,
    artifact_id: i64,
) -> Result<(), PhaseError> {
    let phase = &started.phase;
    let output = phase
        .expected_artifact
        .as_ref()
        .map_or("files", |a| a.path.as_str());
    let key = format!("{}:{}:r{}:{output}", p.run_id, p.phase, p.round);
    let on_timeout = phase.on_timeout.unwrap_or(OnTimeout::Reject);
    let inserted = approvals::approvals_insert_request(
        conn,
        &NewRequest {
            id: ApprovalId::new(),
            run: p.run_id,
            phase: &p.phase,
            round: p.round,
            artifact_id,
            gates: &phase.gates,
            key: &key,
            deadline: phase.deadline().map(|d| {
                let secs = d.as_secs_f64();
                (secs, on_timeout.as_str(), phase.escalate_to.as_deref())
            }),
        },
    )
    .await?;
    if let Some(created) = inserted
        && let Some(at) = created.deadline_at
    {
        crate::approval::schedule_deadline(conn, &locked.run.queue, p.run_id, created.id, at)
            .await?;
    }
    let inserted = inserted.map(|c| c.id);
    locked
        .set_phase_state(conn, &p.phase, PhaseState::AwaitingApproval, None)
        .await?;
    // The run waits on the human only when no other branch can move.
    advance::settle(conn, locked).await?;
    if let Some(id) = inserted {
        locked.events.push(NewEvent::approval_requested(
            &p.phase,
            id,
            &phase.gates,
            p.round,
            &key,
        ));
    }
    Ok(())
}
