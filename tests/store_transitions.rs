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
    phasefleet::cancel::cancel_run(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        run,
        Some("test over"),
    )
    .await
    .unwrap();
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
    phasefleet::cancel::cancel_run(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        run,
        Some("test over"),
    )
    .await
    .unwrap();
}
