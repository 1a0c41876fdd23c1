//! Workflows that are graphs: parallel phases and their joins, fan-outs over an
//! artifact's array, conditions, gates per branch, cancel, operator retry; on the
//! shared database, with workers racing (in-process and as killed processes).
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::RunId;
use phasefleet::approval::{self, Action};
use phasefleet::state::{PhaseState, RunState};
use phasefleet::teams::Scope;
use phasefleet::workflow::{Definition, WorkflowTemplate};
use serde_json::{Value, json};
use std::time::Duration;
use support::engine::{self, Fleet};
use support::*;

/// A template from YAML phases (roles author and reviewer, synthetic personas).
fn template(phases: &str) -> WorkflowTemplate {
    let text = format!(
        "name: dag\nversion: '1'\nroles:\n  author: {{ persona: synthetic-author }}\n  reviewer: {{ persona: synthetic-reviewer }}\nphases:\n{phases}"
    );
    WorkflowTemplate::from_str_named("dag.yaml", &text).unwrap()
}

/// a -> {b, c} -> d
const DIAMOND: &str = "
  - { key: a, role: author, instructions: write, expected_artifact: { path: a.json, schema: spec.v1 } }
  - { key: b, role: reviewer, needs: [a], instructions: review, expected_artifact: { path: b.json, schema: review.v1 } }
  - { key: c, role: reviewer, needs: [a], instructions: review, expected_artifact: { path: c.json, schema: review.v1 } }
  - { key: d, role: author, needs: [b, c], instructions: plan, expected_artifact: { path: d.json, schema: verify.v1 } }
";

async fn submit(pool: &sqlx::PgPool, queue: &str, t: &WorkflowTemplate, extra: Value) -> RunId {
    let mut req = engine::request(queue, extra);
    req.template = t.clone();
    engine::submit(pool, req).await
}

/// How many events of `kind` the run has for `phase`.
fn count(events: &[phasefleet::events::Event], kind: &str, phase: &str) -> usize {
    events
        .iter()
        .filter(|e| e.kind == kind && e.phase_key.as_deref() == Some(phase))
        .count()
}

async fn phase_state(pool: &sqlx::PgPool, run: RunId, key: &str) -> PhaseState {
    let mut c = pool.acquire().await.unwrap();
    engine::phase_of(&mut c, run, key)
        .await
        .unwrap()
        .unwrap()
        .state
}

async fn assert_phase(pool: &sqlx::PgPool, run: RunId, key: &str, state: PhaseState) {
    assert_eq!(phase_state(pool, run, key).await, state, "phase {key}");
}

/// Wait until the run ends (nobody approves anything); it must have completed.
async fn ends_completed(pool: &sqlx::PgPool, run: RunId) {
    let ended = [
        RunState::Completed,
        RunState::Failed,
        RunState::Aborted,
        RunState::Cancelled,
    ];
    let state = engine::wait_for(pool, run, &ended).await;
    assert_eq!(
        state,
        RunState::Completed,
        "{}",
        engine::error_of(pool, run).await
    );
}

/// The prompt the recorded agent was given for `phase`.
fn envelope_of<A>(agent: &engine::Recording<A>, phase: &str) -> String {
    agent
        .envelopes
        .lock()
        .unwrap()
        .iter()
        .find(|(p, ..)| p == phase)
        .map(|(.., e)| e.clone())
        .unwrap_or_else(|| panic!("no prompt for {phase}"))
}

async fn assert_invariants(pool: &sqlx::PgPool, runs: &[RunId]) {
    let mut c = pool.acquire().await.unwrap();
    let violations = phasefleet::store::invariants::check(&mut c, Some(runs), 5.0)
        .await
        .unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test]
async fn a_diamond_starts_its_join_exactly_once_per_run_with_workers_racing() {
    let pool = pool().await;
    let q = unique_queue("diamond");
    let t = template(DIAMOND);
    // In even runs b and c take the same time, so their acceptances race for the join;
    // in odd runs c takes longer, so the join must wait for it.
    let mut runs = Vec::new();
    for i in 0..100 {
        let extra = if i % 2 == 0 {
            json!({"synthetic": {"delay_ms": 30}})
        } else {
            json!({"synthetic": {"delay_ms": 1500, "delay_phases": ["c"]}})
        };
        runs.push(submit(&pool, &q, &t, extra).await);
    }
    let fleet = Fleet::start(
        &pool,
        &q,
        4,
        8,
        phasefleet::agent::synthetic::SyntheticAgent,
    );
    for run in &runs {
        ends_completed(&pool, *run).await;
    }
    fleet.shutdown().await;
    let mut overlapped = 0;
    for run in &runs {
        let events = engine::events_of(&pool, *run).await;
        assert_eq!(
            count(&events, "phase.queued", "d"),
            1,
            "run {run}: d queued once"
        );
        assert_eq!(
            count(&events, "phase.started", "d"),
            1,
            "run {run}: d started once"
        );
        assert_eq!(count(&events, "phase.completed", "d"), 1);
        // b and c ran side by side when both started before either completed.
        let seq = |kind: &str, phase: &str| {
            events
                .iter()
                .find(|e| e.kind == kind && e.phase_key.as_deref() == Some(phase))
                .map(|e| e.seq)
                .unwrap()
        };
        // d is queued by the transaction that accepts its last need, and not before.
        let needs_done = seq("phase.completed", "b").max(seq("phase.completed", "c"));
        assert!(
            seq("phase.queued", "d") > needs_done && seq("phase.started", "d") > needs_done,
            "run {run}: d queued or started before both its needs completed"
        );
        if seq("phase.started", "b").max(seq("phase.started", "c"))
            < seq("phase.completed", "b").min(seq("phase.completed", "c"))
        {
            overlapped += 1;
        }
        engine::assert_run_completed(&pool, *run).await;
    }
    assert!(
        overlapped > 50,
        "b and c ran in parallel in {overlapped} of 100 runs"
    );
    assert_invariants(&pool, &runs).await;
}

/// spec -> verify (one item per requirement) -> summary
const FAN_OUT: &str = "
  - { key: spec, role: author, instructions: write, expected_artifact: { path: spec.json, schema: spec.v1 } }
  - key: verify
    role: author
    instructions: check one requirement
    fan_out: { over: 'spec#/requirements', as: requirement, max_items: 25 }
    expected_artifact: { path: check.json, schema: check.v1 }
  - { key: summary, role: reviewer, instructions: sum up, expected_artifact: { path: summary.json, schema: summary.v1 } }
";

#[tokio::test]
async fn a_fan_out_survives_killed_workers_completing_each_item_once_and_gathering_in_order() {
    let pool = pool().await;
    let q = unique_queue("fanout");
    let t = template(FAN_OUT);
    let run = submit(
        &pool,
        &q,
        &t,
        json!({"synthetic": {"array_items": 20, "delay_ms": 400}}),
    )
    .await;
    let args = FAST_WORKER;
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|_| WorkerProcess::spawn(&test_db_url(), &q, args))
        .collect();
    // SIGKILL a worker every 700 ms while the items run, and start another.
    let mut kills = 0;
    while !engine::run_state(&pool, run).await.is_terminal() && kills < 40 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let items_started: (i64,) = sqlx::query_as(
            "SELECT count(*) FROM run_phases WHERE run_id = $1 AND parent = 'verify' AND state <> 'pending'",
        )
        .bind(run)
        .fetch_one(&pool)
        .await
        .unwrap();
        if items_started.0 == 0 {
            continue;
        }
        let victim = fastrand::usize(..workers.len());
        workers[victim].signal("KILL");
        let _ = workers[victim].child.wait().await;
        workers[victim] = WorkerProcess::spawn(&test_db_url(), &q, args);
        kills += 1;
    }
    assert!(
        kills >= 3,
        "workers were killed during the fan-out ({kills})"
    );
    // An item whose worker was killed on each of its 5 deliveries is dead-lettered and
    // fails the run (poison-job protection); the operator re-opens it, as in the chaos
    // test, and the items already accepted are not run again.
    let ended = [RunState::Completed, RunState::Failed];
    if engine::wait_for(&pool, run, &ended).await == RunState::Failed {
        let error = engine::error_of(&pool, run).await;
        assert!(error.contains("worker lost"), "{error}");
        phasefleet::retry::retry_failed_run(&pool, run, Some("tests"), false)
            .await
            .unwrap();
    }
    ends_completed(&pool, run).await;
    drop(workers);
    let events = engine::events_of(&pool, run).await;
    assert_eq!(count(&events, "phase.fanned_out", "verify"), 1);
    for i in 0..20 {
        let key = format!("verify[{i}]");
        assert_eq!(
            count(&events, "phase.completed", &key),
            1,
            "{key} completed once"
        );
    }
    let (valid,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM artifacts WHERE run_id = $1 AND phase_key LIKE 'verify[%' AND valid",
    )
    .bind(run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(valid, 20, "one accepted artifact per item");
    // The gathered artifact: complete and in element order.
    let mut c = pool.acquire().await.unwrap();
    let gathered = phasefleet::store::artifacts::artifacts_accepted_content(&mut c, run, "verify")
        .await
        .unwrap()
        .unwrap();
    let gathered: Vec<Value> = serde_json::from_str(&gathered).unwrap();
    let order: Vec<&str> = gathered
        .iter()
        .map(|a| a["synthetic_phase"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("verify[{i}]")).collect();
    assert_eq!(order, expected);
    drop(c);
    assert_invariants(&pool, &[run]).await;
    // The summary saw the gathered array; each item saw its own element.
    let (_, report, markdown) = engine::report(&pool, run).await;
    assert_eq!(report["state"], "completed");
    assert!(markdown.contains("verify x20"), "{markdown}");
}

#[tokio::test]
async fn each_item_is_given_its_element_and_later_phases_the_gathered_array() {
    let pool = pool().await;
    let q = unique_queue("fanout-envelope");
    let t = template(FAN_OUT);
    let run = submit(&pool, &q, &t, json!({"synthetic": {"array_items": 3}})).await;
    let agent = engine::Recording::<phasefleet::agent::synthetic::SyntheticAgent>::default();
    let fleet = Fleet::start(&pool, &q, 1, 4, agent.clone());
    assert_eq!(engine::drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let item = envelope_of(&agent, "verify[2]");
    assert!(item.contains("## Your requirement"), "{item}");
    assert!(item.contains("element 2 of spec#/requirements"), "{item}");
    assert!(item.contains("\"id\": \"R3\""), "{item}");
    assert!(
        !item.contains("\"id\": \"R1\"\n"),
        "only its own element is quoted as the item"
    );
    let summary = envelope_of(&agent, "summary");
    assert!(summary.contains("### verify (check.json)"), "{summary}");
    assert!(
        summary.contains("verify[2]"),
        "the gathered array holds each item's artifact"
    );
    // Gathering is bounded: past its byte limit it stores nothing and says how much.
    let mut c = pool.acquire().await.unwrap();
    let g = phasefleet::store::artifacts::Gathered {
        run,
        phase: "verify",
        round: 2,
        path: "check.json",
        schema_id: "check.v1",
        max_bytes: 100,
    };
    let refused = phasefleet::store::artifacts::artifacts_gather(&mut c, &g)
        .await
        .unwrap();
    assert!(matches!(refused, Err(size) if size > 100), "{refused:?}");
    let (stored,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM artifacts WHERE run_id = $1 AND phase_key = 'verify' AND round = 2",
    )
    .bind(run)
    .fetch_one(&mut *c)
    .await
    .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn a_fan_out_over_a_longer_array_than_allowed_fails_the_run_naming_the_phase() {
    let pool = pool().await;
    let q = unique_queue("fanout-big");
    let t = template(&FAN_OUT.replace("max_items: 25", "max_items: 5"));
    let run = submit(&pool, &q, &t, json!({"synthetic": {"array_items": 6}})).await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    assert_eq!(engine::drive(&pool, run).await, RunState::Failed);
    fleet.shutdown().await;
    let error = engine::error_of(&pool, run).await;
    assert!(
        error.contains("phase verify cannot fan out")
            && error.contains("6 elements, more than max_items (5)"),
        "{error}"
    );
    assert_phase(&pool, run, "verify", PhaseState::Failed).await;
    assert_phase(&pool, run, "summary", PhaseState::Skipped).await;
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn a_phase_whose_condition_does_not_hold_is_skipped_and_what_needs_it_goes_on() {
    let pool = pool().await;
    let q = unique_queue("when");
    // The synthetic review's verdict is "accept" (its schema's first value).
    let t = template(
        "
  - { key: a, role: author, instructions: write, expected_artifact: { path: a.json, schema: spec.v1 } }
  - { key: review, role: reviewer, instructions: review, expected_artifact: { path: r.json, schema: review.v1 } }
  - key: rework
    role: author
    instructions: rework
    when: { artifact: review, pointer: /verdict, equals: reject }
    expected_artifact: { path: rework.json, schema: spec.v1 }
  - key: rework_followup
    role: author
    instructions: follow up the rework
    expected_artifact: { path: followup.json, schema: spec.v1 }
  - key: ship
    role: author
    needs: [rework_followup]
    when: { artifact: review, pointer: /verdict, in: [accept, accept_with_changes] }
    instructions: ship
    expected_artifact: { path: ship.json, schema: verify.v1 }
",
    );
    let run = submit(&pool, &q, &t, json!({})).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    assert_eq!(engine::drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    assert_phase(&pool, run, "rework", PhaseState::Skipped).await;
    // A phase that needs a skipped phase runs (its need is satisfied).
    assert_phase(&pool, run, "rework_followup", PhaseState::Completed).await;
    assert_phase(&pool, run, "ship", PhaseState::Completed).await;
    let events = engine::events_of(&pool, run).await;
    let skipped = events.iter().find(|e| e.kind == "phase.skipped").unwrap();
    assert_eq!(skipped.phase_key.as_deref(), Some("rework"));
    assert_eq!(
        skipped.data["condition"],
        "review#/verdict equals \"reject\""
    );
    assert_eq!(count(&events, "phase.started", "rework"), 0);
    let (_, _, markdown) = engine::report(&pool, run).await;
    assert!(
        markdown.contains("p2[\"rework<br/>skipped\"]") && markdown.contains("class p2 skipped"),
        "{markdown}"
    );
    assert_invariants(&pool, &[run]).await;
}

/// a -> {b (gated), c (gated)} -> d
const TWO_GATES: &str = "
  - { key: a, role: author, instructions: write, expected_artifact: { path: a.json, schema: spec.v1 } }
  - { key: b, role: reviewer, needs: [a], gates: [legal], instructions: review, expected_artifact: { path: b.json, schema: review.v1 } }
  - { key: c, role: reviewer, needs: [a], gates: [security], instructions: review, expected_artifact: { path: c.json, schema: review.v1 } }
  - { key: e, role: author, needs: [a], instructions: slow branch, expected_artifact: { path: e.json, schema: spec.v1 } }
  - { key: d, role: author, needs: [b, c, e], instructions: plan, expected_artifact: { path: d.json, schema: verify.v1 } }
";

async fn decide(pool: &sqlx::PgPool, run: RunId, phase: &str, action: Action) {
    let mut c = pool.acquire().await.unwrap();
    let request = approval::for_run(&mut c, run)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.phase_key == phase && a.action.is_none())
        .max_by_key(|a| a.round)
        .unwrap();
    drop(c);
    let comment = (action == Action::Revise).then_some("again, please");
    approval::decide(
        pool,
        &Scope::Fleet,
        request.id,
        action,
        comment,
        Some("tests"),
    )
    .await
    .unwrap();
}

async fn wait_phase(pool: &sqlx::PgPool, run: RunId, key: &str, state: PhaseState) {
    eventually(
        Duration::from_secs(30),
        &format!("{key} is {state}"),
        || async { (phase_state(pool, run, key).await == state).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_gate_on_one_branch_waits_while_other_branches_go_on_and_each_approval_moves_only_its_branch()
 {
    let pool = pool().await;
    let q = unique_queue("branch-gates");
    let t = template(TWO_GATES);
    // e is slow: b and c park while it is queued or runs, and the run keeps running
    // until it ends.
    let extra = json!({"synthetic": {"delay_ms": 4000, "delay_phases": ["e"]}});
    let run = submit(&pool, &q, &t, extra).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    wait_phase(&pool, run, "b", PhaseState::AwaitingApproval).await;
    wait_phase(&pool, run, "c", PhaseState::AwaitingApproval).await;
    let e = phase_state(&pool, run, "e").await;
    assert!(
        matches!(e, PhaseState::Pending | PhaseState::Running),
        "e is {e}"
    );
    assert_eq!(engine::run_state(&pool, run).await, RunState::Running);
    wait_phase(&pool, run, "e", PhaseState::Completed).await;
    // Nothing else can move: the run waits on its two requests.
    assert_eq!(
        engine::wait_for(&pool, run, &[RunState::AwaitingApproval]).await,
        RunState::AwaitingApproval
    );
    // Approving b does not advance c's branch, and d still waits for c.
    decide(&pool, run, "b", Action::Approve).await;
    assert_phase(&pool, run, "b", PhaseState::Completed).await;
    assert_phase(&pool, run, "c", PhaseState::AwaitingApproval).await;
    assert_phase(&pool, run, "d", PhaseState::Pending).await;
    assert_eq!(
        engine::run_state(&pool, run).await,
        RunState::AwaitingApproval
    );
    // Revising c runs c again while the run is running; its new round parks again.
    decide(&pool, run, "c", Action::Revise).await;
    assert_eq!(engine::run_state(&pool, run).await, RunState::Running);
    wait_phase(&pool, run, "c", PhaseState::AwaitingApproval).await;
    decide(&pool, run, "c", Action::Approve).await;
    assert_eq!(engine::drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let events = engine::events_of(&pool, run).await;
    assert_eq!(count(&events, "phase.started", "d"), 1);
    let d_started = events
        .iter()
        .find(|e| e.kind == "phase.started" && e.phase_key.as_deref() == Some("d"))
        .unwrap()
        .seq;
    let last_decision = events
        .iter()
        .filter(|e| e.kind == "approval.decided")
        .map(|e| e.seq)
        .max()
        .unwrap();
    assert!(d_started > last_decision, "d started only after both gates");
    engine::assert_run_completed(&pool, run).await;
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn a_branch_waits_at_its_gate_while_the_other_branch_still_runs() {
    let pool = pool().await;
    let q = unique_queue("gate-and-run");
    let t = template(
        "
  - { key: a, role: author, instructions: write, expected_artifact: { path: a.json, schema: spec.v1 } }
  - { key: b, role: reviewer, needs: [a], gates: [legal], instructions: review, expected_artifact: { path: b.json, schema: review.v1 } }
  - { key: slow, role: author, needs: [a], instructions: slow, expected_artifact: { path: s.json, schema: spec.v1 } }
",
    );
    let extra = json!({"synthetic": {"delay_ms": 3000, "delay_phases": ["slow"]}});
    let run = submit(&pool, &q, &t, extra).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    wait_phase(&pool, run, "b", PhaseState::AwaitingApproval).await;
    // slow still runs: so does the run, and the request is in the approvers' inbox.
    assert_eq!(engine::run_state(&pool, run).await, RunState::Running);
    let mut c = pool.acquire().await.unwrap();
    let inbox = approval::pending(&mut c, &Scope::Fleet, 1000)
        .await
        .unwrap();
    drop(c);
    assert!(
        inbox.iter().any(|a| a.run_id == run && a.phase_key == "b"),
        "the gate of a branch is listed while another branch runs"
    );
    decide(&pool, run, "b", Action::Approve).await;
    assert_phase(&pool, run, "b", PhaseState::Completed).await;
    assert_eq!(engine::run_state(&pool, run).await, RunState::Running);
    ends_completed(&pool, run).await;
    fleet.shutdown().await;
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn cancel_stops_every_branch() {
    let pool = pool().await;
    let q = unique_queue("dag-cancel");
    let t = template(DIAMOND);
    let extra = json!({"synthetic": {"delay_ms": 60000, "delay_phases": ["b", "c"]}});
    let run = submit(&pool, &q, &t, extra).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    wait_phase(&pool, run, "b", PhaseState::Running).await;
    wait_phase(&pool, run, "c", PhaseState::Running).await;
    phasefleet::cancel::cancel_run(&pool, &Scope::Fleet, run, Some("enough"))
        .await
        .unwrap();
    // Both branches' workers are told at once: their jobs end without waiting 60 s.
    eventually(
        Duration::from_secs(10),
        "no job of the run is left running",
        || async {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM jobs WHERE run_id = $1 AND state IN ('ready', 'running')",
            )
            .bind(run)
            .fetch_one(&pool)
            .await
            .unwrap();
            (n == 0).then_some(())
        },
    )
    .await;
    fleet.shutdown().await;
    assert_eq!(engine::run_state(&pool, run).await, RunState::Cancelled);
    for key in ["b", "c", "d"] {
        assert_phase(&pool, run, key, PhaseState::Skipped).await;
    }
    let events = engine::events_of(&pool, run).await;
    assert_eq!(count(&events, "phase.queued", "d"), 0);
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn an_operator_retry_reopens_the_failed_branch_and_restarts_the_one_the_failure_cut_off() {
    let pool = pool().await;
    let q = unique_queue("dag-retry");
    let t = template(DIAMOND);
    // b never writes a valid artifact in round 1; c is slow, so b's failure cuts it off.
    let extra = json!({"synthetic": {"invalid_rounds": 1, "invalid_phases": ["b"],
                                     "delay_ms": 1500, "delay_phases": ["c"]}});
    let run = submit(&pool, &q, &t, extra).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    assert_eq!(
        engine::wait_for(&pool, run, &[RunState::Failed]).await,
        RunState::Failed
    );
    assert_phase(&pool, run, "b", PhaseState::Failed).await;
    assert_phase(&pool, run, "c", PhaseState::Skipped).await;
    let retried = phasefleet::retry::retry_failed_run(&pool, run, Some("ops"), false)
        .await
        .unwrap();
    assert_eq!((retried.phase.as_str(), retried.round), ("b", 2));
    assert_eq!(engine::drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let events = engine::events_of(&pool, run).await;
    assert_eq!(
        count(&events, "phase.completed", "a"),
        1,
        "a is not run again"
    );
    assert_eq!(
        count(&events, "phase.completed", "c"),
        1,
        "c ran again, in round 2"
    );
    assert_eq!(count(&events, "phase.started", "d"), 1);
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn parallel_branches_that_run_out_of_budget_wait_together_and_resume_together() {
    let pool = pool().await;
    let q = unique_queue("dag-budget");
    let t = template(DIAMOND);
    // Each attempt reports 100 tokens; a's spends the budget, so b and c both park.
    let mut req = engine::request(&q, json!({"synthetic": {"tokens": 100}}));
    req.template = t;
    req.budget.tokens = Some(100);
    let run = engine::submit(&pool, req).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    assert_eq!(
        engine::wait_for(&pool, run, &[RunState::AwaitingBudget]).await,
        RunState::AwaitingBudget
    );
    // Both branches' jobs are kept by the park (neither is lost).
    eventually(
        Duration::from_secs(10),
        "both branches are parked",
        || async {
            let (parked,): (Option<Value>,) =
                sqlx::query_as("SELECT parked_job FROM runs WHERE id = $1")
                    .bind(run)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let phases: Vec<String> = parked?
                .as_array()?
                .iter()
                .filter_map(|j| j["phase"].as_str().map(str::to_owned))
                .collect();
            (phases.len() == 2
                && phases.contains(&"b".to_owned())
                && phases.contains(&"c".to_owned()))
            .then_some(())
        },
    )
    .await;
    let outcome = phasefleet::budget::decide(
        &pool,
        &Scope::Fleet,
        run,
        &phasefleet::budget::BudgetDecision::Raise {
            usd: None,
            tokens: Some(10_000),
        },
        Some("tests"),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome,
        phasefleet::budget::BudgetOutcome::Raised { resumed: true }
    );
    assert_eq!(engine::drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    engine::assert_run_completed(&pool, run).await;
    assert_invariants(&pool, &[run]).await;
}

#[test]
fn graph_mistakes_are_refused_naming_the_phase_and_field() {
    let cases = [
        (
            "  - { key: a, role: author, needs: [b], instructions: x }\n  - { key: b, role: author, needs: [a], instructions: x }\n",
            "phases[0].needs",
            "cycle: a needs b needs a",
        ),
        (
            "  - { key: a, role: author, instructions: x }\n  - { key: b, role: author, needs: [ghost], instructions: x }\n",
            "phases[1].needs",
            "unknown phase \"ghost\"",
        ),
        (
            "  - { key: a, role: author, needs: [a], instructions: x }\n",
            "phases[0].needs",
            "cannot need itself",
        ),
        (
            "  - { key: a, role: author, instructions: x, expected_artifact: { path: a.json, schema: spec.v1 } }\n  - { key: b, role: author, instructions: x }\n  - { key: c, role: author, instructions: x, fan_out: { over: 'a#/requirements' }, expected_artifact: { path: c.json, schema: check.v1 } }\n",
            "phases[2].fan_out.over",
            "not one of this phase's needs",
        ),
        (
            "  - { key: a, role: author, instructions: x, expected_artifact: { path: a.json, schema: spec.v1 } }\n  - { key: b, role: author, needs: [], instructions: x, when: { artifact: a, pointer: /title, equals: t } }\n",
            "phases[1].when.artifact",
            "not upstream",
        ),
        (
            "  - { key: a, role: author, instructions: x, expected_artifact: { path: a.json, schema: spec.v1 } }\n  - { key: b, role: author, instructions: x, when: { artifact: a, pointer: /title, in: [] } }\n",
            "phases[1].when.in",
            "unreachable",
        ),
        (
            "  - { key: a, role: author, instructions: x, expected_artifact: { path: a.json, schema: spec.v1 } }\n  - { key: b, role: author, instructions: x, when: { artifact: a, pointer: /title, equals: t, not_equals: u } }\n",
            "phases[1].when",
            "exactly one of",
        ),
        (
            "  - { key: a, role: author, instructions: x, expected_artifact: { path: a.json, schema: spec.v1 } }\n  - { key: b, role: author, instructions: x, fan_out: { over: 'a#/requirements', max_items: 5000 }, expected_artifact: { path: c.json, schema: check.v1 } }\n",
            "phases[1].fan_out.max_items",
            "1..=1000",
        ),
        (
            "  - { key: a, role: author, instructions: x, expected_artifact: { path: a.json, schema: spec.v1 } }\n  - { key: b, role: author, needs: [a], instructions: x, fan_out: { over: 'a#/requirements', max_items: 600 }, expected_artifact: { path: b.json, schema: check.v1 } }\n  - { key: c, role: author, needs: [a], instructions: x, fan_out: { over: 'a#/requirements', max_items: 600 }, expected_artifact: { path: c.json, schema: check.v1 } }\n",
            "phases",
            "add up to 1200",
        ),
    ];
    for (phases, field, message) in cases {
        let text = format!(
            "name: dag\nversion: '1'\nroles:\n  author: {{ persona: p }}\nphases:\n{phases}"
        );
        let err = WorkflowTemplate::from_str_named("dag.yaml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("`{field}`")) && err.contains(message),
            "{err}\nshould name {field} and say {message:?}"
        );
    }
}

#[tokio::test]
async fn the_example_graph_template_runs_end_to_end() {
    let pool = pool().await;
    let q = unique_queue("example-graph");
    let t = WorkflowTemplate::load(&engine::repo("examples/parallel-review.yaml")).unwrap();
    let run = submit(&pool, &q, &t, json!({"synthetic": {"array_items": 4}})).await;
    let fleet = Fleet::synthetic(&pool, &q, 3);
    assert_eq!(engine::drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    assert_phase(&pool, run, "rework", PhaseState::Skipped).await;
    let events = engine::events_of(&pool, run).await;
    let fanned = events
        .iter()
        .find(|e| e.kind == "phase.fanned_out")
        .unwrap();
    assert_eq!(fanned.data["items"], 4);
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn a_condition_the_schema_rules_out_and_a_fan_out_over_a_non_array_are_refused_at_submit() {
    let pool = pool().await;
    let q = unique_queue("dag-schema");
    let example = std::fs::read_to_string(engine::repo("examples/parallel-review.yaml")).unwrap();
    for (text, field, says) in [
        // review.v1's verdict is accept, accept_with_changes or reject.
        (
            example.replace("equals: reject", "equals: needs_changes"),
            "template.phases[4].when",
            "[\"needs_changes\"] can only be one of [\"accept\",\"accept_with_changes\",\"reject\"]",
        ),
        (
            example.replace("spec#/requirements", "spec#/title"),
            "template.phases[5].fan_out.over",
            "spec#/title is of type \"string\"",
        ),
        // The fan-out's artifact is the array of its items' (check.v1) artifacts.
        (
            example.replace(
                "    needs: [verify]\n",
                "    needs: [verify]\n    when: { artifact: verify, pointer: /0/method, equals: telepathy }\n",
            ),
            "template.phases[6].when",
            "[\"telepathy\"] can only be one of [\"test\",\"inspection\",\"demo\",\"analysis\"]",
        ),
    ] {
        let mut req = engine::request(&q, json!({}));
        req.template = WorkflowTemplate::from_str_named("t.yaml", &text).unwrap();
        let err = phasefleet::submit::submit(&pool, &engine::schemas(), &engine::config(), req)
            .await
            .unwrap_err();
        match err {
            phasefleet::submit::SubmitError::Invalid { field: f, message } => {
                assert_eq!(f, field);
                assert!(message.contains(says), "{message}");
            }
            other => panic!("{other}"),
        }
    }
}

#[tokio::test]
async fn a_request_left_from_before_an_operator_retry_cannot_approve_the_new_round() {
    let pool = pool().await;
    let q = unique_queue("dag-stale-request");
    let t = template(&DIAMOND.replace(
        "key: b, role: reviewer, needs: [a],",
        "key: b, role: reviewer, needs: [a], gates: [legal],",
    ));
    // b waits at its gate while c, slower, fails its first round.
    let extra = json!({"synthetic": {"invalid_rounds": 1, "invalid_phases": ["c"],
                                     "delay_ms": 400, "delay_phases": ["c"]}});
    let run = submit(&pool, &q, &t, extra).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    wait_phase(&pool, run, "b", PhaseState::AwaitingApproval).await;
    let mut c = pool.acquire().await.unwrap();
    let waiting = approval::pending(&mut c, &Scope::Fleet, 1000)
        .await
        .unwrap();
    drop(c);
    let first = waiting.iter().find(|a| a.run_id == run).unwrap().id;
    assert_eq!(
        engine::wait_for(&pool, run, &[RunState::Failed]).await,
        RunState::Failed
    );
    phasefleet::retry::retry_failed_run(&pool, run, Some("ops"), false)
        .await
        .unwrap();
    // b runs again (round 2) and waits on a new request.
    eventually(Duration::from_secs(30), "b's round 2 waits", || async {
        let mut c = pool.acquire().await.unwrap();
        let row = engine::phase_of(&mut c, run, "b").await.unwrap().unwrap();
        (row.round == 2 && row.state == PhaseState::AwaitingApproval).then_some(())
    })
    .await;
    let old = approval::decide(
        &pool,
        &Scope::Fleet,
        first,
        Action::Approve,
        None,
        Some("tests"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            old,
            approval::ApprovalError::Superseded { round: 1, now: 2 }
        ),
        "{old}"
    );
    let mut c = pool.acquire().await.unwrap();
    let waiting: Vec<_> = approval::pending(&mut c, &Scope::Fleet, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.run_id == run)
        .collect();
    drop(c);
    assert_eq!(waiting.len(), 1, "only the new round's request waits");
    assert_eq!(waiting[0].round, 2);
    // c's second round completes; then the run waits on b's new request alone, and the
    // request left from round 1 does not count against it.
    engine::wait_for(&pool, run, &[RunState::AwaitingApproval]).await;
    assert_invariants(&pool, &[run]).await;
    decide(&pool, run, "b", Action::Approve).await;
    ends_completed(&pool, run).await;
    fleet.shutdown().await;
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn a_branch_whose_run_another_branch_parked_for_budget_joins_the_park_mid_attempt() {
    let pool = pool().await;
    let q = unique_queue("dag-budget-mid");
    // Three branches after a: b spends the budget at once, c checks it 1 s later and
    // parks the run, e checks it 2.5 s later and finds the run already parked.
    let t = template(
        "
  - { key: a, role: author, instructions: write, expected_artifact: { path: a.json, schema: spec.v1 } }
  - { key: b, role: reviewer, needs: [a], instructions: review, expected_artifact: { path: b.json, schema: review.v1 } }
  - { key: c, role: reviewer, needs: [a], instructions: review, expected_artifact: { path: c.json, schema: review.v1 } }
  - { key: e, role: reviewer, needs: [a], instructions: review, expected_artifact: { path: e.json, schema: review.v1 } }
  - { key: d, role: author, needs: [b, c, e], instructions: plan, expected_artifact: { path: d.json, schema: verify.v1 } }
",
    );
    let mut req = engine::request(
        &q,
        json!({"synthetic": {"tokens": 100, "delay_ms": 1000, "delay_phases": ["c"]}}),
    );
    req.template = t;
    req.budget.tokens = Some(150);
    let run = engine::submit(&pool, req).await;
    let slow_e = Fleet::start(
        &pool,
        &q,
        2,
        4,
        DelayedPhase {
            phase: "e",
            ms: 2500,
        },
    );
    assert_eq!(
        engine::wait_for(&pool, run, &[RunState::AwaitingBudget]).await,
        RunState::AwaitingBudget
    );
    // c and e are both kept by the park: nothing runs, nothing is lost.
    eventually(
        Duration::from_secs(10),
        "c and e wait in the park",
        || async {
            let c = phase_state(&pool, run, "c").await;
            let e = phase_state(&pool, run, "e").await;
            (c == PhaseState::Pending && e == PhaseState::Pending).then_some(())
        },
    )
    .await;
    phasefleet::budget::decide(
        &pool,
        &Scope::Fleet,
        run,
        &phasefleet::budget::BudgetDecision::Raise {
            usd: None,
            tokens: Some(100_000),
        },
        Some("tests"),
    )
    .await
    .unwrap();
    ends_completed(&pool, run).await;
    slow_e.shutdown().await;
    assert_invariants(&pool, &[run]).await;
}

/// The synthetic agent, slower in one phase.
#[derive(Clone)]
struct DelayedPhase {
    phase: &'static str,
    ms: u64,
}

impl phasefleet::agent::Agent for DelayedPhase {
    async fn run(
        &self,
        req: phasefleet::agent::AgentRequest,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<phasefleet::agent::AgentOutcome, phasefleet::agent::AgentError> {
        if req.phase_key == self.phase && req.round == 1 {
            tokio::time::sleep(Duration::from_millis(self.ms)).await;
        }
        phasefleet::agent::synthetic::SyntheticAgent
            .run(req, cancel)
            .await
    }
}

#[tokio::test]
async fn a_fan_out_over_a_skipped_phase_is_skipped_and_what_needs_it_goes_on() {
    let pool = pool().await;
    let q = unique_queue("fanout-skipped");
    let t = template(
        "
  - { key: review, role: reviewer, instructions: review, expected_artifact: { path: r.json, schema: review.v1 } }
  - key: triage
    role: author
    instructions: list what to fix
    when: { artifact: review, pointer: /verdict, equals: reject }
    expected_artifact: { path: triage.json, schema: spec.v1 }
  - key: fix
    role: author
    instructions: fix one
    fan_out: { over: 'triage#/requirements' }
    expected_artifact: { path: fix.json, schema: check.v1 }
  - { key: summary, role: reviewer, instructions: sum up, expected_artifact: { path: s.json, schema: summary.v1 } }
",
    );
    let run = submit(&pool, &q, &t, json!({})).await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    assert_eq!(
        engine::drive(&pool, run).await,
        RunState::Completed,
        "{}",
        engine::error_of(&pool, run).await
    );
    fleet.shutdown().await;
    assert_phase(&pool, run, "triage", PhaseState::Skipped).await;
    assert_phase(&pool, run, "fix", PhaseState::Skipped).await;
    assert_phase(&pool, run, "summary", PhaseState::Completed).await;
    assert_invariants(&pool, &[run]).await;
}

#[tokio::test]
async fn files_the_items_wrote_reach_the_phases_after_the_fan_out() {
    let pool = pool().await;
    let q = unique_queue("fanout-files");
    let t = template(FAN_OUT);
    let run = submit(&pool, &q, &t, json!({"synthetic": {"array_items": 2}})).await;
    let agent = engine::Recording {
        inner: WritesNote,
        envelopes: Default::default(),
    };
    let fleet = Fleet::start(&pool, &q, 1, 4, agent.clone());
    assert_eq!(engine::drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let summary = envelope_of(&agent, "summary");
    for note in ["notes/verify-0-.md", "notes/verify-1-.md", "notes/spec.md"] {
        assert!(
            summary.contains(&format!("- {note}\n")),
            "{note} in {summary}"
        );
    }
}

/// The synthetic agent, writing `notes/<phase>.md` besides its artifact.
#[derive(Clone)]
struct WritesNote;

impl phasefleet::agent::Agent for WritesNote {
    async fn run(
        &self,
        req: phasefleet::agent::AgentRequest,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<phasefleet::agent::AgentOutcome, phasefleet::agent::AgentError> {
        let note = format!("notes/{}.md", req.phase_key.replace(['[', ']'], "-"));
        req.workspace
            .lock()
            .write(&note, "what this phase found".to_owned())
            .unwrap();
        phasefleet::agent::synthetic::SyntheticAgent
            .run(req, cancel)
            .await
    }
}

#[tokio::test]
async fn a_phase_sees_the_file_of_what_it_needs_even_when_the_template_lists_it_later() {
    let pool = pool().await;
    let q = unique_queue("dag-files-order");
    // fix is listed first but needs draft; both write shared.txt; test needs fix.
    let t = template(
        "
  - { key: fix, role: author, needs: [draft], instructions: fix it }
  - { key: draft, role: author, needs: [], instructions: draft it }
  - { key: test, role: author, needs: [fix], instructions: test it }
",
    );
    let run = submit(&pool, &q, &t, json!({})).await;
    let fleet = Fleet::start(&pool, &q, 1, 4, WritesShared);
    ends_completed(&pool, run).await;
    fleet.shutdown().await;
    let read = |path: &'static str| {
        let pool = pool.clone();
        async move {
            let mut c = pool.acquire().await.unwrap();
            let (_, content) = phasefleet::store::files::run_files_content(&mut c, run, path, None)
                .await
                .unwrap()
                .unwrap();
            String::from_utf8(content).unwrap()
        }
    };
    assert_eq!(read("seen-by-test.txt").await, "written by fix");
    assert_eq!(
        read("shared.txt").await,
        "written by fix",
        "the downstream writer's file"
    );
}

/// Writes `seen-by-<phase>.txt` with the `shared.txt` it was given, then its own
/// `shared.txt` (except phase `test`).
#[derive(Clone)]
struct WritesShared;

impl phasefleet::agent::Agent for WritesShared {
    async fn run(
        &self,
        req: phasefleet::agent::AgentRequest,
        _cancel: tokio_util::sync::CancellationToken,
    ) -> Result<phasefleet::agent::AgentOutcome, phasefleet::agent::AgentError> {
        let mut ws = req.workspace.lock();
        let seen = ws.get("shared.txt").unwrap_or("nothing").to_owned();
        ws.write(&format!("seen-by-{}.txt", req.phase_key), seen)
            .unwrap();
        if req.phase_key != "test" {
            ws.write("shared.txt", format!("written by {}", req.phase_key))
                .unwrap();
        }
        Ok(phasefleet::agent::AgentOutcome {
            turns: 1,
            accepted: false,
        })
    }
}

/// A worker keeps the next attempt for itself only while nothing else of the run is
/// due; when the same transaction then ends the run (a sibling cannot fan out), the kept
/// attempt is not enqueued afterwards: an ended run has no job left.
#[tokio::test]
async fn an_attempt_kept_for_the_worker_is_dropped_when_its_transaction_ends_the_run() {
    let pool = pool().await;
    let q = unique_queue("kept-ended");
    let t = template(
        "
  - { key: a, role: author, instructions: write, expected_artifact: { path: a.json, schema: spec.v1 } }
  - { key: b, role: reviewer, needs: [a], instructions: review, expected_artifact: { path: b.json, schema: review.v1 } }
  - { key: c, role: author, needs: [a], instructions: check, fan_out: { over: 'a#/requirements', max_items: 2 }, expected_artifact: { path: c.json, schema: check.v1 } }
",
    );
    let run = submit(&pool, &q, &t, json!({"synthetic": {"array_items": 4}})).await;
    let job = claim_one(&pool, &q).await;
    let engine = phasefleet::phase::Engine::new(
        pool.clone(),
        engine::schemas(),
        phasefleet::agent::synthetic::SyntheticAgent,
    );
    let _completed = engine
        .run_phase_job_going_on(&job, Default::default(), &|| true)
        .await
        .unwrap();
    assert_eq!(engine::run_state(&pool, run).await, RunState::Failed);
    let (jobs,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM jobs WHERE run_id = $1 AND state IN ('ready', 'running')",
    )
    .bind(run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(jobs, 0, "no job left for the ended run");
    assert_invariants(&pool, &[run]).await;
}
