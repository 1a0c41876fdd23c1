//! Costs never fail open and runs never dead-end, through the real client against the
//! scripted mock: a spent budget parks the run (before an attempt, or between two calls
//! of one) and a top-up resumes it, or an abort ends it; a USD budget on a model with
//! no known price is refused at submit unless the model is free or the provider's price
//! list prices it; a run bound to a provider no live worker serves is refused, and a
//! queued one is claimed only by a worker that serves its provider.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::RunId;
use phasefleet::budget::{BudgetDecision, BudgetOutcome};
use phasefleet::config::Config;
use phasefleet::error::{Classify, ErrorKind};
use phasefleet::state::{PhaseState, RunState};
use phasefleet::submit::SubmitRequest;
use phasefleet::teams::Scope;
use serde_json::json;
use std::time::Duration;
use support::engine::*;
use support::mock::{Mock, persona};
use support::*;

fn llm_request(q: &str, model: &str) -> SubmitRequest {
    let mut req = request(q, json!({}));
    req.personas.push(persona(model));
    req.bindings.insert("author".into(), "llm".into());
    req.bindings.insert("reviewer".into(), "llm".into());
    for p in &mut req.template.phases {
        p.gates.clear();
    }
    req
}

async fn decide(
    pool: &sqlx::PgPool,
    run: RunId,
    d: BudgetDecision,
) -> Result<BudgetOutcome, phasefleet::budget::BudgetError> {
    phasefleet::budget::decide(pool, &Scope::Fleet, run, &d, Some("tests")).await
}

#[tokio::test]
async fn a_spent_budget_parks_the_run_and_a_top_up_resumes_it() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("budget-park");
    let fleet = Fleet::start(&pool, &q, 1, 4, m.agent());
    // $0.0005 per call, one call per phase: spec and review spend $0.001; verify waits.
    let mut req = llm_request(&q, "mock/valid");
    req.budget.usd = Some(0.001);
    let run = submit(&pool, req).await;
    let parked = |s: RunState| s == RunState::AwaitingBudget || s.is_terminal();
    assert_eq!(
        drive_until(&pool, run, parked).await,
        RunState::AwaitingBudget
    );
    assert_eq!(m.requests(), 2);
    assert!(error_of(&pool, run).await.contains("budget exhausted"));
    let mut c = pool.acquire().await.unwrap();
    let verify = phase_of(&mut c, run, "verify").await.unwrap().unwrap();
    assert_eq!((verify.state, verify.attempts), (PhaseState::Pending, 0));
    drop(c);
    // A top-up that does not exceed what was spent is refused and changes nothing.
    let low = decide(
        &pool,
        run,
        BudgetDecision::Raise {
            usd: Some(0.0009),
            tokens: None,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(low.kind(), ErrorKind::Invalid { .. }), "{low}");
    assert_eq!(run_state(&pool, run).await, RunState::AwaitingBudget);
    let raised = decide(
        &pool,
        run,
        BudgetDecision::Raise {
            usd: Some(0.01),
            tokens: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(raised, BudgetOutcome::Raised { resumed: true });
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    assert_eq!(
        m.requests(),
        3,
        "the parked phase ran once, after the top-up"
    );
    let kinds: Vec<String> = events_of(&pool, run)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"run.awaiting_budget".to_owned())
            && kinds.contains(&"run.budget_raised".to_owned()),
        "{kinds:?}"
    );
    assert_eq!(
        error_of(&pool, run).await,
        "",
        "the resumed run's error is cleared"
    );

    // Parked between two calls of one attempt (tokens): the same attempt resumes.
    let mut req = llm_request(&q, "mock/enum-wrong");
    req.budget.tokens = Some(100);
    let mid = submit(&pool, req).await;
    assert_eq!(
        drive_until(&pool, mid, parked).await,
        RunState::AwaitingBudget
    );
    let mut c = pool.acquire().await.unwrap();
    let spec = phase_of(&mut c, mid, "spec").await.unwrap().unwrap();
    assert_eq!(
        (spec.state, spec.attempts),
        (PhaseState::Pending, 1),
        "attempt 1 was under way"
    );
    drop(c);
    decide(
        &pool,
        mid,
        BudgetDecision::Raise {
            usd: None,
            tokens: Some(1_000_000),
        },
    )
    .await
    .unwrap();
    assert_eq!(drive(&pool, mid).await, RunState::Completed);

    // Or an approver aborts it.
    let mut req = llm_request(&q, "mock/valid");
    req.budget.usd = Some(0.0005);
    let aborted = submit(&pool, req).await;
    assert_eq!(
        drive_until(&pool, aborted, parked).await,
        RunState::AwaitingBudget
    );
    // A reason that cannot be stored is refused naming the field; the run still waits.
    for reason in ["nul\0inside".to_owned(), "x".repeat(2001)] {
        let refused = decide(
            &pool,
            aborted,
            BudgetDecision::Abort {
                reason: Some(reason),
            },
        )
        .await;
        assert!(
            matches!(
                refused,
                Err(phasefleet::budget::BudgetError::Invalid {
                    field: "reason",
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    assert_eq!(run_state(&pool, aborted).await, RunState::AwaitingBudget);
    assert_eq!(
        decide(
            &pool,
            aborted,
            BudgetDecision::Abort {
                reason: Some("too dear".into())
            }
        )
        .await
        .unwrap(),
        BudgetOutcome::Aborted
    );
    assert_eq!(run_state(&pool, aborted).await, RunState::Aborted);
    assert!(error_of(&pool, aborted).await.contains("too dear"));
    fleet.shutdown().await;
}

fn config_with(base_url: &str, extra: &str) -> Config {
    Config::from_toml(&format!(
        r#"
        [providers.mock]
        base_url = "{base_url}"
        allow_insecure_loopback = true
        [providers.mock.models."*"]
        [providers.local]
        base_url = "{base_url}"
        allow_insecure_loopback = true
        models.local = {{ free = true }}
        {extra}
        [teams.default]
        queues = ["*"]
        "#
    ))
    .unwrap()
}

#[tokio::test]
async fn a_usd_budget_on_a_model_without_a_price_is_refused_at_submit() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("budget-price");
    let submit_with = |config: Config, model: &str, provider: &str| {
        let mut req = llm_request(&q, model);
        req.personas.last_mut().unwrap().provider = Some(provider.into());
        req.budget.usd = Some(1.0);
        let pool = pool.clone();
        async move { phasefleet::submit::submit(&pool, &schemas(), &config, req).await }
    };
    let unpriced = submit_with(config_with(&m.base_url, ""), "mock/valid", "mock")
        .await
        .unwrap_err();
    let text = unpriced.to_string();
    assert!(
        matches!(unpriced.kind(), ErrorKind::Invalid { field: Some(ref f) } if f.starts_with("bindings.")),
        "{text}"
    );
    assert!(
        text.contains("\"llm\"") && text.contains("mock/valid") && text.contains("no known price"),
        "{text}"
    );
    // Without a USD budget nothing needs a price; a free model never does.
    let mut no_budget = llm_request(&q, "mock/valid");
    no_budget.budget.usd = None;
    phasefleet::submit::submit(&pool, &schemas(), &config_with(&m.base_url, ""), no_budget)
        .await
        .unwrap();
    submit_with(config_with(&m.base_url, ""), "local", "local")
        .await
        .unwrap();
    // The provider's price list prices a listed model (fetched once, cached in PostgreSQL).
    let listed = config_with(&m.base_url, "").providers["mock"].clone();
    let mut with_list = config_with(&m.base_url, "");
    with_list.providers.insert(
        "mock".into(),
        phasefleet::config::ProviderConfig {
            price_list_url: Some(format!("{}/models", m.base_url)),
            ..listed
        },
    );
    submit_with(with_list.clone(), "mock/listed", "mock")
        .await
        .unwrap();
    let err = submit_with(with_list.clone(), "mock/varies", "mock")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no known price"),
        "a varying price is no price: {err}"
    );
    let mut c = pool.acquire().await.unwrap();
    let price = phasefleet::prices::cached_price(&mut c, "mock", "mock/listed")
        .await
        .unwrap()
        .unwrap();
    assert!(
        (price.input - 1.0).abs() < 1e-9 && (price.output - 2.0).abs() < 1e-9,
        "{price:?}"
    );
}

#[tokio::test]
async fn a_run_no_worker_serves_is_refused_and_a_queued_one_waits_for_a_worker_that_does() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("served");
    let mut unserved = llm_request(&q, "mock/valid");
    unserved.allow_unserved = false;
    let err = phasefleet::submit::submit(&pool, &schemas(), &config(), unserved.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no live worker") && err.contains("\"mock\""),
        "{err}"
    );
    // Queued anyway: a worker without the provider's key leaves its jobs alone.
    let mut queued = unserved.clone();
    queued.allow_unserved = true;
    let run = submit(&pool, queued).await;
    let synthetic_only = Fleet::synthetic(&pool, &q, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        run_state(&pool, run).await,
        RunState::Queued,
        "not claimed by a worker that cannot call the provider"
    );
    synthetic_only.shutdown().await;
    let fleet = Fleet::start(&pool, &q, 1, 4, m.agent());
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    // With a live worker that serves the provider, the same request is accepted.
    eventually(Duration::from_secs(10), "the worker is registered", || {
        let (pool, req) = (pool.clone(), unserved.clone());
        async move {
            phasefleet::submit::submit(&pool, &schemas(), &config(), req)
                .await
                .ok()
        }
    })
    .await;
    fleet.shutdown().await;
}
