//! The run lifecycle on the shared, populated database: many runs of one template,
//! repair, approvals, duplicates, races, cancel, budgets, and reports.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::agent::synthetic::SyntheticAgent;
use phasefleet::approval::{self, Action, ApprovalError, Decided};
use phasefleet::phase::{Engine, PhaseJob};
use phasefleet::queue::{self, JobState, NewJob};
use phasefleet::state::{PhaseState, RunState};
use phasefleet::submit::{SubmitError, Submitted};
use serde_json::json;
use std::time::Duration;
use support::engine::*;
use support::*;

async fn approve_all_until_done(pool: &sqlx::PgPool, runs: &[phasefleet::RunId]) {
    eventually(Duration::from_secs(240), "every run completes", || async {
        let mut c = pool.acquire().await.unwrap();
        for a in approval::pending(&mut c, &phasefleet::teams::Scope::Fleet, 1000)
            .await
            .unwrap()
        {
            if runs.contains(&a.run_id) {
                approval::decide(
                    pool,
                    &phasefleet::teams::Scope::Fleet,
                    a.id,
                    Action::Approve,
                    None,
                    Some("tests"),
                )
                .await
                .unwrap();
            }
        }
        let done: (i64,) =
            sqlx::query_as("SELECT count(*) FROM runs WHERE id = ANY($1) AND state = 'completed'")
                .bind(runs.iter().map(|r| r.0).collect::<Vec<_>>())
                .fetch_one(pool)
                .await
                .unwrap();
        (done.0 == i64::try_from(runs.len()).unwrap()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_runs_of_one_template_on_a_shared_database_all_complete() {
    let pool = pool().await;
    let q = unique_queue("hundred");
    let fleet = Fleet::synthetic(&pool, &q, 3);
    let mut runs = Vec::new();
    for _ in 0..100 {
        runs.push(submit(&pool, request(&q, json!({}))).await);
    }
    approve_all_until_done(&pool, &runs).await;
    fleet.shutdown().await;
    for run in &runs {
        assert_run_completed(&pool, *run).await;
        let mut c = pool.acquire().await.unwrap();
        let phases = phasefleet::store::run_phases::run_phases_list(&mut c, *run)
            .await
            .unwrap();
        assert!(phases.iter().all(|p| p.attempts == 1), "{phases:?}");
        let (arts, valid): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE valid) FROM artifacts WHERE run_id = $1",
        )
        .bind(run)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((arts, valid), (3, 3), "one valid artifact per phase");
        let approvals = approval::for_run(&mut c, *run).await.unwrap();
        assert_eq!(approvals.len(), 1, "one gate, one approval request");
        assert_eq!(approvals[0].action, Some(Action::Approve));
        let (_, json, md) = report(&pool, *run).await;
        assert_eq!(json["phases"].as_array().unwrap().len(), 3);
        assert!(md.contains("| spec | completed | 1/2 |"), "{md}");
    }
    let (jobs_left,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE queue = $1")
        .bind(&q)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs_left, 0, "every phase job completed exactly as planned");
}

#[tokio::test]
async fn repair_succeeds_on_the_second_attempt_with_the_errors_in_the_prompt() {
    let pool = pool().await;
    let q = unique_queue("repair");
    let agent = Recording::<SyntheticAgent>::default();
    let fleet = Fleet::start(&pool, &q, 1, 4, agent.clone());
    let run = submit(
        &pool,
        request(
            &q,
            json!({ "synthetic": { "invalid_attempts": 1, "invalid_phases": ["spec"] } }),
        ),
    )
    .await;
    let approval_id = pending_approval(&pool, run).await;
    approval::decide(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        approval_id,
        Action::Approve,
        None,
        None,
    )
    .await
    .unwrap();
    wait_for(&pool, run, &[RunState::Completed]).await;
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let spec = phase_of(&mut c, run, "spec").await.unwrap().unwrap();
    assert_eq!((spec.state, spec.attempts), (PhaseState::Completed, 2));
    let arts: Vec<(i32, bool)> = sqlx::query_as("SELECT attempt, valid FROM artifacts WHERE run_id = $1 AND phase_key = 'spec' ORDER BY attempt")
        .bind(run)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(arts, vec![(1, false), (2, true)]);
    let envelopes = agent.envelopes.lock().unwrap().clone();
    let repair = envelopes
        .iter()
        .find(|(k, a, _)| k == "spec" && *a == 2)
        .unwrap();
    assert!(repair.2.contains("[REPAIR ATTEMPT]"), "repair prompt sent");
    assert!(
        repair.2.contains("missing required property \"title\""),
        "with the previous errors: {}",
        repair.2
    );
    assert!(
        repair.2.contains("\"synthetic_invalid\":true"),
        "with the previous artifact: {}",
        repair.2
    );
    let first = envelopes
        .iter()
        .find(|(k, a, _)| k == "spec" && *a == 1)
        .unwrap();
    assert!(!first.2.contains("[REPAIR ATTEMPT]"));
    let review = envelopes.iter().find(|(k, _, _)| k == "review").unwrap();
    assert!(
        review.2.contains("### spec (spec.json)"),
        "later phases see prior artifacts"
    );
    assert_event_log_sound(&pool, run).await;
}

#[tokio::test]
async fn repair_fails_cleanly_after_max_attempts() {
    let pool = pool().await;
    let q = unique_queue("repairfail");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = submit(
        &pool,
        request(
            &q,
            json!({ "synthetic": { "invalid_attempts": 9, "invalid_phases": ["spec"] } }),
        ),
    )
    .await;
    wait_for(&pool, run, &[RunState::Failed]).await;
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let phases = phasefleet::store::run_phases::run_phases_list(&mut c, run)
        .await
        .unwrap();
    assert_eq!(
        (phases[0].state, phases[0].attempts),
        (PhaseState::Failed, 2)
    );
    assert!(phases[1..].iter().all(|p| p.state == PhaseState::Skipped));
    let r = phasefleet::store::runs::runs_get(&mut c, run)
        .await
        .unwrap()
        .unwrap();
    let err = r.error.unwrap();
    assert!(
        err.contains("no valid artifact after 2 attempt(s)") && err.contains("required property"),
        "{err}"
    );
    let (state, json, md) = report(&pool, run).await;
    assert_eq!(state, "failed");
    assert_eq!(json["error"], json!(err));
    assert!(md.contains("Invalid attempts"));
}

#[tokio::test]
async fn a_missing_artifact_counts_as_an_invalid_attempt() {
    let pool = pool().await;
    let q = unique_queue("nowrite");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = submit(
        &pool,
        request(&q, json!({ "synthetic": { "never_write": true } })),
    )
    .await;
    wait_for(&pool, run, &[RunState::Failed]).await;
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let r = phasefleet::store::runs::runs_get(&mut c, run)
        .await
        .unwrap()
        .unwrap();
    assert!(r.error.unwrap().contains("without writing spec.json"));
    report(&pool, run).await;
}

#[tokio::test]
async fn duplicate_delivery_of_a_phase_job_changes_nothing() {
    let pool = pool().await;
    let q = unique_queue("dup");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = submit(&pool, request(&q, json!({}))).await;
    let a = pending_approval(&pool, run).await;
    approval::decide(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        a,
        Action::Approve,
        None,
        None,
    )
    .await
    .unwrap();
    wait_for(&pool, run, &[RunState::Completed]).await;
    let count = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT (SELECT count(*) FROM artifacts WHERE run_id = $1), (SELECT count(*) FROM run_events WHERE run_id = $1),
                    (SELECT count(*) FROM approval_requests WHERE run_id = $1)",
        )
        .bind(run)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = count(pool.clone()).await;
    // Replay every phase job of the run, as a broker with at-least-once delivery might.
    let mut replays = Vec::new();
    for phase in ["spec", "review", "verify"] {
        let payload = serde_json::to_value(PhaseJob::first_attempt(run, phase, 1, None)).unwrap();
        replays.push(enqueue(&pool, NewJob::new("phase", payload).queue(&q).run_id(run)).await);
    }
    for id in replays {
        eventually(
            Duration::from_secs(30),
            "replayed job completes",
            || async { (job_state(&pool, id).await == JobState::Completed).then_some(()) },
        )
        .await;
    }
    fleet.shutdown().await;
    assert_eq!(
        count(pool.clone()).await,
        before,
        "no new artifact, event or approval"
    );
    assert_eq!(run_state(&pool, run).await, RunState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_racing_on_one_run_never_complete_a_phase_twice() {
    let pool = pool().await;
    let q = unique_queue("race");
    let run = submit(
        &pool,
        request(&q, json!({ "synthetic": { "delay_ms": 200 } })),
    )
    .await;
    // A second copy of the first phase job, as if delivered twice at once.
    let payload = serde_json::to_value(PhaseJob::first_attempt(run, "spec", 1, None)).unwrap();
    enqueue(&pool, NewJob::new("phase", payload).queue(&q).run_id(run)).await;
    let ja = claim_one(&pool, &q).await;
    let jb = claim_one(&pool, &q).await;
    let engine = Engine::new(pool.clone(), schemas(), SyntheticAgent);
    let (ra, rb) = tokio::join!(
        engine.run_phase_job(&ja, Default::default()),
        engine.run_phase_job(&jb, Default::default())
    );
    let _a = ra.unwrap();
    let _b = rb.unwrap();
    let (arts, queued_review): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM artifacts WHERE run_id = $1 AND phase_key = 'spec'),
                (SELECT count(*) FROM jobs WHERE run_id = $1 AND payload->>'phase' = 'review')",
    )
    .bind(run)
    .fetch_one(&pool)
    .await
    .unwrap();
    let completed_events = events_of(&pool, run)
        .await
        .iter()
        .filter(|e| e.kind == "phase.completed" && e.phase_key.as_deref() == Some("spec"))
        .count();
    assert_eq!(
        (arts, completed_events, queued_review),
        (1, 1, 1),
        "the phase completed once"
    );
    assert_event_log_sound(&pool, run).await;
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
async fn decisions_reject_abort_revise_and_their_idempotency() {
    let pool = pool().await;
    let q = unique_queue("decide");
    let fleet = Fleet::synthetic(&pool, &q, 1);

    // reject -> failed
    let run = submit(&pool, request(&q, json!({}))).await;
    let a = pending_approval(&pool, run).await;
    assert_eq!(
        approval::decide(
            &pool,
            &phasefleet::teams::Scope::Fleet,
            a,
            Action::Reject,
            Some("too vague"),
            Some("ann")
        )
        .await
        .unwrap(),
        Decided::Recorded
    );
    assert_eq!(
        approval::decide(
            &pool,
            &phasefleet::teams::Scope::Fleet,
            a,
            Action::Reject,
            Some("too vague"),
            Some("ann")
        )
        .await
        .unwrap(),
        Decided::AlreadyDecided
    );
    assert!(matches!(
        approval::decide(
            &pool,
            &phasefleet::teams::Scope::Fleet,
            a,
            Action::Approve,
            None,
            Some("bob")
        )
        .await,
        Err(ApprovalError::Conflict {
            existing: Action::Reject,
            ..
        })
    ));
    assert_eq!(run_state(&pool, run).await, RunState::Failed);
    let (state, json, _) = report(&pool, run).await;
    assert_eq!(state, "failed");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("rejected by ann: too vague")
    );

    // abort -> aborted
    let run = submit(&pool, request(&q, json!({}))).await;
    let a = pending_approval(&pool, run).await;
    approval::decide(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        a,
        Action::Abort,
        None,
        Some("ann"),
    )
    .await
    .unwrap();
    assert_eq!(run_state(&pool, run).await, RunState::Aborted);
    assert_eq!(report(&pool, run).await.0, "aborted");

    // revise -> the phase runs again with the comment, then approve -> completed
    let run = submit(&pool, request(&q, json!({}))).await;
    let a = pending_approval(&pool, run).await;
    assert!(matches!(
        approval::decide(
            &pool,
            &phasefleet::teams::Scope::Fleet,
            a,
            Action::Revise,
            None,
            None
        )
        .await,
        Err(ApprovalError::Invalid(_))
    ));
    approval::decide(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        a,
        Action::Revise,
        Some("cite requirement ids"),
        Some("ann"),
    )
    .await
    .unwrap();
    let a2 = eventually(Duration::from_secs(30), "second-round approval", || async {
        let mut c = pool.acquire().await.unwrap();
        approval::for_run(&mut c, run)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.round == 2 && r.action.is_none())
            .map(|r| r.id)
    })
    .await;
    assert_ne!(a, a2);
    approval::decide(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        a2,
        Action::Approve,
        None,
        Some("ann"),
    )
    .await
    .unwrap();
    wait_for(&pool, run, &[RunState::Completed]).await;
    let mut c = pool.acquire().await.unwrap();
    let review = phase_of(&mut c, run, "review").await.unwrap().unwrap();
    assert_eq!((review.round, review.state), (2, PhaseState::Completed));
    assert_eq!(report(&pool, run).await.0, "completed");
    assert_event_log_sound(&pool, run).await;

    // unknown id
    assert!(matches!(
        approval::decide(
            &pool,
            &phasefleet::teams::Scope::Fleet,
            phasefleet::ApprovalId::new(),
            Action::Approve,
            None,
            None
        )
        .await,
        Err(ApprovalError::NotFound(_))
    ));
    fleet.shutdown().await;
}

#[tokio::test]
async fn cancel_interrupts_the_in_flight_agent_and_reports() {
    let pool = pool().await;
    let q = unique_queue("cancel");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = submit(
        &pool,
        request(&q, json!({ "synthetic": { "delay_ms": 60000 } })),
    )
    .await;
    eventually(Duration::from_secs(30), "phase running", || async {
        let mut c = pool.acquire().await.unwrap();
        let p = phase_of(&mut c, run, "spec").await.unwrap().unwrap();
        (p.state == PhaseState::Running).then_some(())
    })
    .await;
    let out = phasefleet::cancel::cancel_run(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        run,
        Some("user asked"),
    )
    .await
    .unwrap();
    assert_eq!(out, phasefleet::cancel::Cancelled::Cancelled);
    assert_eq!(run_state(&pool, run).await, RunState::Cancelled);
    // The worker interrupts the agent at its next heartbeat and the job ends cancelled.
    eventually(
        Duration::from_secs(20),
        "the running job is interrupted",
        || async {
            let mut c = pool.acquire().await.unwrap();
            let jobs = queue::list(&mut c, None, Some(&q), Some(run), 10)
                .await
                .unwrap();
            jobs.iter()
                .all(|j| j.state == JobState::Cancelled)
                .then_some(())
        },
    )
    .await;
    let (state, _, _) = report(&pool, run).await;
    assert_eq!(state, "cancelled");
    let again = phasefleet::cancel::cancel_run(&pool, &phasefleet::teams::Scope::Fleet, run, None)
        .await
        .unwrap();
    assert_eq!(
        again,
        phasefleet::cancel::Cancelled::AlreadyEnded(RunState::Cancelled)
    );
    let arts: (i64,) = sqlx::query_as("SELECT count(*) FROM artifacts WHERE run_id = $1")
        .bind(run)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(arts.0, 0, "the interrupted attempt stored nothing");
    fleet.shutdown().await;
}

#[tokio::test]
async fn token_budget_parks_the_run_before_the_next_phase() {
    let pool = pool().await;
    let q = unique_queue("budget");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let mut req = request(&q, json!({ "synthetic": { "tokens": 500 } }));
    req.budget.tokens = Some(400);
    let run = submit(&pool, req).await;
    // spec spends 500 tokens; the review phase must not start.
    wait_for(
        &pool,
        run,
        &[RunState::AwaitingBudget, RunState::AwaitingApproval],
    )
    .await;
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let r = phasefleet::store::runs::runs_get(&mut c, run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, RunState::AwaitingBudget, "{r:?}");
    assert!(
        r.error
            .unwrap()
            .contains("budget exhausted: spent 500 of 400 tokens")
    );
    let review = phase_of(&mut c, run, "review").await.unwrap().unwrap();
    assert_eq!((review.state, review.attempts), (PhaseState::Pending, 0));
}

#[tokio::test]
async fn phase_timeout_fails_the_attempt_and_then_the_run() {
    let pool = pool().await;
    let q = unique_queue("timeout");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let mut req = request(&q, json!({ "synthetic": { "delay_ms": 5000 } }));
    req.template.phases[0].timeout = 1;
    let run = submit(&pool, req).await;
    wait_for(&pool, run, &[RunState::Failed]).await;
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let r = phasefleet::store::runs::runs_get(&mut c, run)
        .await
        .unwrap()
        .unwrap();
    assert!(r.error.unwrap().contains("timed out after 1s"));
    let spec = phase_of(&mut c, run, "spec").await.unwrap().unwrap();
    assert_eq!(spec.attempts, 2);
}

#[tokio::test]
async fn bad_submissions_are_refused_and_store_nothing_and_keys_are_idempotent() {
    let pool = pool().await;
    let q = unique_queue("submit");
    let mut bad = request(&q, json!({}));
    bad.bindings.insert("author".into(), "nobody".into());
    let err = phasefleet::submit::submit(&pool, &schemas(), &config(), bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SubmitError::Invalid { field, .. } if field == "bindings.author"),
        "{err}"
    );
    let mut bad = request(&q, json!({}));
    bad.bindings
        .insert("ghost".into(), "synthetic-author".into());
    assert!(
        phasefleet::submit::submit(&pool, &schemas(), &config(), bad)
            .await
            .is_err()
    );
    let mut bad = request(&q, json!({}));
    if let Some(a) = &mut bad.template.phases[0].expected_artifact {
        a.schema = "nope.v9".into();
    }
    let err = phasefleet::submit::submit(&pool, &schemas(), &config(), bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown schema id \"nope.v9\""), "{err}");
    let mut bad = request(&q, json!({}));
    bad.inputs.objective = json!([1]);
    assert!(
        phasefleet::submit::submit(&pool, &schemas(), &config(), bad)
            .await
            .is_err()
    );
    assert_eq!(
        count_in_state(&pool, &q, JobState::Ready).await,
        0,
        "nothing enqueued"
    );

    let key = format!("idem-{q}");
    let mut req = request(&q, json!({}));
    req.idempotency_key = Some(key.clone());
    let first = phasefleet::submit::submit(&pool, &schemas(), &config(), req.clone())
        .await
        .unwrap();
    let second = phasefleet::submit::submit(&pool, &schemas(), &config(), req)
        .await
        .unwrap();
    assert!(matches!(first, Submitted::Created(_)));
    assert_eq!(second, Submitted::Existing(first.run_id()));
    assert_eq!(
        count_in_state(&pool, &q, JobState::Ready).await,
        1,
        "one run, one first job"
    );
    phasefleet::cancel::cancel_run(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        first.run_id(),
        None,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn overridden_binding_is_recorded_and_used() {
    let pool = pool().await;
    let q = unique_queue("bind");
    let mut req = request(&q, json!({}));
    req.bindings
        .insert("reviewer".into(), "synthetic-author".into());
    let run = submit(&pool, req).await;
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT b.role, p.name, b.overridden FROM run_bindings b JOIN personas p ON p.hash = b.persona_hash WHERE b.run_id = $1 ORDER BY b.role",
    )
    .bind(run)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("author".into(), "synthetic-author".into(), false),
            ("reviewer".into(), "synthetic-author".into(), true)
        ]
    );
    phasefleet::cancel::cancel_run(&pool, &phasefleet::teams::Scope::Fleet, run, None)
        .await
        .unwrap();
}

/// Events have no foreign key to their run (an event is inserted only by the statement
/// that bumps its run's row, migrations/0016): pruning an ended run deletes its events
/// in the same statement, and an append for a run that does not exist inserts nothing.
#[tokio::test]
async fn pruning_an_ended_run_takes_its_events_and_no_event_is_appended_without_its_run() {
    let pool = pool().await;
    let q = unique_queue("prune-runs");
    let old = submit(&pool, request(&q, json!({}))).await;
    let recent = submit(&pool, request(&q, json!({}))).await;
    for run in [old, recent] {
        phasefleet::cancel::cancel_run(&pool, &phasefleet::teams::Scope::Fleet, run, None)
            .await
            .unwrap();
    }
    // Ended long before anything else on the shared database.
    sqlx::query("UPDATE runs SET finished_at = now() - interval '400 days' WHERE id = $1")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();
    let events_of = |run: phasefleet::RunId| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM run_events WHERE run_id = $1")
                .bind(run)
                .fetch_one(&pool)
                .await
                .unwrap();
            n
        }
    };
    assert!(events_of(old).await >= 2, "submitted and cancelled");
    let mut conn = pool.acquire().await.unwrap();
    let older_than = Duration::from_secs(300 * 86_400);
    while phasefleet::store::runs::runs_prune_ended(&mut conn, older_than, 500)
        .await
        .unwrap()
        > 0
    {}
    let (runs_left,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE id = $1")
        .bind(old)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        (runs_left, events_of(old).await),
        (0, 0),
        "the run and its events are gone"
    );
    assert!(
        events_of(recent).await >= 2,
        "a recent run keeps its events"
    );

    let nobody = phasefleet::RunId::new();
    let appended = phasefleet::store::events::events_append(
        &mut conn,
        nobody,
        &[phasefleet::events::NewEvent::run_started()],
    )
    .await
    .unwrap();
    assert!(appended.is_empty());
    assert_eq!(events_of(nobody).await, 0, "no event without its run");
}

/// The jobs a queue's workers completed, as their heartbeats report them.
async fn jobs_completed_on(pool: &sqlx::PgPool, queue: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(sum(completed), 0)::int8 FROM job_completions WHERE queue = $1",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
    .unwrap();
    n
}

/// A worker that accepts a phase goes on with the next one of the same run under the
/// same job and lease (the attempt is started in the transaction that accepts its need):
/// spec and review are one job, verify (made due by a person's approval) another.
#[tokio::test]
async fn a_worker_goes_on_with_the_next_phase_of_its_run_under_the_same_job() {
    let pool = pool().await;
    let q = unique_queue("go-on");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = submit(&pool, request(&q, json!({}))).await;
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    assert_run_completed(&pool, run).await;
    assert_event_log_sound(&pool, run).await;
    eventually(
        Duration::from_secs(15),
        "two jobs counted for three phases",
        || async { (jobs_completed_on(&pool, &q).await == 2).then_some(()) },
    )
    .await;
    // Each phase was still started once, in order, each after the one before it was
    // queued (the first by the submit, which has its own event).
    let kinds: Vec<String> = events_of(&pool, run)
        .await
        .into_iter()
        .filter(|e| e.kind == "phase.queued" || e.kind == "phase.started")
        .map(|e| format!("{} {}", e.kind, e.phase_key.unwrap_or_default()))
        .collect();
    assert_eq!(
        kinds,
        [
            "phase.started spec",
            "phase.queued review",
            "phase.started review",
            "phase.queued verify",
            "phase.started verify"
        ]
    );
    fleet.shutdown().await;
}

/// Wait until `key` of `run` is in `state`.
async fn phase_reaches(pool: &sqlx::PgPool, run: phasefleet::RunId, key: &str, state: PhaseState) {
    eventually(
        Duration::from_secs(15),
        &format!("{key} {state:?}"),
        || async {
            let mut c = pool.acquire().await.unwrap();
            let row = phase_of(&mut c, run, key).await.unwrap().unwrap();
            (row.state == state).then_some(())
        },
    )
    .await;
}

/// A run on `queue` whose spec takes `spec_ms`, once its spec is running.
async fn run_with_spec_running(
    pool: &sqlx::PgPool,
    queue: &str,
    spec_ms: u64,
) -> phasefleet::RunId {
    let extra = json!({ "synthetic": { "delay_ms": spec_ms, "delay_phases": ["spec"] } });
    let run = submit(pool, request(queue, extra)).await;
    phase_reaches(pool, run, "spec", PhaseState::Running).await;
    run
}

/// Once spec completed, review neither starts nor is kept: it waits on the queue.
async fn assert_review_waits_on_the_queue(
    pool: &sqlx::PgPool,
    queue: &str,
    run: phasefleet::RunId,
) {
    phase_reaches(pool, run, "spec", PhaseState::Completed).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut c = pool.acquire().await.unwrap();
    let review = phase_of(&mut c, run, "review").await.unwrap().unwrap();
    assert_eq!(review.state, PhaseState::Pending, "review did not start");
    assert_eq!(
        count_in_state(pool, queue, JobState::Ready).await,
        1,
        "review waits on the queue"
    );
}

/// A paused queue starts nothing new, also on a worker that could go on with its run:
/// the next phase waits as a job on the queue until the queue is resumed.
#[tokio::test]
async fn a_paused_queue_stops_a_worker_from_going_on_with_the_next_phase() {
    let pool = pool().await;
    let q = unique_queue("go-on-paused");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = run_with_spec_running(&pool, &q, 1_500).await;
    let mut c = pool.acquire().await.unwrap();
    queue::pause(&mut c, &q, Some("tests")).await.unwrap();
    assert_review_waits_on_the_queue(&pool, &q, run).await;
    queue::resume(&mut c, &q).await.unwrap();
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    assert_run_completed(&pool, run).await;
    fleet.shutdown().await;
}

/// A draining worker finishes the phase it runs and goes on with nothing: the next phase
/// waits on the queue until the worker is undrained.
#[tokio::test]
async fn a_draining_worker_does_not_go_on_with_the_next_phase() {
    let pool = pool().await;
    let q = unique_queue("go-on-drain");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = run_with_spec_running(&pool, &q, 4_000).await;
    let (worker,): (phasefleet::WorkerId,) =
        sqlx::query_as("SELECT id FROM workers WHERE $1 = ANY(queues) AND stopped_at IS NULL")
            .bind(&q)
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut c = pool.acquire().await.unwrap();
    phasefleet::queue::workers::drain(&mut c, Some(worker))
        .await
        .unwrap();
    assert_review_waits_on_the_queue(&pool, &q, run).await;
    phasefleet::queue::workers::undrain(&mut c, Some(worker))
        .await
        .unwrap();
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
}

/// Someone asked to cancel the job while its phase was being recorded: the request was
/// meant for that phase, so the job is not handed over to the next one (which would
/// then be interrupted and left running with no job); the next phase is enqueued.
#[tokio::test]
async fn a_job_asked_to_cancel_is_not_handed_over_to_the_next_phase() {
    let pool = pool().await;
    let q = unique_queue("go-on-cancel");
    let run = submit(&pool, request(&q, json!({}))).await;
    let job = claim_one(&pool, &q).await;
    let mut c = pool.acquire().await.unwrap();
    sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1")
        .bind(job.id)
        .execute(&mut *c)
        .await
        .unwrap();
    let engine = Engine::new(pool.clone(), schemas(), SyntheticAgent);
    let _completed = engine
        .run_phase_job_going_on(&job, Default::default(), &|| true)
        .await
        .unwrap();
    let review = phase_of(&mut c, run, "review").await.unwrap().unwrap();
    assert_eq!(review.state, PhaseState::Pending, "review was not started");
    assert_eq!(
        count_in_state(&pool, &q, JobState::Ready).await,
        1,
        "review waits on the queue"
    );
    assert_eq!(
        job_state(&pool, job.id).await,
        JobState::Completed,
        "spec's job is done"
    );
}

/// A connection listening to the channel that wakes live event streams.
async fn events_listener(pool: &sqlx::PgPool) -> sqlx::postgres::PgListener {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool)
        .await
        .unwrap();
    listener
        .listen(phasefleet::events::EVENTS_CHANNEL)
        .await
        .unwrap();
    listener
}

/// The notifications `listener` gets for `runs` until each run's last announced seq is
/// `want` (or 10 s pass): the last seq heard per run.
async fn heard_up_to(
    listener: &mut sqlx::postgres::PgListener,
    want: &std::collections::HashMap<phasefleet::RunId, i64>,
) -> std::collections::HashMap<phasefleet::RunId, i64> {
    let mut heard = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while want.iter().any(|(run, seq)| heard.get(run) != Some(seq)) {
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, listener.recv()).await else {
            break;
        };
        let Some((run, seq)) = n.payload().split_once(':') else {
            continue;
        };
        let (Ok(run), Ok(seq)) = (run.parse::<phasefleet::RunId>(), seq.parse::<i64>()) else {
            continue;
        };
        if want.contains_key(&run) {
            let last = heard.entry(run).or_insert(seq);
            *last = (*last).max(seq);
        }
    }
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_streams_hear_of_every_phase_after_its_commit() {
    let pool = pool().await;
    let mut listener = events_listener(&pool).await;
    let q = unique_queue("wake-ups");
    let fleet = Fleet::synthetic(&pool, &q, 2);
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(submit(&pool, request(&q, json!({}))).await);
    }
    let mut want = std::collections::HashMap::new();
    for run in &runs {
        assert_eq!(drive(&pool, *run).await, RunState::Completed);
        let last = events_of(&pool, *run).await.last().map(|e| e.seq).unwrap();
        want.insert(*run, last);
    }
    // Each run's last event is announced (the phases announce theirs after their
    // commits, and nothing polls here).
    assert_eq!(heard_up_to(&mut listener, &want).await, want);
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wake_ups_announced_at_once_by_many_callers_all_reach_the_streams() {
    let pool = pool().await;
    let mut listener = events_listener(&pool).await;
    let wake_ups = phasefleet::events::StreamWakeUps::new(pool.clone());
    let runs: Vec<phasefleet::RunId> = (0..40).map(|_| phasefleet::RunId::new()).collect();
    let mut set = tokio::task::JoinSet::new();
    for (i, run) in runs.iter().enumerate() {
        for seq in 1..=10 {
            let (wake_ups, run) = (wake_ups.clone(), *run);
            set.spawn(async move {
                tokio::time::sleep(Duration::from_millis((i as u64 * 7 + seq as u64 * 3) % 20))
                    .await;
                wake_ups.after_commit(run, seq);
            });
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let want: std::collections::HashMap<_, _> = runs.iter().map(|r| (*r, 10)).collect();
    assert_eq!(heard_up_to(&mut listener, &want).await, want);
}

/// A worker parses each template once and keeps it by hash: one worker process serves
/// runs of two versions of the example, each by its own definition. The gated version
/// waits on its approval while the ungated one, submitted after it, completes.
#[tokio::test]
async fn one_worker_serves_two_versions_of_a_template_each_by_its_own_definition() {
    let pool = pool().await;
    let q = unique_queue("two-versions");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let gated = submit(&pool, request(&q, json!({}))).await;
    wait_for(&pool, gated, &[RunState::AwaitingApproval]).await;
    let mut ungated = request(&q, json!({}));
    ungated.template.version = format!("{}-ungated", ungated.template.version);
    for phase in &mut ungated.template.phases {
        phase.gates.clear();
        phase.deadline = None;
        phase.on_timeout = None;
        phase.escalate_to = None;
    }
    let ungated = submit(&pool, ungated).await;
    wait_for(&pool, ungated, &[RunState::Completed]).await;
    assert_eq!(run_state(&pool, gated).await, RunState::AwaitingApproval);
    let approvals = |run| {
        let pool = pool.clone();
        async move {
            let mut c = pool.acquire().await.unwrap();
            approval::for_run(&mut c, run).await.unwrap().len()
        }
    };
    assert_eq!((approvals(gated).await, approvals(ungated).await), (1, 0));
    fleet.shutdown().await;
}

/// What goes wrong while B, C and D queue behind A's recording.
#[derive(Clone, Copy, PartialEq)]
enum Behind {
    Nothing,
    /// D's lease is taken.
    DLosesItsLease,
    /// The run of the three that their shared transaction records first is held by
    /// another transaction until the other two are recorded.
    FirstOfThemHeld,
}

/// Four runs whose first attempts one worker records with a single recorder: run A's
/// attempt ends first (2 s) and its recording waits on A's row, held by the test, while
/// the attempts of B, C and D end (3 s) and queue behind it; `behind` goes wrong
/// meanwhile. Returns the runs and each attempt's result, once the rows are released.
async fn record_three_behind_a_held_run(
    pool: &sqlx::PgPool,
    behind: Behind,
) -> (
    Vec<phasefleet::RunId>,
    Vec<Result<queue::Completed, phasefleet::phase::PhaseError>>,
) {
    let q = unique_queue("recorder");
    let mut runs = Vec::new();
    for delay_ms in [2000, 3000, 3000, 3000] {
        let extra = json!({ "synthetic": { "delay_ms": delay_ms } });
        runs.push(submit(pool, request(&q, extra)).await);
    }
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(claim_one(pool, &q).await);
    }
    jobs.sort_by_key(|j| runs.iter().position(|r| Some(*r) == j.run_id));
    let engine = Engine::new(pool.clone(), schemas(), SyntheticAgent).with_recorders(1);
    let spawned = tokio::time::Instant::now();
    let attempts: Vec<_> = jobs
        .iter()
        .map(|job| {
            let (engine, job) = (engine.clone(), job.clone());
            tokio::spawn(async move { engine.run_phase_job(&job, Default::default()).await })
        })
        .collect();
    for run in &runs {
        phase_reaches(pool, *run, "spec", PhaseState::Running).await;
    }
    let (hold, holder) = hold_run(pool, runs[0]).await;
    if behind == Behind::DLosesItsLease {
        sqlx::query("UPDATE jobs SET lease_token = lease_token + 1 WHERE id = $1")
            .bind(jobs[3].id)
            .execute(pool)
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(15),
        "A's recording waits on its run",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks
                  WHERE locktype = 'transactionid' AND NOT granted AND transactionid::text = $1",
            )
            .bind(&holder)
            .fetch_one(pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    // B, C and D end at 3 s and queue behind A.
    tokio::time::sleep_until(spawned + Duration::from_millis(4500)).await;
    let first_of_them = runs[1..].iter().min().copied();
    let held = match (behind, first_of_them) {
        (Behind::FirstOfThemHeld, Some(first)) => Some((first, hold_run(pool, first).await.0)),
        _ => None,
    };
    hold.commit().await.unwrap();
    if let Some((first, hold)) = held {
        let others: Vec<_> = runs[1..].iter().filter(|r| **r != first).collect();
        eventually(
            Duration::from_secs(10),
            "the others of the group are recorded while the first one's run is held",
            || async {
                for run in &others {
                    artifact_transaction(pool, **run).await?;
                }
                Some(())
            },
        )
        .await;
        assert_eq!(artifact_transaction(pool, first).await, None);
        hold.commit().await.unwrap();
    }
    let mut results = Vec::new();
    for attempt in attempts {
        results.push(attempt.await.unwrap());
    }
    (runs, results)
}

/// Hold `run`'s row in a transaction of the test's; returns it and its id.
async fn hold_run(
    pool: &sqlx::PgPool,
    run: phasefleet::RunId,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, String) {
    let mut hold = pool.begin().await.unwrap();
    let holder: String =
        sqlx::query_scalar("SELECT pg_current_xact_id()::text FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run)
            .fetch_one(&mut *hold)
            .await
            .unwrap();
    (hold, holder)
}

/// The transaction that stored each run's artifact of its first phase, if one did.
async fn artifact_transaction(pool: &sqlx::PgPool, run: phasefleet::RunId) -> Option<String> {
    sqlx::query_scalar("SELECT xmin::text FROM artifacts WHERE run_id = $1 AND phase_key = 'spec'")
        .bind(run)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attempts_that_end_while_the_recorder_is_busy_share_one_transaction() {
    let pool = pool().await;
    let (runs, results) = record_three_behind_a_held_run(&pool, Behind::Nothing).await;
    for result in results {
        let _completed = result.unwrap();
    }
    let mut recorded_in = Vec::new();
    for run in &runs {
        recorded_in.push(artifact_transaction(&pool, *run).await.unwrap());
        phase_reaches(&pool, *run, "spec", PhaseState::Completed).await;
        assert_event_log_sound(&pool, *run).await;
    }
    assert_ne!(recorded_in[0], recorded_in[1], "A was recorded alone");
    assert_eq!(
        (&recorded_in[1], &recorded_in[2]),
        (&recorded_in[3], &recorded_in[3]),
        "B, C and D, queued behind A, were recorded in one transaction"
    );
}

/// A run row held by another transaction (an approval's decision, an operator) stops
/// the shared transaction that records it at the group's lock timeout (2 s), not for as
/// long as it is held: the group rolls back and its attempts are recorded alone, all at
/// once, so the others are recorded while the row is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_held_by_another_transaction_keeps_the_rest_of_its_group_waiting_at_most_seconds() {
    let pool = pool().await;
    let (runs, results) = record_three_behind_a_held_run(&pool, Behind::FirstOfThemHeld).await;
    let mut recorded_in = Vec::new();
    for (run, result) in runs.iter().zip(results) {
        let _completed = result.unwrap();
        recorded_in.push(artifact_transaction(&pool, *run).await.unwrap());
        phase_reaches(&pool, *run, "spec", PhaseState::Completed).await;
        assert_event_log_sound(&pool, *run).await;
    }
    recorded_in.sort();
    recorded_in.dedup();
    assert_eq!(recorded_in.len(), 4, "each attempt was recorded alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_lease_in_a_shared_record_transaction_costs_the_other_attempts_nothing() {
    let pool = pool().await;
    let (runs, mut results) = record_three_behind_a_held_run(&pool, Behind::DLosesItsLease).await;
    let lost = results.pop().unwrap();
    assert!(
        matches!(lost, Err(phasefleet::phase::PhaseError::Queue(_))),
        "D's lease was taken: {lost:?}"
    );
    assert_eq!(
        artifact_transaction(&pool, runs[3]).await,
        None,
        "nothing of D's attempt was written"
    );
    phase_reaches(&pool, runs[3], "spec", PhaseState::Running).await;
    for (run, result) in runs.iter().zip(results) {
        let _completed = result.unwrap();
        assert!(artifact_transaction(&pool, *run).await.is_some());
        phase_reaches(&pool, *run, "spec", PhaseState::Completed).await;
        assert_event_log_sound(&pool, *run).await;
    }
}
