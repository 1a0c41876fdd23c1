//! Property tests (proptest) over the inputs nobody controls: template and persona
//! text, the event/idempotency layer, and the API's request bodies. Bad input must
//! come back as a clear error, never a panic or a 5xx, and change nothing.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::events::NewEvent;
use phasefleet::store::events::{events_append, events_list};
use phasefleet::workflow::Definition;
use phasefleet::workflow::{Persona, WorkflowTemplate};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::api::*;
use support::*;

fn example_template() -> String {
    std::fs::read_to_string(engine::repo("examples/spec-review-verify.yaml")).unwrap()
}

/// The example with random bytes replaced, deleted or inserted.
fn mutated(base: String) -> impl Strategy<Value = String> {
    let len = base.len();
    prop::collection::vec((0..len.max(1), any::<u8>(), 0u8..3), 1..12).prop_map(move |edits| {
        let mut bytes = base.clone().into_bytes();
        for (pos, byte, op) in edits {
            let pos = pos.min(bytes.len().saturating_sub(1));
            match op {
                0 if !bytes.is_empty() => {
                    bytes.remove(pos);
                }
                1 => bytes.insert(pos, byte),
                _ if !bytes.is_empty() => bytes[pos] = byte,
                _ => {}
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Arbitrary JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("template".to_owned()),
                    Just("personas".to_owned()),
                    Just("inputs".to_owned()),
                    Just("budget".to_owned()),
                    Just("action".to_owned()),
                    Just("comment".to_owned()),
                    Just("queue".to_owned()),
                    "[a-z]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn template_text_never_panics_and_errors_name_the_file(text in mutated(example_template())) {
        match WorkflowTemplate::from_str_named("fuzz.yaml", &text) {
            Ok(t) => {
                // Whatever parses also checks out and hashes stably.
                prop_assert!(!t.phases.is_empty());
                prop_assert_eq!(t.canonical().1, t.canonical().1);
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.yaml"), "{}", e),
        }
    }

    #[test]
    fn arbitrary_text_is_refused_cleanly_as_template_or_persona(text in ".{0,300}") {
        if let Err(e) = WorkflowTemplate::from_str_named("t.json", &text) {
            prop_assert!(e.to_string().contains("t.json"));
        }
        if let Err(e) = Persona::from_str_named("p.yaml", &text) {
            prop_assert!(e.to_string().contains("p.yaml"));
        }
    }

    #[test]
    fn arbitrary_json_templates_are_refused_or_valid(v in json_value()) {
        let _ = WorkflowTemplate::from_str_named("j.json", &v.to_string());
        let _ = Persona::from_str_named("j.json", &v.to_string());
    }
}

/// A runner for properties checked outside the `proptest!` macro (async bodies).
fn runner_with(cases: u32) -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn event_appends_with_repeated_keys_stay_dense_and_idempotent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(pool());
    let q = unique_queue("fuzz-events");
    let mut runner = runner_with(40);
    let batches = prop::collection::vec(prop::collection::vec(0u8..12, 1..5), 1..12);
    runner
        .run(&batches, |batches| {
            rt.block_on(async {
                let run = engine::submit(&pool, engine::request(&q, json!({}))).await;
                let mut seen = std::collections::HashSet::new();
                for batch in &batches {
                    // One transaction, one statement per batch (keys distinct within it).
                    let mut keys: Vec<u8> = Vec::new();
                    for k in batch {
                        if !keys.contains(k) {
                            keys.push(*k);
                        }
                    }
                    let events: Vec<NewEvent> = keys
                        .iter()
                        .map(|k| NewEvent {
                            kind: "fuzz",
                            phase: None,
                            key: format!("fuzz:{k}"),
                            data: json!({ "k": k }),
                        })
                        .collect();
                    let mut tx = pool.begin().await.unwrap();
                    phasefleet::store::runs::runs_lock(&mut tx, run)
                        .await
                        .unwrap();
                    let seqs = events_append(&mut tx, run, &events).await.unwrap();
                    tx.commit().await.unwrap();
                    let new = keys.iter().filter(|k| seen.insert(**k)).count();
                    assert_eq!(seqs.len(), new, "only keys not used before are appended");
                }
                let first_seq = seen;
                let mut c = pool.acquire().await.unwrap();
                let all = events_list(&mut c, run, 0, 10_000).await.unwrap();
                let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
                assert_eq!(
                    seqs,
                    (1..=i64::try_from(all.len()).unwrap()).collect::<Vec<_>>()
                );
                // run.submitted plus one per distinct key.
                assert_eq!(all.len(), 1 + first_seq.len());
                phasefleet::cancel::cancel_run(
                    &pool,
                    &phasefleet::teams::Scope::Fleet,
                    run,
                    Some("fuzz over"),
                )
                .await
                .unwrap();
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_and_near_valid_api_bodies_never_get_a_5xx_and_errors_keep_their_shape() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pool = rt.block_on(pool());
    let q = unique_queue("fuzz-api");
    let api = rt.block_on(ApiServer::start(&pool, None));
    let c = api.client(Some(ADMIN));
    let mut runner = runner_with(200);
    let approval = uuid::Uuid::new_v4();
    let run = uuid::Uuid::new_v4();
    runner
        .run(&(json_value(), 0u8..4), |(mut body, target)| {
            // Keep submissions off every real queue: a valid one lands on the fuzz queue.
            if let Value::Object(m) = &mut body {
                m.insert("queue".into(), json!(q));
            }
            let path = match target {
                0 | 1 => "/v1/runs".to_owned(),
                2 => format!("/v1/approvals/{approval}/decision"),
                _ => format!("/v1/runs/{run}/cancel"),
            };
            let (status, reply) = rt.block_on(c.post(&path, &body));
            prop_assert!(!status.is_server_error(), "{path} {body}: {status} {reply}");
            if status.is_client_error() {
                error_code(&reply);
            } else {
                prop_assert_eq!(status, StatusCode::CREATED, "{} {}: {}", path, body, reply);
            }
            Ok(())
        })
        .unwrap();
    let (n,): (i64,) = rt
        .block_on(
            sqlx::query_as("SELECT count(*) FROM runs WHERE queue = $1")
                .bind(&q)
                .fetch_one(&pool),
        )
        .unwrap();
    assert_eq!(n, 0, "random bodies never make a valid run");

    // Near-valid submissions: the example with one field replaced by arbitrary JSON or
    // text (NUL bytes and odd Unicode included). Either a run is created or a 4xx
    // names the problem; never a 5xx.
    let good = example_body(&q, json!({}));
    let fields = [
        "template",
        "personas",
        "inputs",
        "bindings",
        "budget",
        "queue",
        "inputs.objective",
        "inputs.extra",
        "inputs.requirements",
        "personas.0",
    ];
    let text = prop_oneof![
        ".{0,40}".boxed(),
        Just("nul\u{0}byte".to_owned()).boxed(),
        "\\PC{0,20}".boxed()
    ];
    let value = prop_oneof![json_value(), text.prop_map(Value::String)];
    let created = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = runner_with(300);
    runner
        .run(&(0..fields.len(), value), |(field, v)| {
            let mut body = good.clone();
            let mut target = &mut body;
            let path: Vec<&str> = fields[field].split('.').collect();
            for (i, part) in path.iter().enumerate() {
                let last = i + 1 == path.len();
                target = match part.parse::<usize>() {
                    Ok(idx) => &mut target[idx],
                    Err(_) if last => {
                        target[*part] = v.clone();
                        break;
                    }
                    Err(_) => &mut target[*part],
                };
                if last {
                    *target = v.clone();
                }
            }
            let (status, reply) = rt.block_on(c.post("/v1/runs", &body));
            prop_assert!(
                !status.is_server_error(),
                "{}: {} -> {} {}",
                fields[field],
                v,
                status,
                reply
            );
            if status.is_client_error() {
                error_code(&reply);
            } else {
                created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    // Clean up whatever was accepted (nothing works this queue).
    rt.block_on(async {
        let ids: Vec<(phasefleet::RunId,)> = sqlx::query_as("SELECT id FROM runs WHERE queue = $1")
            .bind(&q)
            .fetch_all(&pool)
            .await
            .unwrap();
        for (id,) in ids {
            phasefleet::cancel::cancel_run(
                &pool,
                &phasefleet::teams::Scope::Fleet,
                id,
                Some("fuzz over"),
            )
            .await
            .unwrap();
        }
    });
    println!("near-valid submissions accepted: {}", created.into_inner());
    rt.block_on(api.shutdown());
}
