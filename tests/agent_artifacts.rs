//! Artifacts valid by construction and files in and out, through the real client over
//! HTTP against the scripted mock: the artifact tool's parameters are the phase's
//! schema, a valid submission ends the attempt in its first turn, a repair is told
//! every allowed value and shown what it wrote, a valid artifact written before a
//! timeout is kept, and the agent reads a git repository's files and earlier phases'
//! outputs.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::RunId;
use phasefleet::input_files::{self, InputFile};
use phasefleet::state::{PhaseState, RunState};
use phasefleet::workflow::{Definition, WorkflowTemplate};
use serde_json::{Value, json};
use support::engine::*;
use support::mock::{Mock, persona};
use support::*;

/// Submit `req` with every role played by `model` on the mock.
async fn submit_as(
    pool: &sqlx::PgPool,
    model: &str,
    mut req: phasefleet::submit::SubmitRequest,
) -> RunId {
    req.personas.push(persona(model));
    for role in req.template.roles.keys().cloned().collect::<Vec<_>>() {
        req.bindings.insert(role, "llm".into());
    }
    submit(pool, req).await
}

/// The user message of every request the mock received for `model`.
fn envelopes_and_results(m: &Mock, model: &str) -> Vec<Value> {
    m.stats
        .bodies()
        .into_iter()
        .filter(|b| b["model"] == model)
        .collect()
}

fn text_of(messages: &Value, role: &str) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == role)
        .filter_map(|m| m["content"].as_str().map(str::to_owned))
        .collect()
}

async fn artifact_json(pool: &sqlx::PgPool, run: RunId, phase: &str) -> Value {
    let content: String = sqlx::query_scalar(
        "SELECT content FROM artifacts WHERE run_id = $1 AND phase_key = $2 AND valid",
    )
    .bind(run)
    .bind(phase)
    .fetch_one(pool)
    .await
    .unwrap();
    serde_json::from_str(&content).unwrap()
}

#[tokio::test]
async fn the_artifact_tool_is_the_phase_schema_and_a_valid_submission_ends_the_attempt() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("art-submit");
    let fleet = Fleet::start(&pool, &q, 1, 4, m.agent());
    let mut runs = Vec::new();
    for model in ["mock/submit", "mock/submit-object", "mock/fenced"] {
        let run = submit_as(&pool, model, request(&q, json!({}))).await;
        assert_eq!(drive(&pool, run).await, RunState::Completed, "{model}");
        runs.push(run);
    }
    fleet.shutdown().await;
    assert_eq!(
        m.requests(),
        9,
        "one model call per phase, for each of the 3 runs"
    );
    // The tool's parameters are the phase's schema itself.
    let registry = schemas();
    let bodies = envelopes_and_results(&m, "mock/submit");
    assert_eq!(bodies.len(), 3);
    for body in &bodies {
        let envelope = &text_of(&body["messages"], "user")[0];
        let id = envelope
            .lines()
            .find_map(|l| l.strip_prefix("Expected schema id: "))
            .unwrap();
        let mut expected = registry.schema(id).unwrap().clone();
        let map = expected.as_object_mut().unwrap();
        map.remove("$schema");
        map.remove("$id");
        let tool = body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["function"]["name"] == "submit_artifact")
            .unwrap();
        assert_eq!(tool["function"]["parameters"], expected, "{id}");
    }
    // Each way of handing it in is audited as a submission, and every phase took one attempt.
    let (submissions, attempts): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tool_calls WHERE run_id = ANY($1) AND tool = 'submit_artifact' AND ok),
                (SELECT sum(attempts) FROM run_phases WHERE run_id = ANY($1))::bigint",
    )
    .bind(runs.iter().map(|r| r.0).collect::<Vec<_>>())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((submissions, attempts), (9, 9));
}

#[tokio::test]
async fn an_enum_error_is_repaired_with_every_allowed_value_and_the_previous_artifact() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("art-enum");
    let fleet = Fleet::start(&pool, &q, 1, 4, m.agent());
    let run = submit_as(&pool, "mock/enum-wrong", request(&q, json!({}))).await;
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let spec = phase_of(&mut c, run, "spec").await.unwrap().unwrap();
    assert_eq!((spec.state, spec.attempts), (PhaseState::Completed, 2));
    let allowed = r#"the value must be exactly one of: "must", "should", "could""#;
    let bodies = envelopes_and_results(&m, "mock/enum-wrong");
    // Within the first attempt, the tool result lists every allowed value.
    let told = bodies
        .iter()
        .flat_map(|b| text_of(&b["messages"], "tool"))
        .any(|t| t.contains(r#"string "not-a-choice" is not allowed"#) && t.contains(allowed));
    assert!(told, "the submission's result names every allowed value");
    // The repair attempt's prompt: the errors, the schema there, what was written.
    let repair = bodies
        .iter()
        .map(|b| text_of(&b["messages"], "user")[0].clone())
        .find(|e| e.contains("Phase: spec") && e.contains("[REPAIR ATTEMPT]"))
        .unwrap();
    assert!(repair.contains(allowed), "{repair}");
    assert!(
        repair.contains(r#"{"enum":["must","should","could"]}"#),
        "the schema fragment at the error: {repair}"
    );
    let previous = repair.split("What was written then").nth(1).unwrap();
    assert!(
        previous.contains("\"not-a-choice\""),
        "the previous artifact: {repair}"
    );
}

#[tokio::test]
async fn a_valid_artifact_written_before_the_timeout_is_kept() {
    let pool = pool().await;
    let q = unique_queue("art-timeout");
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let mut hangs = request(&q, json!({ "synthetic": { "hang_after_write": true } }));
    let mut writes_nothing = request(
        &q,
        json!({ "synthetic": { "never_write": true, "delay_ms": 5000 } }),
    );
    for req in [&mut hangs, &mut writes_nothing] {
        for p in &mut req.template.phases {
            p.timeout = 1;
            p.gates.clear();
        }
    }
    let kept = submit(&pool, hangs).await;
    let lost = submit(&pool, writes_nothing).await;
    assert_eq!(drive(&pool, kept).await, RunState::Completed);
    assert_eq!(drive(&pool, lost).await, RunState::Failed);
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let phases = phasefleet::store::run_phases::run_phases_list(&mut c, kept)
        .await
        .unwrap();
    assert!(
        phases.iter().all(|p| p.attempts == 1),
        "each phase kept its first attempt's artifact: {phases:?}"
    );
    let error = error_of(&pool, lost).await;
    assert!(
        error.contains("timed out after 1s without writing spec.json"),
        "{error}"
    );
}

#[tokio::test]
async fn a_timeout_validates_what_was_written_and_the_repair_sees_its_errors() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("art-timeout-http");
    let fleet = Fleet::start(&pool, &q, 1, 4, m.agent());
    let mut req = request(&q, json!({}));
    req.template.phases.truncate(1);
    req.template.phases[0].timeout = 1;
    let run = submit_as(&pool, "mock/wrong-then-slow", req).await;
    assert_eq!(drive(&pool, run).await, RunState::Failed);
    fleet.shutdown().await;
    let error = error_of(&pool, run).await;
    assert!(
        error.contains("timed out after 1s; the artifact as written does not validate")
            && error.contains("\"not-a-choice\" is not allowed"),
        "the errors of what was written, not only the timeout: {error}"
    );
    let repair = envelopes_and_results(&m, "mock/wrong-then-slow")
        .iter()
        .map(|b| text_of(&b["messages"], "user")[0].clone())
        .find(|e| e.contains("[REPAIR ATTEMPT]"))
        .unwrap();
    assert!(repair.contains("\"not-a-choice\""), "{repair}");
}

#[tokio::test]
async fn a_connection_failure_names_its_cause_and_the_true_attempt_count() {
    let pool = pool().await;
    // Nothing listens on port 9 here: every connection is refused.
    let nowhere = Mock {
        base_url: "http://127.0.0.1:9/v1".into(),
        stats: std::sync::Arc::default(),
    };
    let q = unique_queue("art-refused");
    let fleet = Fleet::start(&pool, &q, 1, 4, nowhere.agent());
    let mut req = request(&q, json!({}));
    req.template.phases.truncate(1);
    let run = submit_as(&pool, "mock/valid", req).await;
    assert_eq!(drive(&pool, run).await, RunState::Failed);
    fleet.shutdown().await;
    let error = error_of(&pool, run).await;
    assert!(
        error.contains("connection refused")
            && error.contains("delivery 5 of 5")
            && error.contains("20 HTTP attempts in all"),
        "{error}"
    );
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A repository with a README, a source file and a binary file committed, and the
/// README changed afterwards (the change is not at HEAD).
fn repository() -> (support::TempDir, String) {
    let dir = support::TempDir::new("art-repo");
    let root = dir.path();
    std::fs::create_dir_all(root.join("src")).unwrap();
    let readme = "# Demo repository\nThe parser lives in src/lib.rs.\n";
    std::fs::write(root.join("README.md"), readme).unwrap();
    std::fs::write(root.join("src/lib.rs"), "pub fn parse() {}\n").unwrap();
    std::fs::write(root.join("logo.png"), b"\x89PNG\r\n\x1a\n\0\0binary").unwrap();
    git(root, &["init", "-q"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "first"]);
    std::fs::write(root.join("README.md"), "uncommitted change\n").unwrap();
    (dir, readme.to_owned())
}

const TWO_SURVEYS: &str = "
name: surveys
version: '1'
roles: { author: { persona: llm } }
phases:
  - key: survey
    role: author
    instructions: Read the files and cite them.
    expected_artifact: { path: survey.json, schema: evidence.v1 }
  - key: recheck
    role: author
    instructions: Read the files again, notes included, and cite them.
    expected_artifact: { path: recheck.json, schema: evidence.v1 }
";

#[tokio::test]
async fn the_agent_reads_the_input_repository_and_later_phases_read_earlier_outputs() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("art-files");
    let (repo_dir, readme) = repository();
    let collected = input_files::read_git(
        repo_dir.path(),
        "HEAD",
        &input_files::excludes(&[]).unwrap(),
    )
    .unwrap();
    let mut req = request(&q, json!({}));
    req.template = WorkflowTemplate::from_str_named("surveys.yaml", TWO_SURVEYS).unwrap();
    req.files = collected.files;
    let fleet = Fleet::start(&pool, &q, 1, 4, m.agent());
    let run = submit_as(&pool, "mock/read-cite", req).await;
    assert_eq!(drive(&pool, run).await, RunState::Completed);
    fleet.shutdown().await;
    let sha = |b: &[u8]| phasefleet::workflow::sha256_hex(b);
    // Phase 1 read the README as committed, not the working copy, and not the binary.
    let survey = artifact_json(&pool, run, "survey").await;
    let cited = |a: &Value, path: &str| {
        a["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .map(|f| f["sha256"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        cited(&survey, "README.md"),
        Some(sha(readme.as_bytes())),
        "{survey}"
    );
    assert_eq!(
        cited(&survey, "logo.png"),
        None,
        "binary files are not read as text"
    );
    // Phase 2 read what phase 1 wrote.
    let mut c = pool.acquire().await.unwrap();
    let (note, bytes) =
        phasefleet::store::files::run_files_content(&mut c, run, "notes/survey.md", None)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(note.origin, "survey");
    let recheck = artifact_json(&pool, run, "recheck").await;
    assert_eq!(
        cited(&recheck, "notes/survey.md"),
        Some(sha(&bytes)),
        "{recheck}"
    );
    // The manifest: inputs, then what each phase wrote besides its artifact; the
    // binary file marked.
    let files = phasefleet::store::files::run_files_list(&mut c, run)
        .await
        .unwrap();
    let listed: Vec<(String, String, bool)> = files
        .iter()
        .map(|f| (f.origin.clone(), f.path.clone(), f.is_binary))
        .collect();
    assert_eq!(
        listed,
        [
            ("", "README.md", false),
            ("", "logo.png", true),
            ("", "src/lib.rs", false),
            ("recheck", "notes/recheck.md", false),
            ("survey", "notes/survey.md", false),
        ]
        .map(|(o, p, b)| (o.to_owned(), p.to_owned(), b))
    );
}

const FILES_ONLY: &str = "
name: notes
version: '1'
roles: { author: { persona: llm } }
phases:
  - key: handover
    role: author
    instructions: Write notes/handover.md.
    max_attempts: 1
";

#[tokio::test]
async fn a_phase_without_an_artifact_is_done_when_its_files_are_written() {
    let pool = pool().await;
    let m = Mock::start().await;
    let q = unique_queue("art-files-only");
    let fleet = Fleet::start(&pool, &q, 1, 4, m.agent());
    let mut runs = Vec::new();
    for model in ["mock/notes", "mock/never-writes"] {
        let mut req = request(&q, json!({}));
        req.template = WorkflowTemplate::from_str_named("notes.yaml", FILES_ONLY).unwrap();
        runs.push(submit_as(&pool, model, req).await);
    }
    assert_eq!(drive(&pool, runs[0]).await, RunState::Completed);
    assert_eq!(drive(&pool, runs[1]).await, RunState::Failed);
    fleet.shutdown().await;
    let mut c = pool.acquire().await.unwrap();
    let (note, bytes) =
        phasefleet::store::files::run_files_content(&mut c, runs[0], "notes/handover.md", None)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        (note.origin.as_str(), bytes.as_slice()),
        ("handover", &b"# handover\nnotes\n"[..])
    );
    let error = error_of(&pool, runs[1]).await;
    assert!(error.contains("without writing any file"), "{error}");
    let reminded = envelopes_and_results(&m, "mock/never-writes")
        .iter()
        .flat_map(|b| text_of(&b["messages"], "user"))
        .any(|t| t.contains("You have not written any file yet"));
    assert!(reminded, "the model was reminded once");
}

#[test]
fn input_files_are_bounded_with_errors_that_name_the_file() {
    let dir = support::TempDir::new("art-bounds");
    std::fs::write(
        dir.path().join("big.bin"),
        vec![b'x'; input_files::MAX_INPUT_FILE_BYTES + 1],
    )
    .unwrap();
    std::fs::write(dir.path().join("ok.txt"), "fine").unwrap();
    let none = input_files::excludes(&[]).unwrap();
    let err = input_files::read_dir(dir.path(), &none)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("big.bin") && err.contains("--exclude"),
        "{err}"
    );
    let skip_big = input_files::excludes(&["*.bin".into()]).unwrap();
    let ok = input_files::read_dir(dir.path(), &skip_big).unwrap();
    assert_eq!(
        ok.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        ["ok.txt"]
    );
    assert_eq!(ok.skipped, ["big.bin (excluded)"]);
    let err = input_files::read_git(dir.path(), "HEAD", &none).unwrap_err();
    assert!(err.to_string().starts_with("git: "), "{err}");
    let twice = [
        InputFile {
            path: "a".into(),
            content: input_files::FileContent::Bytes(vec![]),
        },
        InputFile {
            path: "a".into(),
            content: input_files::FileContent::Bytes(vec![]),
        },
    ];
    assert!(input_files::digest(&twice).unwrap_err().contains("twice"));
}
