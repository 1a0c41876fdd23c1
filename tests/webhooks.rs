//! Webhooks end to end: real workers deliver notifications over HTTP to a receiver in
//! the test, which checks every signature, answers 500 twice and then 200, and keeps
//! what it accepted by delivery id.
#![allow(clippy::unwrap_used)]

mod support;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use phasefleet::approval::{self, Action};
use phasefleet::config::Config;
use phasefleet::state::RunState;
use phasefleet::teams::Scope;
use phasefleet::webhooks::{DELIVERY_HEADER, SIGNATURE_HEADER, Webhooks};
use serde_json::{Value, json};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::api::{ADMIN, ApiServer};
use support::engine::*;
use support::*;

const SECRET: &str = "webhook-secret-for-the-test";

#[derive(Default)]
struct Received {
    /// Every request: (delivery id, status answered).
    requests: Vec<(String, u16)>,
    /// Accepted bodies by delivery id (a repeat is dropped, as a receiver would).
    accepted: std::collections::BTreeMap<String, Value>,
    bad_signatures: usize,
}

/// Whether `header` (`t=..,v1=..`) signs `body` with `secret`.
fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut parts = header.split(',');
    let (Some(t), Some(v1)) = (
        parts.next().and_then(|p| p.strip_prefix("t=")),
        parts.next().and_then(|p| p.strip_prefix("v1=")),
    ) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let Ok(sig) = hex::decode(v1) else {
        return false;
    };
    mac.verify_slice(&sig).is_ok()
}

async fn receive(
    State(got): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut got = got.lock().unwrap();
    let id = headers
        .get(DELIVERY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let signed = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| verify(SECRET, h, &body));
    if !signed {
        got.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    // The first two requests fail: the queue must retry them.
    let status = if got.requests.len() < 2 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        got.accepted
            .entry(id.clone())
            .or_insert_with(|| serde_json::from_slice(&body).unwrap());
        StatusCode::OK
    };
    got.requests.push((id, status.as_u16()));
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_are_signed_retried_after_500s_and_delivered_once_by_id() {
    let pool = pool().await;
    let q = unique_queue("webhooks");
    let got = Arc::new(Mutex::new(Received::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = Config::from_toml(&format!(
        "[webhooks.ops]\nurl = \"http://127.0.0.1:{port}/hook\"\nallow_insecure_loopback = true\nsecret_env = \"OPS_WEBHOOK_SECRET\"\n"
    ))
    .unwrap();
    let hooks = Webhooks::from_config_with(&config, |name| {
        (name == "OPS_WEBHOOK_SECRET").then(|| SECRET.to_owned())
    })
    .unwrap();
    // This process decides approvals and appends events: it announces, as a worker or
    // an API with this configuration would.
    phasefleet::webhooks::set_announcing(&config);
    let fleet = Fleet::start_with_webhooks(
        &pool,
        &q,
        2,
        4,
        phasefleet::agent::synthetic::SyntheticAgent,
        &hooks,
    );

    let run = submit(&pool, request(&q, json!({}))).await;
    let id = pending_approval(&pool, run).await;
    approval::decide(
        &pool,
        &Scope::Fleet,
        id,
        Action::Approve,
        Some("fine"),
        Some("alice"),
    )
    .await
    .unwrap();
    assert_eq!(
        wait_for(&pool, run, &[RunState::Completed]).await,
        RunState::Completed
    );

    // Three notifications: approval requested, approval decided, run ended.
    let accepted = eventually(
        Duration::from_secs(60),
        "three notifications accepted",
        || async {
            let got = got.lock().unwrap();
            (got.accepted.len() == 3).then(|| got.accepted.clone())
        },
    )
    .await;
    let mut notifications: Vec<&str> = accepted
        .values()
        .map(|b| b["notification"].as_str().unwrap())
        .collect();
    notifications.sort_unstable();
    assert_eq!(
        notifications,
        ["approval.decided", "approval.requested", "run.ended"]
    );
    for (id, body) in &accepted {
        assert_eq!(body["delivery_id"], json!(id));
        assert_eq!(body["run"]["id"], json!(run));
    }
    let ended = accepted
        .values()
        .find(|b| b["notification"] == "run.ended")
        .unwrap();
    assert_eq!(ended["run"]["state"], json!("completed"));
    assert_eq!(ended["event"]["kind"], json!("run.completed"));
    let decided = accepted
        .values()
        .find(|b| b["notification"] == "approval.decided")
        .unwrap();
    assert_eq!(decided["event"]["data"]["by"], json!("alice"));

    // Give a duplicate time to arrive, then count: each id answered 200 exactly once,
    // after two 500s in all, and every signature held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let got = got.lock().unwrap();
        assert_eq!(got.bad_signatures, 0);
        let failures = got.requests.iter().filter(|r| r.1 == 500).count();
        assert_eq!(failures, 2, "{:?}", got.requests);
        for id in accepted.keys() {
            let ok = got
                .requests
                .iter()
                .filter(|r| &r.0 == id && r.1 == 200)
                .count();
            assert_eq!(ok, 1, "{id}: {:?}", got.requests);
        }
    }

    // The attempts are visible to admins, failed ones with the receiver's status.
    let api = ApiServer::start(&pool, None).await;
    let (status, rows) = api
        .client(Some(ADMIN))
        .get(&format!("/v1/admin/webhooks/deliveries?run={run}"))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        5,
        "three deliveries, two of them retried once: {rows:?}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r["ok"] == json!(false) && r["status_code"] == json!(500))
            .count(),
        2
    );
    assert!(rows.iter().all(|r| r["webhook"] == json!("ops")));
    api.shutdown().await;
    fleet.shutdown().await;
}

#[test]
fn a_signature_made_with_another_secret_or_over_another_body_does_not_verify() {
    let header = phasefleet::webhooks::signature(SECRET.as_bytes(), 1_700_000_000, b"{\"a\":1}");
    assert!(verify(SECRET, &header, b"{\"a\":1}"));
    assert!(!verify("another-secret", &header, b"{\"a\":1}"));
    assert!(!verify(SECRET, &header, b"{\"a\":2}"));
}

#[test]
fn webhook_configuration_is_checked_and_names_the_field() {
    let cases = [
        (
            "url = \"http://example.com/hook\"\nsecret_env = \"S\"",
            "webhooks.ops.url",
        ),
        (
            "url = \"https://example.com/hook\"\nsecret_env = \"DATABASE_URL\"",
            "webhooks.ops.secret_env",
        ),
        (
            "url = \"https://example.com/hook\"\nsecret_env = \"S\"\nevents = [\"run.started\"]",
            "webhooks.ops.events",
        ),
        (
            "url = \"https://example.com/hook\"\nsecret_env = \"S\"\nmax_attempts = 0",
            "webhooks.ops.max_attempts",
        ),
    ];
    for (body, field) in cases {
        let err = Config::from_toml(&format!("[webhooks.ops]\n{body}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{body}: {err}");
    }
    let missing = Config::from_toml(
        "[webhooks.ops]\nurl = \"https://example.com/hook\"\nsecret_env = \"S\"\n",
    )
    .unwrap();
    let err = Webhooks::from_config_with(&missing, |_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ops") && err.contains("S is not set"), "{err}");
}
