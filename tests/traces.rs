//! Traces: an OTLP/HTTP receiver in the test gets one trace per run: the API's
//! `submit_run` span (a child of the caller's `traceparent`), a `phase` span per phase
//! attempt under it (carried across the queue on each job), and `model_call` and
//! `tool_call` spans under the attempt that made them.
#![allow(clippy::unwrap_used)]

mod support;

use axum::extract::State;
use phasefleet::approval::{self, Action};
use phasefleet::state::RunState;
use phasefleet::teams::Scope;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::api::{ADMIN, ApiServer, example_body};
use support::engine::*;
use support::*;

/// A received span: (trace id, span id, parent span id, name, run_id attribute).
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

async fn receive(
    State(got): State<Arc<Mutex<Vec<Span>>>>,
    body: axum::Json<Value>,
) -> axum::Json<Value> {
    let mut got = got.lock().unwrap();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let attributes = s["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let v = &a["value"];
                        let text = v["stringValue"]
                            .as_str()
                            .map_or_else(|| v.to_string(), str::to_owned);
                        (a["key"].as_str().unwrap_or_default().to_owned(), text)
                    })
                    .collect();
                got.push(Span {
                    trace: s["traceId"].as_str().unwrap_or_default().to_owned(),
                    id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                    parent: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    attributes,
                });
            }
        }
    }
    axum::Json(json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_run_is_one_trace_from_submit_through_the_queue_to_model_and_tool_calls() {
    let got = Arc::new(Mutex::new(Vec::<Span>::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let telemetry = phasefleet::telemetry::init_with(
        "info,sqlx=warn",
        "phasefleet-test",
        Some(&format!("http://127.0.0.1:{port}/v1/traces")),
    );

    let pool = pool().await;
    let q = unique_queue("traces");
    let mock = support::mock::Mock::start().await;
    let api = ApiServer::start_with_config(&pool, None, config_with_mock(&mock.base_url)).await;
    let fleet = Fleet::start(&pool, &q, 1, 4, mock.agent());
    // The author is a model on the mock: two turns, an `ls` and then the artifact.
    let mut body = example_body(&q, json!({}));
    body["personas"].as_array_mut().unwrap().push(json!(
        "name: llm\nversion: '1'\nbackend: openai\nprovider: mock\nmodel: mock/steps-2-10\nsystem_prompt: Write the artifact.\nmax_turns: 4\n"
    ));
    body["bindings"] = json!({ "author": "llm" });
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let admin = api.client(Some(ADMIN));
    let res = admin
        .http
        .post(format!("{}/v1/runs", api.base))
        .bearer_auth(ADMIN)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    let traced: phasefleet::RunId = res.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // A second run without a traceparent, a third with a malformed one: each a trace of
    // its own.
    let (status, second) = admin.post("/v1/runs", &body).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{second}");
    let untraced: phasefleet::RunId = second["run_id"].as_str().unwrap().parse().unwrap();
    let res = admin
        .http
        .post(format!("{}/v1/runs", api.base))
        .bearer_auth(ADMIN)
        .header(
            "traceparent",
            format!("00-{caller_trace}-zz-{}", "x".repeat(300)),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    let malformed: phasefleet::RunId = res.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for run in [traced, untraced, malformed] {
        let id = pending_approval(&pool, run).await;
        approval::decide(&pool, &Scope::Fleet, id, Action::Approve, None, Some("t"))
            .await
            .unwrap();
        assert_eq!(
            wait_for(&pool, run, &[RunState::Completed]).await,
            RunState::Completed
        );
    }
    fleet.shutdown().await;
    api.shutdown().await;

    let wanted = |spans: &[Span]| spans.iter().filter(|s| s.name == "phase").count() >= 9;
    let spans = eventually(Duration::from_secs(30), "the spans arrive", || async {
        telemetry.flush();
        let got = got.lock().unwrap().clone();
        wanted(&got).then_some(got)
    })
    .await;

    // The traced run: every span of it in the caller's trace, in the expected tree.
    let of_trace = |t: &str| {
        spans
            .iter()
            .filter(|s| s.trace == t)
            .cloned()
            .collect::<Vec<_>>()
    };
    let tree = of_trace(caller_trace);
    let root: Vec<_> = tree.iter().filter(|s| s.name == "submit_run").collect();
    assert_eq!(root.len(), 1, "{tree:#?}");
    assert_eq!(
        root[0].parent, caller_span,
        "the caller's span is the parent"
    );
    let phases: Vec<_> = tree.iter().filter(|s| s.name == "phase").collect();
    let mut keys: Vec<_> = phases
        .iter()
        .map(|s| s.attributes["phase"].clone())
        .collect();
    keys.sort();
    assert_eq!(keys, ["review", "spec", "verify"], "{phases:#?}");
    assert!(
        phases.iter().all(|s| s.parent == root[0].id),
        "each attempt under the submit: {phases:#?}"
    );
    assert!(
        phases
            .iter()
            .all(|s| s.attributes["run_id"] == traced.to_string())
    );
    let spec = phases
        .iter()
        .find(|s| s.attributes["phase"] == "spec")
        .unwrap();
    let under_spec = |name: &str| {
        tree.iter()
            .filter(|s| s.name == name && s.parent == spec.id)
            .count()
    };
    assert_eq!(under_spec("model_call"), 2, "two turns: {tree:#?}");
    assert_eq!(
        under_spec("tool_call"),
        2,
        "ls and the artifact's write: {tree:#?}"
    );
    assert!(
        tree.iter()
            .all(|s| ["submit_run", "phase", "model_call", "tool_call"].contains(&s.name.as_str())),
        "{tree:#?}"
    );

    // The other runs: each its own trace, rooted at its submit (no parent), its three
    // phases inside it.
    let other_roots: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "submit_run" && s.trace != caller_trace)
        .collect();
    assert_eq!(other_roots.len(), 2, "{other_roots:#?}");
    assert_ne!(other_roots[0].trace, other_roots[1].trace);
    for root in other_roots {
        assert!(root.parent.is_empty(), "a root: {root:?}");
        let other = of_trace(&root.trace);
        let phases: Vec<_> = other.iter().filter(|s| s.name == "phase").collect();
        assert_eq!(phases.len(), 3, "{other:#?}");
        let run = &phases[0].attributes["run_id"];
        assert!(*run == untraced.to_string() || *run == malformed.to_string());
        assert!(
            phases
                .iter()
                .all(|s| &s.attributes["run_id"] == run && s.parent == root.id)
        );
    }
    telemetry.shutdown();
}
