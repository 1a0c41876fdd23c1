//! The HTTP API over real HTTP against the shared database (and real Redis for the
//! fan-out across two API instances).
#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;
use support::api::*;
use support::engine::Fleet;
use support::*;

async fn pending_approval_of(c: &Client, run: &str) -> String {
    eventually(
        Duration::from_secs(60),
        "an approval in the inbox",
        || async {
            let (s, list) = c.get("/v1/approvals").await;
            assert_eq!(s, StatusCode::OK, "{list}");
            list.as_array()
                .unwrap()
                .iter()
                .find(|a| a["run_id"] == run)
                .map(|a| a["id"].as_str().unwrap().to_owned())
        },
    )
    .await
}

async fn wait_state(c: &Client, run: &str, state: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("run reaches {state}"),
        || async {
            let (s, d) = c.get(&format!("/v1/runs/{run}")).await;
            assert_eq!(s, StatusCode::OK);
            (d["run"]["state"] == state).then_some(d)
        },
    )
    .await
}

#[tokio::test]
async fn a_run_goes_from_submit_to_report_over_http_with_idempotent_submit_and_decisions() {
    let pool = pool().await;
    let q = unique_queue("api-flow");
    let api = ApiServer::start(&pool, None).await;
    let fleet = Fleet::synthetic(&pool, &q, 2);
    let (submitter, approver) = (api.client(Some(SUBMIT)), api.client(Some(APPROVE)));
    let key = format!("key-{q}");
    let body = example_body(&q, json!({}));

    let res = submitter
        .request(Method::POST, "/v1/runs")
        .header("Idempotency-Key", &key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = res.json().await.unwrap();
    let run = created["run_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/runs/{run}"));
    // The same key again: the same run, nothing new.
    let (s, again) = submitter
        .send(
            submitter
                .request(Method::POST, "/v1/runs")
                .header("Idempotency-Key", &key)
                .json(&body),
        )
        .await;
    assert_eq!(
        (s, again["run_id"].as_str(), again["outcome"].as_str()),
        (StatusCode::OK, Some(run.as_str()), Some("existing"))
    );
    // The same key for another template: refused.
    let mut other = body.clone();
    other["template"] = json!(
        body["template"]
            .as_str()
            .unwrap()
            .replace("version: \"1\"", "version: \"1-other\"")
            .replace("version: '1'", "version: '1-other'")
    );
    let (s, e) = submitter
        .send(
            submitter
                .request(Method::POST, "/v1/runs")
                .header("Idempotency-Key", &key)
                .json(&other),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE idempotency_key = $1")
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);

    let approval = pending_approval_of(&approver, &run).await;
    let decide = |action: &'static str| {
        let approver = &approver;
        let approval = approval.clone();
        async move {
            approver
                .post(
                    &format!("/v1/approvals/{approval}/decision"),
                    &json!({ "action": action, "comment": "ok" }),
                )
                .await
        }
    };
    assert_eq!(decide("approve").await.1["outcome"], "recorded");
    assert_eq!(decide("approve").await.1["outcome"], "already_decided");
    let (s, e) = decide("reject").await;
    assert_eq!(
        (s, error_code(&e).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );

    let detail = wait_state(&submitter, &run, "completed").await;
    let phases: Vec<&str> = detail["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["completed", "completed", "completed"]);
    assert_eq!(detail["bindings"].as_array().unwrap().len(), 2);
    assert_eq!(detail["approvals"][0]["action"], "approve");
    assert_eq!(detail["report"]["state"], "completed");
    // Every artifact's content is served byte for byte with its sha256.
    let artifacts = detail["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 3);
    for a in artifacts {
        let (s, full) = submitter
            .get(&format!("/v1/runs/{run}/artifacts/{}", a["id"]))
            .await;
        assert_eq!(s, StatusCode::OK);
        let content = full["content"].as_str().unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(content.as_bytes())),
            a["sha256"].as_str().unwrap()
        );
        assert!(full["json"].is_object());
    }
    let md = submitter
        .request(
            Method::GET,
            &format!("/v1/runs/{run}/report?format=markdown"),
        )
        .send()
        .await
        .unwrap();
    assert!(
        md.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/markdown")
    );
    assert!(md.text().await.unwrap().contains(&format!("# Run {run}")));
    let (_, events) = submitter.get(&format!("/v1/runs/{run}/events")).await;
    let seqs: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=i64::try_from(seqs.len()).unwrap()).collect::<Vec<_>>(),
        "dense seq"
    );
    let (_, tail) = submitter
        .get(&format!("/v1/runs/{run}/events?after=3&limit=2"))
        .await;
    assert_eq!(
        tail.as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [4, 5]
    );
    // Cancelling an ended run changes nothing.
    let (s, c) = submitter
        .post(&format!("/v1/runs/{run}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (s, c["outcome"].as_str(), c["state"].as_str()),
        (StatusCode::OK, Some("already_ended"), Some("completed"))
    );
    fleet.shutdown().await;
    api.shutdown().await;
}

#[tokio::test]
async fn listing_filters_and_pages_without_gaps_or_repeats() {
    let pool = pool().await;
    let q = unique_queue("api-list");
    let api = ApiServer::start(&pool, None).await;
    let c = api.client(Some(ADMIN));
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (s, r) = c.post("/v1/runs", &example_body(&q, json!({}))).await;
        assert_eq!(s, StatusCode::CREATED);
        ids.push(r["run_id"].as_str().unwrap().to_owned());
    }
    // No worker on this queue: all five stay queued. Page through queued runs.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = format!(
            "/v1/runs?state=queued&limit=2{}",
            cursor
                .as_ref()
                .map(|c| format!("&cursor={c}"))
                .unwrap_or_default()
        );
        let (s, page) = c.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for r in page["runs"].as_array().unwrap() {
            assert_eq!(r["state"], "queued");
            seen.push(r["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no run twice across pages");
    assert!(
        ids.iter().all(|id| seen.contains(id)),
        "every queued run listed"
    );
    for id in &ids {
        let (s, out) = c
            .post(
                &format!("/v1/runs/{id}/cancel"),
                &json!({ "reason": "test over" }),
            )
            .await;
        assert_eq!(
            (s, out["outcome"].as_str()),
            (StatusCode::OK, Some("cancelled"))
        );
    }
    let (_, d) = c.get(&format!("/v1/runs/{}", ids[0])).await;
    assert_eq!(d["run"]["state"], "cancelled");
    assert!(d["run"]["error"].as_str().unwrap().contains("test over"));
    api.shutdown().await;
}

/// The error code the API answers `status` with.
fn code_of(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        other => panic!("no error code for {other}"),
    }
}

/// Send `req` and check the status and the error body's shape and code.
async fn check(c: &Client, what: &str, req: reqwest::RequestBuilder, status: u16) {
    let (s, body) = c.send(req).await;
    assert_eq!(s.as_u16(), status, "{what}: {body}");
    assert_eq!(error_code(&body), code_of(status), "{what}: {body}");
}

#[tokio::test]
async fn bad_input_wrong_roles_and_unknown_ids_get_the_right_4xx_and_change_nothing() {
    let pool = pool().await;
    let q = unique_queue("api-bad");
    let api = ApiServer::start(&pool, None).await;
    let admin = api.client(Some(ADMIN));
    let good = example_body(&q, json!({}));
    let with = |field: &str, value: Value| {
        let mut b = good.clone();
        b[field] = value;
        b
    };
    let mut missing_template = good.clone();
    missing_template.as_object_mut().unwrap().remove("template");
    let raw = |ctype: &str, body: Vec<u8>| {
        admin
            .request(Method::POST, "/v1/runs")
            .header("content-type", ctype)
            .body(body)
    };
    let run = format!("/v1/runs/{}", uuid::Uuid::new_v4());
    let decision = format!("/v1/approvals/{}/decision", uuid::Uuid::new_v4());
    let (get, post) = (Method::GET, Method::POST);
    let as_ = |token: Option<&str>, m: Method, path: &str| api.client(token).request(m, path);
    let submit = |body: &Value| admin.request(Method::POST, "/v1/runs").json(body);
    let approve = json!({ "action": "approve" });
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed JSON",
            raw("application/json", b"{bad".to_vec()),
            400,
        ),
        (
            "not JSON content type",
            raw("text/plain", b"{}".to_vec()),
            415,
        ),
        (
            "oversize body",
            raw("application/json", vec![b' '; 2 << 20]),
            413,
        ),
        ("missing field", submit(&missing_template), 422),
        ("unknown field", submit(&with("surprise", json!(1))), 422),
        (
            "invalid template",
            submit(&with(
                "template",
                json!("name: x\nversion: '1'\nroles: {}\nphases: []\n"),
            )),
            422,
        ),
        (
            "unparsable template",
            submit(&with("template", json!("{{{{ not yaml"))),
            422,
        ),
        (
            "persona not an object",
            submit(&with("personas", json!([17]))),
            422,
        ),
        (
            "negative budget",
            submit(&with("budget", json!({ "usd": -1 }))),
            422,
        ),
        (
            "binding to unknown role",
            submit(&with("bindings", json!({ "nobody": "x" }))),
            422,
        ),
        (
            "bad queue name",
            submit(&with("queue", json!("no spaces allowed"))),
            422,
        ),
        (
            "no token",
            as_(None, post.clone(), "/v1/runs").json(&good),
            401,
        ),
        (
            "unknown token",
            as_(Some("not-a-real-token-at-all"), get.clone(), "/v1/runs"),
            401,
        ),
        (
            "read role submits",
            as_(Some(READ), post.clone(), "/v1/runs").json(&good),
            403,
        ),
        (
            "approve role submits",
            as_(Some(APPROVE), post.clone(), "/v1/runs").json(&good),
            403,
        ),
        (
            "submit role lists approvals",
            as_(Some(SUBMIT), get.clone(), "/v1/approvals"),
            403,
        ),
        (
            "submit role decides",
            as_(Some(SUBMIT), post.clone(), &decision).json(&approve),
            403,
        ),
        (
            "approve role cancels",
            as_(Some(APPROVE), post.clone(), &format!("{run}/cancel")),
            403,
        ),
        ("unknown run", as_(Some(READ), get.clone(), &run), 404),
        (
            "a tool-audit page too large",
            as_(
                Some(READ),
                get.clone(),
                &format!("{run}/tool-calls?limit=101"),
            ),
            400,
        ),
        (
            "a team token on the fleet's admin routes",
            as_(Some(READ), get.clone(), "/v1/admin/workers"),
            403,
        ),
        (
            "an operator action with an unknown action",
            as_(Some(ADMIN), post.clone(), "/v1/admin/actions")
                .json(&json!({ "action": "format_disk" })),
            422,
        ),
        (
            "pausing a queue with a name that is not one",
            as_(Some(ADMIN), post.clone(), "/v1/admin/actions")
                .json(&json!({ "action": "pause_queue", "queue": "a b" })),
            422,
        ),
        (
            "requeueing a job that does not exist",
            as_(Some(ADMIN), post.clone(), "/v1/admin/actions")
                .json(&json!({ "action": "requeue_job", "job": 9_000_000_000_i64 })),
            404,
        ),
        (
            "unknown run events",
            as_(Some(READ), get.clone(), &format!("{run}/events/stream")),
            404,
        ),
        (
            "unknown run report",
            as_(Some(READ), get.clone(), &format!("{run}/report")),
            404,
        ),
        (
            "unknown run cancel",
            as_(Some(SUBMIT), post.clone(), &format!("{run}/cancel")),
            404,
        ),
        (
            "unknown approval",
            as_(Some(APPROVE), post.clone(), &decision).json(&approve),
            404,
        ),
        (
            "bad action",
            as_(Some(APPROVE), post.clone(), &decision).json(&json!({ "action": "maybe" })),
            422,
        ),
        (
            "bad run id",
            as_(Some(READ), get.clone(), "/v1/runs/not-a-uuid"),
            400,
        ),
        (
            "bad state filter",
            as_(Some(READ), get.clone(), "/v1/runs?state=sleeping"),
            400,
        ),
        (
            "bad cursor",
            as_(Some(READ), get.clone(), "/v1/runs?cursor=garbage"),
            400,
        ),
        (
            "bad limit",
            as_(Some(READ), get.clone(), "/v1/runs?limit=100000"),
            400,
        ),
        (
            "unknown query parameter",
            as_(Some(READ), get.clone(), "/v1/runs?colour=red"),
            400,
        ),
        (
            "bad Last-Event-ID",
            as_(Some(READ), get.clone(), &format!("{run}/events/stream"))
                .header("Last-Event-ID", "x"),
            400,
        ),
        (
            "bad cancel body",
            as_(Some(SUBMIT), post.clone(), &format!("{run}/cancel")).body("{nope"),
            400,
        ),
        (
            "a cancel body of whitespace (not JSON, and not an absent body)",
            as_(Some(SUBMIT), post.clone(), &format!("{run}/cancel")).body("\t"),
            400,
        ),
        (
            "a budget decision sent as an array",
            as_(Some(APPROVE), post.clone(), &format!("{run}/budget"))
                .json(&json!(["abort", "by position"])),
            422,
        ),
        (
            "a decision sent as an array",
            as_(
                Some(APPROVE),
                post.clone(),
                "/v1/approvals/00000000-0000-0000-0000-000000000000/decision",
            )
            .json(&json!(["approve", "ok"])),
            422,
        ),
        (
            "an input file that is both text and uploaded content",
            as_(Some(SUBMIT), post.clone(), "/v1/runs").json(&{
                let mut b = example_body(&q, json!({}));
                b["files"] = json!({"a.txt": {"text": "a", "sha256": "0".repeat(64)}});
                b
            }),
            422,
        ),
        (
            "unknown route",
            as_(Some(READ), get.clone(), "/v1/nothing-here"),
            404,
        ),
        (
            "wrong method",
            as_(Some(READ), Method::DELETE, "/v1/runs"),
            405,
        ),
    ];
    for (what, req, status) in cases {
        check(&admin, what, req, status).await;
    }
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM runs WHERE queue = $1")
        .bind(&q)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "no bad request created a run");
    // The error names the field at fault.
    for (body, field) in [
        (with("budget", json!({ "usd": -1 })), "budget.usd"),
        (
            with("bindings", json!({ "nobody": "x" })),
            "bindings.nobody",
        ),
        (with("budget", json!([0.5, 1000])), "budget"),
        (with("inputs", json!([])), "inputs"),
    ] {
        let (_, e) = admin.post("/v1/runs", &body).await;
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    api.shutdown().await;
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_and_fans_out_through_redis_across_two_api_instances() {
    let pool = pool().await;
    let q = unique_queue("api-sse");
    let redis_url = "redis://127.0.0.1:6379";
    let a = ApiServer::start(&pool, Some(redis_url)).await;
    let b = ApiServer::start(&pool, Some(redis_url)).await;
    for api in [&a, &b] {
        eventually(
            Duration::from_secs(20),
            "instance subscribed to Redis",
            || async {
                let (_, r) = api.client(None).get("/readyz").await;
                (r["event_bus"] == "redis").then_some(())
            },
        )
        .await;
    }
    // Watch the Redis channel itself, to prove the wake-ups travel through Redis.
    let client = redis::Client::open(redis_url).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(phasefleet_api::bus::REDIS_CHANNEL)
        .await
        .unwrap();

    let fleet = Fleet::synthetic(&pool, &q, 1);
    let (s, created) = a
        .client(Some(SUBMIT))
        .post("/v1/runs", &example_body(&q, json!({})))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let run = created["run_id"].as_str().unwrap().to_owned();

    // Follow on instance B until the run waits on a human, then disconnect.
    let reader = b.client(Some(READ));
    let mut res = reader
        .request(Method::GET, &format!("/v1/runs/{run}/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = read_sse(&mut res, |kind, _| {
        kind == "run.awaiting_approval" || kind == "approval.requested"
    })
    .await;
    drop(res);
    let last = first.last().unwrap().0.unwrap();

    let mut wake_ups = 0;
    {
        use tokio_stream::StreamExt;
        let mut messages = pubsub.on_message();
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(500), messages.next()).await
        {
            let payload: String = m.get_payload().unwrap();
            if payload.starts_with(&run) {
                wake_ups += 1;
            }
        }
    }
    assert!(
        wake_ups > 0,
        "event wake-ups for the run went through Redis"
    );

    // Decide on instance A; resume on instance B from the last seq seen.
    let approval = pending_approval_of(&a.client(Some(APPROVE)), &run).await;
    let (s, _) = a
        .client(Some(APPROVE))
        .post(
            &format!("/v1/approvals/{approval}/decision"),
            &json!({ "action": "approve" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut res = reader
        .request(Method::GET, &format!("/v1/runs/{run}/events/stream"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    let rest = read_sse(&mut res, |kind, _| kind == "end").await;
    assert_eq!(
        rest.first().unwrap().0,
        Some(last + 1),
        "resumes right after Last-Event-ID"
    );
    assert_eq!(rest.last().unwrap().1, "end");
    let all: Vec<i64> = first
        .iter()
        .chain(rest.iter())
        .filter_map(|e| e.0)
        .collect();
    assert_eq!(
        all,
        (1..=i64::try_from(all.len()).unwrap()).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(rest.iter().any(|e| e.1 == "run.completed"));
    fleet.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn metrics_openapi_health_and_ui_are_served() {
    let pool = pool().await;
    let q = unique_queue("api-metrics");
    let api = ApiServer::start(&pool, None).await;
    let c = api.client(Some(ADMIN));
    let (s, _) = c.post("/v1/runs", &example_body(&q, json!({}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let anon = api.client(None);
    // Fleet gauges are refreshed every few seconds, not per scrape.
    let needles = [
        format!("phasefleet_queue_depth{{queue=\"{q}\"}} 1"),
        "phasefleet_approvals_pending ".to_owned(),
        "phasefleet_runs_active{state=\"queued\"}".to_owned(),
        "phasefleet_http_requests_total{method=\"POST\",route=\"/v1/runs\",status=\"201\"}"
            .to_owned(),
    ];
    eventually(
        Duration::from_secs(15),
        "fleet gauges refreshed",
        || async {
            let text = anon.text("/metrics").await;
            needles.iter().all(|n| text.contains(n)).then_some(())
        },
    )
    .await;
    let (s, doc) = anon.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/runs",
        "/v1/runs/{id}",
        "/v1/runs/{id}/events",
        "/v1/runs/{id}/events/stream",
        "/v1/runs/{id}/tool-calls",
        "/v1/runs/{id}/report",
        "/v1/runs/{id}/artifacts/{artifact_id}",
        "/v1/runs/{id}/cancel",
        "/v1/approvals",
        "/v1/approvals/{id}/decision",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "OpenAPI lacks {p}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let (s, ready) = anon.get("/readyz").await;
    assert_eq!(
        (s, ready["database"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let html = anon
        .http
        .get(format!("{}/", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<title>phasefleet</title>"));
    // Clean up: nothing works this queue.
    let (_, page) = c.get("/v1/runs?state=queued&limit=500").await;
    for r in page["runs"].as_array().unwrap() {
        let (_, d) = c
            .get(&format!("/v1/runs/{}", r["id"].as_str().unwrap()))
            .await;
        if d["run"]["queue"] == q.as_str() {
            c.post(
                &format!("/v1/runs/{}/cancel", r["id"].as_str().unwrap()),
                &json!({}),
            )
            .await;
        }
    }
    api.shutdown().await;
}

#[tokio::test]
async fn a_graph_template_is_served_with_its_needs_and_a_graph_mistake_is_a_422_naming_the_field() {
    let pool = pool().await;
    let q = unique_queue("api-graph");
    let api = ApiServer::start(&pool, None).await;
    let admin = api.client(Some(ADMIN));
    let read = |p: &str| std::fs::read_to_string(support::engine::repo(p)).unwrap();
    let mut body = example_body(&q, json!({}));
    body["template"] = json!(read("examples/parallel-review.yaml"));
    // A cycle: the specification needs the summary.
    let mut cyclic = body.clone();
    cyclic["template"] = json!(read("examples/parallel-review.yaml").replacen(
        "  - key: spec\n    role: author\n",
        "  - key: spec\n    role: author\n    needs: [summary]\n",
        1
    ));
    let (s, e) = admin.post("/v1/runs", &cyclic).await;
    assert_eq!(s.as_u16(), 422, "{e}");
    assert_eq!(error_code(&e), "invalid");
    assert_eq!(e["error"]["field"], "template.phases[0].needs", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cycle: spec needs summary needs verify"),
        "{message}"
    );
    // The graph as submitted: the run detail names each phase's needs.
    let (s, created) = admin.post("/v1/runs", &body).await;
    assert_eq!(s.as_u16(), 201, "{created}");
    let id = created["run_id"].as_str().unwrap().to_owned();
    let (_, d) = admin.get(&format!("/v1/runs/{id}")).await;
    let needs = |key: &str| {
        d["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase_key"] == key)
            .map(|p| p["needs"].clone())
            .unwrap()
    };
    assert_eq!(needs("spec"), json!([]));
    assert_eq!(needs("review_security"), json!(["spec"]));
    assert_eq!(needs("verify"), json!(["spec", "rework"]));
    api.shutdown().await;
}
