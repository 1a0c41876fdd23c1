//! The transition tables, enforced by the store against the real database: every
//! allowed run and phase transition succeeds; every other one is an error and changes
//! nothing. Each pair runs in a transaction that is rolled back.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::state::{PHASE_TRANSITIONS, PhaseState, RUN_TRANSITIONS, RunState};
use phasefleet::store::{StoreError, run_phases, runs};
use serde_json::json;
use support::engine::{request, submit};
use support::*;

/// Put the run (or one of its phases) in `state` inside `tx`, bypassing the store: only
/// this test may set a state the tables would never reach this way.
async fn force(tx: &mut sqlx::PgConnection, sql: &str, run: phasefleet::RunId, state: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(run)
        .bind(state)
        .execute(&mut *tx)
        .await
        .unwrap();
}

/// End the test's run, so that no worker of another test picks it up.
async fn cancel(pool: &sqlx::PgPool, run: phasefleet::RunId) {
    phasefleet::cancel::cancel_run(
        pool,
        &phasefleet::teams::Scope::Fleet,
        run,
        Some("test over"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn every_run_transition_in_the_table_works_and_no_other() {
    let pool = pool().await;
    let run = submit(&pool, request(&unique_queue("transitions"), json!({}))).await;
    let (mut allowed, mut refused) = (0, 0);
    for from in RunState::ALL {
        for to in RunState::ALL {
            let mut tx = pool.begin().await.unwrap();
            force(
                &mut tx,
                "UPDATE runs SET state = $2::run_state WHERE id = $1",
                run,
                from.as_str(),
            )
            .await;
            let row = runs::runs_lock(&mut tx, run).await.unwrap().unwrap();
            let result = runs::runs_set_state(&mut tx, &row, to, None).await;
            let after = runs::runs_get(&mut tx, run).await.unwrap().unwrap().state;
            if RUN_TRANSITIONS.contains(&(from, to)) {
                result.unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                assert_eq!(after, to);
                allowed += 1;
            } else {
                assert!(
                    matches!(result, Err(StoreError::Transition(_))),
                    "{from} -> {to} must be refused: {result:?}"
                );
                assert_eq!(after, from, "a refused transition changes nothing");
                refused += 1;
            }
            tx.rollback().await.unwrap();
        }
    }
    assert_eq!(
        (allowed, refused),
        (RUN_TRANSITIONS.len(), 64 - RUN_TRANSITIONS.len())
    );
    cancel(&pool, run).await;
}

#[tokio::test]
async fn every_phase_transition_in_the_table_works_and_no_other() {
    let pool = pool().await;
    let run = submit(&pool, request(&unique_queue("transitions"), json!({}))).await;
    let mut allowed = 0;
    for from in PhaseState::ALL {
        for to in PhaseState::ALL {
            let mut tx = pool.begin().await.unwrap();
            force(
                &mut tx,
                "UPDATE run_phases SET state = $2::phase_state WHERE run_id = $1 AND phase_key = 'spec'",
                run,
                from.as_str(),
            )
            .await;
            let (_, phases) = runs::runs_lock_with_phases(&mut tx, run)
                .await
                .unwrap()
                .unwrap();
            let spec = phases.into_iter().find(|p| p.phase_key == "spec").unwrap();
            let result = run_phases::run_phases_set_state(&mut tx, run, &spec, to, None).await;
            let after = run_phases::run_phases_list(&mut tx, run).await.unwrap()[0].state;
            if PHASE_TRANSITIONS.contains(&(from, to)) {
                result.unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                assert_eq!(after, to);
                allowed += 1;
            } else {
                assert!(
                    matches!(result, Err(StoreError::Transition(_))),
                    "{from} -> {to} must be refused: {result:?}"
                );
                assert_eq!(after, from, "a refused transition changes nothing");
            }
            tx.rollback().await.unwrap();
        }
    }
    assert_eq!(allowed, PHASE_TRANSITIONS.len());
    cancel(&pool, run).await;
}

/// Lock the run and start its first attempt of `spec`, holding the phase row's change
/// back, with its event.
async fn start_spec_held_back(
    tx: &mut sqlx::PgConnection,
    run: phasefleet::RunId,
) -> phasefleet::advance::LockedRun {
    let (row, phases) = runs::runs_lock_with_phases(tx, run).await.unwrap().unwrap();
    let mut locked = phasefleet::advance::LockedRun::new(row, phases).defer_phase_writes();
    locked.start_attempt(tx, "spec", 1).await.unwrap();
    locked
        .events
        .push(phasefleet::events::NewEvent::phase_started("spec", 1, 1));
    locked
}

/// A phase job's transaction holds its phase rows' changes back and writes them in the
/// statement that appends its events; a row that is no longer in the state it was read
/// in is refused there (the caller rolls back), as a write of its own would be.
#[tokio::test]
async fn held_back_phase_writes_land_with_the_events_and_a_changed_row_is_refused() {
    use phasefleet::advance::AdvanceError;
    let pool = pool().await;
    let run = submit(&pool, request(&unique_queue("held-back"), json!({}))).await;
    let spec_of = |phases: Vec<run_phases::PhaseRow>| {
        phases.into_iter().find(|p| p.phase_key == "spec").unwrap()
    };

    let mut tx = pool.begin().await.unwrap();
    let mut locked = start_spec_held_back(&mut tx, run).await;
    let before = spec_of(run_phases::run_phases_list(&mut tx, run).await.unwrap());
    assert_eq!(
        before.state,
        PhaseState::Pending,
        "held back until the events"
    );
    let last_seq = locked
        .flush_events_wake_after_commit(&mut tx)
        .await
        .unwrap();
    assert!(last_seq.is_some(), "the event is appended");
    let after = spec_of(run_phases::run_phases_list(&mut tx, run).await.unwrap());
    assert_eq!((after.state, after.attempts), (PhaseState::Running, 1));
    assert!(after.started_at.is_some() && after.finished_at.is_none());
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let mut locked = start_spec_held_back(&mut tx, run).await;
    force(
        &mut tx,
        "UPDATE run_phases SET state = $2::phase_state WHERE run_id = $1 AND phase_key = 'spec'",
        run,
        "skipped",
    )
    .await;
    let result = locked.flush_events_wake_after_commit(&mut tx).await;
    assert!(
        matches!(result, Err(AdvanceError::Store(StoreError::Stale("phase")))),
        "a row changed under the lock is refused: {result:?}"
    );
    tx.rollback().await.unwrap();
    cancel(&pool, run).await;
}

/// The run detail is read from one snapshot: while each transaction of a writer changes
/// a run and its first phase together, no detail shows one changed without the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_detail_never_shows_half_of_a_transaction() {
    let pool = pool().await;
    let run = submit(&pool, request(&unique_queue("snapshot"), json!({}))).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut version = 0_u64;
            while !stop.is_cancelled() {
                version += 1;
                let mark = format!("v{version}");
                let mut tx = pool.begin().await.unwrap();
                for sql in [
                    "UPDATE runs SET error = $2 WHERE id = $1",
                    "UPDATE run_phases SET error = $2 WHERE run_id = $1 AND position = 0",
                ] {
                    sqlx::query(sql)
                        .bind(run)
                        .bind(&mark)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            version
        })
    };
    let mut conn = pool.acquire().await.unwrap();
    let mut torn = 0;
    for _ in 0..300 {
        let detail = phasefleet::views::run_detail(&mut conn, run)
            .await
            .unwrap()
            .unwrap();
        let first = detail.phases.iter().find(|p| p.position == 0).unwrap();
        if detail.run.error != first.error {
            torn += 1;
        }
    }
    stop.cancel();
    let versions = writer.await.unwrap();
    assert!(versions > 100, "the writer wrote only {versions} versions");
    assert_eq!(
        torn, 0,
        "{torn} of 300 details showed half of a transaction"
    );
}
