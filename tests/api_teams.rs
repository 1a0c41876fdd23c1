//! Teams over HTTP: a team's tokens see and act on that team's runs, approvals,
//! artifacts, events and streams only (404 for anything else, so another team's ids
//! reveal nothing); idempotency keys are the team's own; fleet-wide admins see all.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::state::RunState;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::api::*;
use support::engine::{Fleet, pending_approval, wait_for};
use support::*;

#[tokio::test]
async fn a_teams_tokens_reach_only_its_own_runs_on_every_route() {
    let pool = pool().await;
    let q = unique_queue("teams");
    let api = ApiServer::start(&pool, None).await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let a = api.client(Some(TEAM_A_SUBMIT));
    let b = api.client(Some(TEAM_B_SUBMIT));
    let key = format!("shared-key-{}", uuid::Uuid::new_v4());

    // Both teams use the same idempotency key: each gets its own run, nothing leaks.
    let submit = |c: &Client| {
        c.request(Method::POST, "/v1/runs")
            .header("Idempotency-Key", key.clone())
            .json(&example_body(&q, json!({})))
    };
    let (s, run_a) = a.send(submit(&a)).await;
    assert_eq!(s, StatusCode::CREATED, "{run_a}");
    let (s, run_b) = b.send(submit(&b)).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "the other team's key is not ours: {run_b}"
    );
    let (run_a, run_b) = (
        run_a["run_id"].as_str().unwrap().to_owned(),
        run_b["run_id"].as_str().unwrap().to_owned(),
    );
    assert_ne!(run_a, run_b);
    let mut other = example_body(&q, json!({}));
    other["inputs"]["requirements"] = json!("# something else");
    let (s, err) = a
        .send(
            a.request(Method::POST, "/v1/runs")
                .header("Idempotency-Key", key.clone())
                .json(&other),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "same key, different request: {err}"
    );
    assert!(err["error"]["message"].as_str().unwrap().contains(&run_a));
    let (s, _) = a
        .post(
            "/v1/runs",
            &json!({ "team": "team-b", "template": "x", "personas": [] }),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a team's token cannot submit for another team"
    );

    // Wait until team A's run has an artifact and waits on its approval.
    let run_a_id: phasefleet::RunId = run_a.parse().unwrap();
    let approval = pending_approval(&pool, run_a_id).await;
    let (_, detail) = api
        .client(Some(ADMIN))
        .get(&format!("/v1/runs/{run_a}"))
        .await;
    let artifact = detail["artifacts"][0]["id"].as_i64().unwrap();

    // Every route, with team B's tokens on team A's things: 404, and nothing changes.
    let b_approve = api.client(Some(TEAM_B_APPROVE));
    let b_read = api.client(Some(TEAM_B_READ));
    let reads = [
        format!("/v1/runs/{run_a}"),
        format!("/v1/runs/{run_a}/events"),
        format!("/v1/runs/{run_a}/events/stream"),
        format!("/v1/runs/{run_a}/tool-calls"),
        format!("/v1/runs/{run_a}/report"),
        format!("/v1/runs/{run_a}/artifacts/{artifact}"),
    ];
    for token in [&b, &b_approve, &b_read] {
        for path in &reads {
            let (s, body) = token.get(path).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
            assert!(
                !body.to_string().contains("spec.json"),
                "{path} leaked: {body}"
            );
        }
    }
    let (s, _) = b
        .post(&format!("/v1/runs/{run_a}/cancel"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = b_approve
        .post(
            &format!("/v1/approvals/{approval}/decision"),
            &json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, inbox) = b_approve.get("/v1/approvals").await;
    assert!(
        !inbox.to_string().contains(&run_a),
        "another team's approval in the inbox"
    );
    let (_, list) = b_read.get("/v1/runs?limit=500").await;
    let ids: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&run_b.as_str()) && !ids.contains(&run_a.as_str()),
        "{ids:?}"
    );
    let (_, list) = b_read.get("/v1/runs?team=team-a").await;
    assert!(
        !list.to_string().contains(&run_a),
        "a team's filter cannot reach another team"
    );
    assert_eq!(
        phasefleet::approval::for_run(&mut pool.acquire().await.unwrap(), run_a_id)
            .await
            .unwrap()[0]
            .action,
        None,
        "team B changed nothing"
    );

    // A team admin is an admin of its team only; fleet-wide admin routes refuse it.
    let (s, _) = api
        .client(Some(TEAM_A_ADMIN))
        .get("/v1/admin/personas")
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api
        .client(Some(TEAM_A_ADMIN))
        .get(&format!("/v1/runs/{run_b}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Team A acts on its own run; the fleet admin sees both teams and can filter.
    let a_approve = api.client(Some(TEAM_A_APPROVE));
    let (s, body) = a_approve
        .post(
            &format!("/v1/approvals/{approval}/decision"),
            &json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        wait_for(&pool, run_a_id, &[RunState::Completed]).await,
        RunState::Completed
    );
    let admin = api.client(Some(ADMIN));
    let (_, only_a) = admin.get("/v1/runs?team=team-a&limit=500").await;
    let teams: Vec<Value> = only_a["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["team"].clone())
        .collect();
    assert!(teams.iter().all(|t| t == "team-a") && only_a.to_string().contains(&run_a));
    let (s, _) = admin.get(&format!("/v1/runs/{run_b}")).await;
    assert_eq!(s, StatusCode::OK);
    fleet.shutdown().await;
    api.shutdown().await;
}

#[tokio::test]
async fn a_team_gets_its_queues_and_its_budget_ceiling() {
    let pool = pool().await;
    let config = phasefleet::config::Config::from_toml(
        "[teams.capped]\nqueues = [\"capped-q\"]\nmax_budget_usd = 2.0\nmax_budget_tokens = 5000\n",
    )
    .unwrap();
    let schemas = support::engine::schemas();
    let mut req = support::engine::request("capped-q", json!({}));
    req.team = "capped".into();
    req.may_define_provider_personas = false;
    let submitted = phasefleet::submit::submit(&pool, &schemas, &config, req.clone())
        .await
        .unwrap();
    let mut c = pool.acquire().await.unwrap();
    let run = phasefleet::store::runs::runs_get(&mut c, submitted.run_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (run.team.as_str(), run.budget_usd, run.budget_tokens),
        ("capped", Some(2.0), Some(5000)),
        "a run without a budget gets the team's ceiling"
    );
    for (edit, field) in [
        (
            Box::new(|r: &mut phasefleet::submit::SubmitRequest| r.budget.usd = Some(2.5))
                as Box<dyn Fn(&mut phasefleet::submit::SubmitRequest)>,
            "budget.usd",
        ),
        (Box::new(|r| r.budget.tokens = Some(6000)), "budget.tokens"),
        (Box::new(|r| r.queue = "default".into()), "queue"),
        (Box::new(|r| r.team = "not a team".into()), "team"),
    ] {
        let mut bad = req.clone();
        edit(&mut bad);
        let err = phasefleet::submit::submit(&pool, &schemas, &config, bad)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, phasefleet::submit::SubmitError::Invalid { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
}
