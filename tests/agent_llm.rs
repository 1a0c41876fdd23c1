//! Whole runs through the OpenAI-compatible client, over real HTTP on loopback, against
//! our scripted mock server; plus the fleet-wide limiter on real Redis.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::RunId;
use phasefleet::agent::limits::{Limiter, ModelLimits};
use phasefleet::agent::router::BackendRouter;
use phasefleet::state::{PhaseState, RunState};
use phasefleet::workflow::Persona;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::engine::*;
use support::mock::Mock;
use support::*;

async fn mock() -> Mock {
    Mock::start().await
}

fn persona(model: &str) -> Persona {
    support::mock::persona(model)
}

fn agent(m: &Mock) -> BackendRouter {
    m.agent()
}

/// Submit the example workflow with every role played by `model` on the mock.
async fn submit_llm(
    pool: &sqlx::PgPool,
    q: &str,
    m: &Mock,
    model: &str,
    edit: impl FnOnce(&mut phasefleet::submit::SubmitRequest),
) -> RunId {
    let mut req = request(q, json!({}));
    let _ = m;
    req.personas.push(persona(model));
    req.bindings.insert("author".into(), "llm".into());
    req.bindings.insert("reviewer".into(), "llm".into());
    edit(&mut req);
    submit(pool, req).await
}

async fn ledger_rows(
    pool: &sqlx::PgPool,
    run: RunId,
) -> Vec<(String, i64, i64, f64, Option<String>)> {
    sqlx::query_as("SELECT status, tokens_in, tokens_cached, cost_usd, provider_request_id FROM llm_calls WHERE run_id = $1 ORDER BY id")
        .bind(run)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn valid_script_runs_a_whole_workflow_over_http_and_ledgers_every_call() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-valid");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let run = submit_llm(&pool, &q, &m, "mock/valid", |_| {}).await;
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let rows = ledger_rows(&pool, run).await;
    assert_eq!(
        rows.len(),
        3,
        "one call per phase: the valid write ends the attempt"
    );
    assert_eq!(
        u64::try_from(rows.len()).unwrap(),
        m.stats.requests.load(Ordering::SeqCst),
        "ledger matches the mock's request count"
    );
    assert_eq!(
        m.stats.http2_requests.load(Ordering::SeqCst),
        0,
        "HTTP/1.1 unless the provider asks for HTTP/2"
    );
    assert!(
        rows.iter()
            .all(|r| r.0 == "ok" && r.1 == 100 && r.2 == 10 && (r.3 - 0.0005).abs() < 1e-12)
    );
    assert!(
        rows.iter()
            .all(|r| r.4.as_deref().is_some_and(|id| id.starts_with("mock-req-")))
    );
    let (tools, spent_tokens, spent_usd): (i64, i64, f64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tool_calls WHERE run_id = $1 AND tool = 'write_file' AND ok), spent_tokens, spent_usd FROM runs WHERE id = $1",
    )
    .bind(run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((tools, spent_tokens), (3, 3 * 120));
    assert!((spent_usd - 0.0015).abs() < 1e-9);
    let (_, report_json, _) = report(&pool, run).await;
    assert_eq!(report_json["costs"]["llm_calls"], json!(3));
}

#[tokio::test]
async fn a_provider_on_http2_carries_the_calls_of_concurrent_phases() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-http2");
    let fleet = Fleet::start(&pool, &q, 1, 8, m.agent_with(|p| p.http2 = true));
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(submit_llm(&pool, &q, &m, "mock/valid", |_| {}).await);
    }
    for run in runs {
        assert_eq!(drive(&pool, run).await, RunState::Completed);
    }
    fleet.shutdown().await;
    assert_eq!(m.requests(), 12, "one call per phase");
    assert_eq!(
        m.stats.http2_requests.load(Ordering::SeqCst),
        12,
        "every call went over HTTP/2"
    );
}

#[tokio::test]
async fn invalid_then_valid_is_repaired_on_the_second_attempt() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-repair");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let run = submit_llm(&pool, &q, &m, "mock/invalid-then-valid", |_| {}).await;
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let phases = phasefleet::store::run_phases::run_phases_list(&mut c, run)
        .await
        .unwrap();
    assert!(
        phases
            .iter()
            .all(|p| p.state == PhaseState::Completed && p.attempts == 2),
        "{phases:?}"
    );
}

#[tokio::test]
async fn never_writes_fails_after_max_attempts_with_a_clear_error() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-never");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let run = submit_llm(&pool, &q, &m, "mock/never-writes", |_| {}).await;
    assert_eq!(drive(&pool, run).await, RunState::Failed);
    fleet.shutdown().await;
    assert!(
        error_of(&pool, run)
            .await
            .contains("without writing spec.json")
    );
    assert_eq!(
        ledger_rows(&pool, run).await.len(),
        4,
        "per attempt: one call, and one after the reminder"
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_and_ledgered() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-retry");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let limited = submit_llm(&pool, &q, &m, "mock/rate-limited", |_| {}).await;
    let erroring = submit_llm(&pool, &q, &m, "mock/server-error", |_| {}).await;
    assert_eq!(drive(&pool, limited).await, RunState::Completed);
    assert_eq!(drive(&pool, erroring).await, RunState::Completed);
    fleet.shutdown().await;
    let l = ledger_rows(&pool, limited).await;
    assert_eq!(
        l.iter().filter(|r| r.0 == "http_429").count(),
        3,
        "one 429 per phase conversation"
    );
    let e = ledger_rows(&pool, erroring).await;
    assert_eq!(
        e.iter().filter(|r| r.0 == "http_500").count(),
        6,
        "two 500s per phase conversation"
    );
    assert_eq!(
        u64::try_from(l.len() + e.len()).unwrap(),
        m.stats.requests.load(Ordering::SeqCst)
    );
    // Every HTTP attempt, failed ones included, is on the run's log as it happens:
    // one started and one finished event per ledger row, with the row's status.
    for run in [limited, erroring] {
        let events = support::engine::events_of(&pool, run).await;
        let calls: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT call_id, status FROM llm_calls WHERE run_id = $1 ORDER BY id")
                .bind(run)
                .fetch_all(&pool)
                .await
                .unwrap();
        for (call_id, status) in &calls {
            let of = |kind: &str| {
                events
                    .iter()
                    .filter(|e| e.kind == kind && e.data["call_id"] == json!(call_id))
                    .collect::<Vec<_>>()
            };
            let (started, finished) = (of("model.call_started"), of("model.call_finished"));
            assert_eq!((started.len(), finished.len()), (1, 1), "{call_id}");
            assert!(started[0].seq < finished[0].seq);
            assert_eq!(finished[0].data["status"], json!(status));
        }
        let model_events = events
            .iter()
            .filter(|e| e.kind.starts_with("model."))
            .count();
        assert_eq!(model_events, 2 * calls.len());
        support::engine::assert_event_log_sound(&pool, run).await;
    }
}

#[tokio::test]
async fn unauthorized_fails_the_run_without_retrying() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-401");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let run = submit_llm(&pool, &q, &m, "mock/unauthorized", |_| {}).await;
    assert_eq!(drive(&pool, run).await, RunState::Failed);
    fleet.shutdown().await;
    let err = error_of(&pool, run).await;
    assert!(
        err.contains("HTTP 401") && err.contains("API key") && !err.contains("invalid API key"),
        "{err}"
    );
    assert_eq!(ledger_rows(&pool, run).await.len(), 1);
    assert_eq!(m.stats.requests.load(Ordering::SeqCst), 1);
    // The log says which phase failed, as it does when attempts run out.
    let events = support::engine::events_of(&pool, run).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "phase.failed" && e.phase_key.as_deref() == Some("spec")),
        "{:?}",
        events.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn malformed_arguments_escapes_and_multi_tool_turns_are_handled() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-tools");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let malformed = submit_llm(&pool, &q, &m, "mock/malformed-args", |_| {}).await;
    let escape = submit_llm(&pool, &q, &m, "mock/escape", |_| {}).await;
    let multi = submit_llm(&pool, &q, &m, "mock/multi-tool", |_| {}).await;
    for run in [malformed, escape, multi] {
        assert_eq!(drive(&pool, run).await, RunState::Completed);
    }
    fleet.shutdown().await;
    let bad: Vec<(String, serde_json::Value, bool, String)> = sqlx::query_as(
        "SELECT tool, arguments, ok, result_summary FROM tool_calls WHERE run_id = ANY($1) AND NOT ok ORDER BY id",
    )
    .bind(vec![malformed.0, escape.0])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(bad.len(), 6, "one refused call per phase of both runs");
    assert!(
        bad.iter()
            .any(|b| b.1 == json!("{\"path\": ") && b.3.contains("not valid JSON"))
    );
    assert!(
        bad.iter()
            .any(|b| b.3.contains("climbs out of the workspace"))
    );
    let (ls,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tool_calls WHERE run_id = $1 AND tool = 'ls'")
            .bind(multi)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(ls, 3);
    // Each audited tool call is one `tool.called` event; a refused call says so.
    for run in [malformed, escape, multi] {
        let audit = phasefleet::store::ledger::tool_calls_list(
            &mut pool.acquire().await.unwrap(),
            run,
            0,
            100,
        )
        .await
        .unwrap();
        let events: Vec<_> = support::engine::events_of(&pool, run)
            .await
            .into_iter()
            .filter(|e| e.kind == "tool.called")
            .collect();
        assert_eq!(events.len(), audit.len());
        for (event, row) in events.iter().zip(&audit) {
            assert_eq!(event.data["tool_call_id"], json!(row.id));
            assert_eq!(event.data["ok"], json!(row.ok));
            assert_eq!(event.data["tool"], json!(row.tool));
            assert_eq!(event.phase_key.as_deref(), Some(row.phase_key.as_str()));
        }
    }
    let escaped: Vec<_> = support::engine::events_of(&pool, escape)
        .await
        .into_iter()
        .filter(|e| e.kind == "tool.called" && e.data["ok"] == json!(false))
        .collect();
    assert!(
        escaped
            .iter()
            .all(|e| e.data["path"].as_str().is_some_and(|p| p.contains(".."))),
        "{escaped:?}"
    );
    assert!(
        !std::path::Path::new("/etc/passwd")
            .metadata()
            .is_ok_and(|m| m.len() == 1),
        "nothing escaped to disk"
    );
}

#[tokio::test]
async fn a_phase_timeout_interrupts_the_call_and_no_call_follows() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-slow");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let run = submit_llm(&pool, &q, &m, "mock/slow-3000", |r| {
        for p in &mut r.template.phases {
            p.timeout = 1;
        }
    })
    .await;
    assert_eq!(drive(&pool, run).await, RunState::Failed);
    assert!(error_of(&pool, run).await.contains("timed out after 1s"));
    let at_end = m.stats.requests.load(Ordering::SeqCst);
    assert_eq!(at_end, 2, "one interrupted call per attempt");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        m.stats.requests.load(Ordering::SeqCst),
        at_end,
        "no call after the timeout"
    );
    fleet.shutdown().await;
    let rows = ledger_rows(&pool, run).await;
    assert_eq!(
        rows.iter().filter(|r| r.0 == "cancelled").count(),
        2,
        "{rows:?}"
    );
}

#[tokio::test]
async fn calls_without_a_reported_cost_are_priced_from_the_configuration() {
    let pool = pool().await;
    let m = mock().await;
    let q = unique_queue("llm-priced");
    let fleet = Fleet::start(&pool, &q, 1, 4, agent(&m));
    let priced = submit_llm(&pool, &q, &m, "mock/valid-nocost", |_| {}).await;
    assert_eq!(drive(&pool, priced).await, RunState::Completed);
    fleet.shutdown().await;
    let rows = ledger_rows(&pool, priced).await;
    // 90 uncached x $1 + 10 cached x $0.5 + 20 out x $2, per million
    assert!(
        rows.iter().all(|r| (r.3 - 0.000_135).abs() < 1e-12),
        "{rows:?}"
    );
}

#[tokio::test]
async fn fleet_wide_concurrency_limit_through_redis_and_fallback_without_it() {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).unwrap();
    let model = format!("test-model-{}", uuid::Uuid::new_v4().simple());
    let limits = HashMap::from([(
        model.clone(),
        ModelLimits {
            rpm: None,
            tpm: None,
            concurrent: Some(1),
        },
    )]);
    let a = Limiter::new(
        limits.clone(),
        Some(
            redis::aio::ConnectionManager::new(client.clone())
                .await
                .unwrap(),
        ),
    );
    let b = Limiter::new(
        limits.clone(),
        Some(redis::aio::ConnectionManager::new(client).await.unwrap()),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let held = a.acquire(&model, 10, &cancel).await.unwrap();
    // Another process's limiter must wait while the only slot is held.
    let waiting =
        tokio::time::timeout(Duration::from_millis(600), b.acquire(&model, 10, &cancel)).await;
    assert!(
        waiting.is_err(),
        "second permit granted while the slot was held"
    );
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(5), b.acquire(&model, 10, &cancel)).await;
    assert!(got.is_ok(), "slot released fleet-wide");
    // Requests per minute, per process (no Redis).
    let local = Limiter::new(
        HashMap::from([(
            model.clone(),
            ModelLimits {
                rpm: Some(2),
                tpm: None,
                concurrent: None,
            },
        )]),
        None,
    );
    let _p1 = local.acquire(&model, 1, &cancel).await.unwrap();
    let _p2 = local.acquire(&model, 1, &cancel).await.unwrap();
    let third = tokio::time::timeout(
        Duration::from_millis(300),
        local.acquire(&model, 1, &cancel),
    )
    .await;
    assert!(
        third.is_err() || chrono::Utc::now().timestamp() % 60 == 0,
        "third request in a minute waits"
    );
}
