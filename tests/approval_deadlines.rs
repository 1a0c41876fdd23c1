//! Approval deadlines: a gate's `deadline` and `on_timeout`, applied by a scheduled job
//! on the queue (no process waits), on the shared database with real workers.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::approval::{self, Action, ApprovalError, Decided};
use phasefleet::state::RunState;
use phasefleet::teams::Scope;
use phasefleet::workflow::{Definition, OnTimeout, WorkflowTemplate};
use serde_json::json;
use std::time::{Duration, Instant};
use support::engine::*;
use support::*;

/// The example workflow with a deadline on its review gate.
fn with_deadline(
    q: &str,
    deadline: &str,
    on_timeout: OnTimeout,
    escalate_to: Option<&str>,
) -> phasefleet::submit::SubmitRequest {
    let mut req = request(q, json!({}));
    let review = req
        .template
        .phases
        .iter_mut()
        .find(|p| !p.gates.is_empty())
        .unwrap();
    review.deadline = Some(deadline.into());
    review.on_timeout = Some(on_timeout);
    review.escalate_to = escalate_to.map(str::to_owned);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_second_deadline_rejects_approves_or_aborts_without_anyone_acting() {
    let pool = pool().await;
    let q = unique_queue("deadline");
    let fleet = Fleet::synthetic(&pool, &q, 2);
    let started = Instant::now();
    let reject = submit(&pool, with_deadline(&q, "2s", OnTimeout::Reject, None)).await;
    let approve = submit(&pool, with_deadline(&q, "2s", OnTimeout::Approve, None)).await;
    let abort = submit(&pool, with_deadline(&q, "2s", OnTimeout::Abort, None)).await;
    // A person who decides in time wins; the deadline then changes nothing.
    let decided = submit(&pool, with_deadline(&q, "3s", OnTimeout::Reject, None)).await;
    let id = pending_approval(&pool, decided).await;
    approval::decide(
        &pool,
        &Scope::Fleet,
        id,
        Action::Approve,
        None,
        Some("a person"),
    )
    .await
    .unwrap();

    assert_eq!(
        wait_for(&pool, reject, &[RunState::Failed]).await,
        RunState::Failed
    );
    assert_eq!(
        wait_for(&pool, approve, &[RunState::Completed]).await,
        RunState::Completed
    );
    assert_eq!(
        wait_for(&pool, abort, &[RunState::Aborted]).await,
        RunState::Aborted
    );
    assert_eq!(
        wait_for(&pool, decided, &[RunState::Completed]).await,
        RunState::Completed
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    // No deadline fired early: each was decided at least 2 s after it was requested.
    for run in [reject, approve, abort] {
        let mut c = pool.acquire().await.unwrap();
        let a = approval::for_run(&mut c, run).await.unwrap().remove(0);
        let waited = a.decided_at.unwrap() - a.created_at;
        assert!(
            waited >= chrono::Duration::seconds(2),
            "{run}: decided after {waited}"
        );
    }
    let error = error_of(&pool, reject).await;
    assert!(error.contains("rejected by deadline"), "{error}");
    for run in [reject, approve, abort] {
        let decisions: Vec<_> = events_of(&pool, run)
            .await
            .into_iter()
            .filter(|e| e.kind == "approval.decided")
            .collect();
        assert_eq!(decisions.len(), 1, "decided once");
        assert_eq!(decisions[0].data["by"], json!("deadline"));
        assert_event_log_sound(&pool, run).await;
    }
    let by: Vec<_> = events_of(&pool, decided)
        .await
        .into_iter()
        .filter(|e| e.kind == "approval.decided")
        .map(|e| e.data["by"].clone())
        .collect();
    assert_eq!(by, vec![json!("a person")]);
    // Each deadline job left the queue (completed, or cancelled with its run).
    eventually(Duration::from_secs(20), "deadline jobs gone", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE queue = $1 AND kind = 'approval_deadline' AND state IN ('ready', 'running')",
        )
        .bind(&q)
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    fleet.shutdown().await;
}

#[tokio::test]
async fn an_escalated_approval_waits_on_its_group_and_only_that_group_decides_it() {
    let pool = pool().await;
    let q = unique_queue("deadline-escalate");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let run = submit(
        &pool,
        with_deadline(&q, "1s", OnTimeout::Escalate, Some("leads")),
    )
    .await;
    let id = pending_approval(&pool, run).await;
    eventually(
        Duration::from_secs(30),
        "the approval is escalated",
        || async {
            events_of(&pool, run)
                .await
                .into_iter()
                .find(|e| e.kind == "approval.escalated")
        },
    )
    .await;
    assert_eq!(
        run_state(&pool, run).await,
        RunState::AwaitingApproval,
        "still waits"
    );
    let team = Scope::Team("default".into());
    let reviewers = ["reviewers".to_owned()];
    let refused = approval::decide_as_member(
        &pool,
        &team,
        Some(&reviewers),
        id,
        Action::Approve,
        None,
        Some("r"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, ApprovalError::EscalatedTo(g) if g == "leads"),
        "{refused}"
    );
    let leads = ["leads".to_owned()];
    let done = approval::decide_as_member(
        &pool,
        &team,
        Some(&leads),
        id,
        Action::Approve,
        None,
        Some("lead"),
    )
    .await
    .unwrap();
    assert_eq!(done, Decided::Recorded);
    assert_eq!(
        wait_for(&pool, run, &[RunState::Completed]).await,
        RunState::Completed
    );
    fleet.shutdown().await;
}

#[test]
fn a_deadline_needs_a_gate_a_duration_and_an_escalation_group() {
    let base = std::fs::read_to_string(repo("examples/spec-review-verify.yaml")).unwrap();
    let cases = [
        (
            "    gates: [human_review]\n",
            "    gates: [human_review]\n    deadline: soon\n",
            "deadline",
            "duration",
        ),
        (
            "    gates: [human_review]\n",
            "    gates: [human_review]\n    deadline: 400d\n",
            "deadline",
            "30 days",
        ),
        (
            "    gates: [human_review]\n",
            "    gates: [human_review]\n    deadline: 2s\n    on_timeout: escalate\n",
            "escalate_to",
            "group",
        ),
        (
            "    gates: [human_review]\n",
            "    gates: [human_review]\n    on_timeout: approve\n",
            "on_timeout",
            "deadline",
        ),
        (
            "    gates: [human_review]\n",
            "    gates: []\n    deadline: 2s\n",
            "deadline",
            "gates",
        ),
        (
            "    gates: [human_review]\n",
            "    gates: [human_review]\n    deadline: 2s\n    on_timeout: later\n",
            "on_timeout",
            "",
        ),
    ];
    for (from, to, field, says) in cases {
        assert!(base.contains(from));
        let text = base.replacen(from, to, 1);
        let err = WorkflowTemplate::from_str_named("t.yaml", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field) && err.contains(says), "{to:?}: {err}");
    }
    let ok = base.replacen(
        "    gates: [human_review]\n",
        "    gates: [human_review]\n    deadline: 90m\n    on_timeout: escalate\n    escalate_to: leads\n",
        1,
    );
    let t = WorkflowTemplate::from_str_named("t.yaml", &ok).unwrap();
    let gated = t.phases.iter().find(|p| !p.gates.is_empty()).unwrap();
    assert_eq!(gated.deadline(), Some(Duration::from_secs(90 * 60)));
}
