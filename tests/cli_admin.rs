//! The `phasefleet` CLI as operators use it: a real binary against the shared database
//! and real worker processes. Exit codes: 0 ok, 1 failure, 2 usage, 3 not found,
//! 4 conflict.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::queue::{JobState, NewJob};
use phasefleet::state::RunState;
use serde_json::{Value, json};
use std::time::Duration;
use support::engine::{Fleet, request, submit, wait_for};
use support::*;

const FAST: &[&str] = &[
    "--lease-ms",
    "3000",
    "--poll-ms",
    "200",
    "--concurrency",
    "2",
];

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Run `phasefleet ARGS` against the test database.
async fn cli(args: &[&str]) -> Out {
    cli_with(Some(&test_db_url()), args).await
}

/// The configuration the CLI runs with: the default team may use every test's queue.
fn cli_config() -> &'static str {
    static FILE: std::sync::OnceLock<support::engine::ConfigFile> = std::sync::OnceLock::new();
    FILE.get_or_init(|| support::engine::mock_config_file("http://127.0.0.1:9/v1"))
        .path()
}

async fn cli_with(db: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(workspace_bin("phasefleet"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env("PHASEFLEET_CONFIG", cli_config());
    if let Some(db) = db {
        cmd.args(["--database-url", db]);
    }
    let out = cmd.kill_on_drop(true).output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(out: &Out) {
    assert_eq!(
        out.code, 0,
        "expected success\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
}

#[tokio::test]
async fn drain_with_jobs_in_flight_loses_nothing_starts_nothing_and_undrain_resumes() {
    let pool = pool().await;
    let q = unique_queue("cli-drain");
    let a = WorkerProcess::spawn(&test_db_url(), &q, FAST);
    let b = WorkerProcess::spawn(&test_db_url(), &q, FAST);
    let (a_id, b_id) = (
        worker_id_of(&pool, a.pid()).await,
        worker_id_of(&pool, b.pid()).await,
    );
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        in_flight.push(
            enqueue(
                &pool,
                NewJob::new("sleep", json!({ "ms": 2_000 })).queue(&q),
            )
            .await,
        );
    }
    eventually(Duration::from_secs(30), "4 jobs running", || async {
        (count_in_state(&pool, &q, JobState::Running).await == 4).then_some(())
    })
    .await;

    let (a_s, b_s) = (a_id.to_string(), b_id.to_string());
    let drain = cli(&[
        "admin", "drain", "--worker", &a_s, "--worker", &b_s, "--wait", "--output", "json",
    ])
    .await;
    ok(&drain);
    let drained: Vec<String> = serde_json::from_value(drain.json()).unwrap();
    assert_eq!(drained.len(), 2);
    // --wait returned: both workers report drained, so their in-flight jobs ended.
    for id in &in_flight {
        assert_eq!(
            job_state(&pool, *id).await,
            JobState::Completed,
            "no job lost"
        );
    }
    let workers = cli(&["admin", "workers", "--output", "json"]).await;
    ok(&workers);
    let ours: Vec<Value> = workers
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["id"] == a_s.as_str() || w["id"] == b_s.as_str())
        .cloned()
        .collect();
    assert_eq!(ours.len(), 2);
    assert!(
        ours.iter()
            .all(|w| w["state"] == "drained" && w["in_flight"] == 0),
        "{ours:?}"
    );

    let later = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let j = job(&pool, later).await;
    assert_eq!(j.state, JobState::Ready, "a drained worker starts nothing");
    assert_eq!(j.attempts, 0);

    ok(&cli(&["admin", "undrain", "--worker", &a_s, "--worker", &b_s]).await);
    eventually(
        Duration::from_secs(20),
        "undrained workers resume",
        || async { (job_state(&pool, later).await == JobState::Completed).then_some(()) },
    )
    .await;
    // Unknown worker: not found.
    let missing = uuid::Uuid::new_v4().to_string();
    assert_eq!(cli(&["admin", "drain", "--worker", &missing]).await.code, 3);
}

#[tokio::test]
async fn requeue_of_dead_lettered_jobs_completes_them_and_dry_run_changes_nothing() {
    let pool = pool().await;
    let q = unique_queue("cli-dead");
    let until = chrono::Utc::now().timestamp_millis() + 2_000;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            enqueue(
                &pool,
                NewJob::new("fail", json!({ "until_unix_ms": until }))
                    .queue(&q)
                    .max_attempts(1),
            )
            .await,
        );
    }
    let _w = WorkerProcess::spawn(&test_db_url(), &q, FAST);
    eventually(Duration::from_secs(30), "3 dead jobs", || async {
        (count_in_state(&pool, &q, JobState::Dead).await == 3).then_some(())
    })
    .await;
    while chrono::Utc::now().timestamp_millis() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dry = cli(&[
        "admin",
        "requeue",
        "--dead",
        &q,
        "--dry-run",
        "--output",
        "json",
    ])
    .await;
    ok(&dry);
    let mut listed: Vec<i64> = serde_json::from_value(dry.json()).unwrap();
    listed.sort_unstable();
    assert_eq!(listed, ids.iter().map(|i| i.0).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count_in_state(&pool, &q, JobState::Dead).await,
        3,
        "dry run moved nothing"
    );

    ok(&cli(&["admin", "requeue", "--dead", &q]).await);
    // The audit holds the requeue as the CLI user's, with what it did; the dry run
    // changed nothing and is not there.
    let audit = audit_of(&pool, &q).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (audit[0].action.as_str(), audit[0].via.as_str(), audit[0].ok),
        ("requeue_dead", "cli", true)
    );
    assert!(audit[0].actor.starts_with("cli:"), "{audit:?}");
    assert!(audit[0].result.contains("3 dead job(s)"), "{audit:?}");
    eventually(
        Duration::from_secs(30),
        "requeued jobs complete",
        || async { (jobs_left(&pool, &q).await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn requeue_refuses_a_running_job_with_a_conflict_and_changes_nothing() {
    let pool = pool().await;
    let q = unique_queue("cli-running");
    let id = enqueue(
        &pool,
        NewJob::new("sleep", json!({ "ms": 3_000 })).queue(&q),
    )
    .await;
    let _w = WorkerProcess::spawn(&test_db_url(), &q, FAST);
    eventually(Duration::from_secs(30), "job running", || async {
        (job_state(&pool, id).await == JobState::Running).then_some(())
    })
    .await;
    let before = job(&pool, id).await;
    let out = cli(&["admin", "requeue", "--job", &id.0.to_string()]).await;
    assert_eq!(out.code, 4, "conflict; stderr: {}", out.stderr);
    assert!(out.stderr.contains("running"), "{}", out.stderr);
    // Refused, and recorded as refused with the reason.
    let audit = audit_of(&pool, &id.0.to_string()).await;
    assert_eq!(
        audit
            .iter()
            .map(|a| (a.action.as_str(), a.ok, a.result.contains("running")))
            .collect::<Vec<_>>(),
        vec![("requeue_job", false, true)]
    );
    let after = job(&pool, id).await;
    assert_eq!(
        (after.state, after.attempts, after.lease_owner),
        (before.state, before.attempts, before.lease_owner)
    );
    eventually(
        Duration::from_secs(30),
        "job completes untouched",
        || async { (job_state(&pool, id).await == JobState::Completed).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_failed_run_is_reopened_at_its_failed_phase_and_completes() {
    let pool = pool().await;
    let q = unique_queue("cli-retry");
    // Round 1 of `spec` is invalid on every attempt: the run fails there.
    let run = submit(
        &pool,
        request(
            &q,
            json!({ "synthetic": { "invalid_rounds": 1, "invalid_phases": ["spec"] } }),
        ),
    )
    .await;
    let fleet = Fleet::synthetic(&pool, &q, 1);
    assert_eq!(
        wait_for(&pool, run, &[RunState::Failed]).await,
        RunState::Failed
    );
    let run_s = run.to_string();

    let dry = cli(&[
        "admin",
        "requeue",
        "--run",
        &run_s,
        "--dry-run",
        "--output",
        "json",
    ])
    .await;
    ok(&dry);
    assert_eq!(dry.json()["phase"], "spec");
    assert_eq!(dry.json()["round"], 2);
    assert_eq!(engine_state(&pool, run).await, RunState::Failed, "dry run");

    ok(&cli(&["admin", "requeue", "--run", &run_s]).await);
    // The example gates `review`; approve it as it comes.
    let approval = support::engine::pending_approval(&pool, run).await;
    ok(&cli(&[
        "approvals",
        "decide",
        &approval.to_string(),
        "--action",
        "approve",
    ])
    .await);
    assert_eq!(
        wait_for(&pool, run, &[RunState::Completed, RunState::Failed]).await,
        RunState::Completed
    );
    support::engine::assert_event_log_sound(&pool, run).await;
    let (state, report, _) = support::engine::report(&pool, run).await;
    assert_eq!(state, "completed");
    let spec = &report["phases"][0];
    assert_eq!(
        (spec["round"].as_i64(), spec["state"].as_str()),
        (Some(2), Some("completed"))
    );
    // Re-opening a run that did not fail is a conflict.
    assert_eq!(cli(&["admin", "requeue", "--run", &run_s]).await.code, 4);
    fleet.shutdown().await;
}

async fn engine_state(pool: &sqlx::PgPool, run: phasefleet::RunId) -> RunState {
    support::engine::run_state(pool, run).await
}

#[tokio::test]
async fn listings_print_json_and_exit_codes_tell_errors_apart() {
    let pool = pool().await;
    let q = unique_queue("cli-json");
    let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let jobs = cli(&["admin", "jobs", "--queue", &q, "--output", "json"]).await;
    ok(&jobs);
    assert_eq!(jobs.json()[0]["id"], id.0);
    for args in [
        &["runs", "list", "--output", "json"][..],
        &["admin", "workers", "--all", "--output", "json"],
        &["admin", "stats", "--output", "json"],
        &["approvals", "list", "--output", "json"],
        &["admin", "job", &id.0.to_string(), "--output", "json"],
    ] {
        let out = cli(args).await;
        ok(&out);
        out.json();
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    for (args, code) in [
        (&["runs", "show", unknown.as_str()][..], 3),
        (&["runs", "cancel", unknown.as_str()], 3),
        (&["admin", "job", "987654321987"], 3),
        (&["admin", "requeue", "--job", "987654321987"], 3),
        (&["admin", "requeue", "--run", unknown.as_str()], 3),
        (&["runs", "show", "not-a-uuid"], 2),
        (&["admin", "requeue"], 2),
        (&["admin", "prune", "--older-than", "3 fortnights"], 2),
        (&["no-such-command"], 2),
    ] {
        let out = cli(args).await;
        assert_eq!(out.code, code, "{args:?}: stderr {}", out.stderr);
        assert!(
            out.stderr.contains("error"),
            "{args:?} explains itself: {}",
            out.stderr
        );
    }
    // No database configured: usage error; unreachable database: failure.
    assert_eq!(cli_with(None, &["admin", "stats"]).await.code, 2);
    let down = cli_with(Some("postgres://127.0.0.1:1/none"), &["admin", "stats"]).await;
    assert_eq!(down.code, 1, "{}", down.stderr);
    let comp = cli_with(None, &["completions", "bash"]).await;
    ok(&comp);
    assert!(comp.stdout.contains("phasefleet") && comp.stdout.contains("requeue"));
}

#[tokio::test]
async fn a_closed_pipe_a_password_and_control_characters_are_handled_like_an_operator_expects() {
    let pool = pool().await;
    let q = unique_queue("cli-hostile");
    let run = submit(&pool, request(&q, json!({}))).await;
    // Stored text may hold anything a caller or a model wrote.
    phasefleet::cancel::cancel_run(
        &pool,
        &phasefleet::teams::Scope::Fleet,
        run,
        Some("\u{1b}[31mred\u{7} alert\nsecond line"),
    )
    .await
    .unwrap();
    let list = cli(&["runs", "list", "--state", "cancelled", "--limit", "1000"]).await;
    ok(&list);
    assert!(
        !list.stdout.contains('\u{1b}') && !list.stdout.contains('\u{7}'),
        "raw control characters reached the terminal"
    );
    assert!(list.stdout.contains("\\u{1b}[31mred"), "{}", list.stdout);
    assert!(list.stdout.lines().next().unwrap().contains("TEAM"));
    // The reader goes away after one line: a quiet exit, not a panic (101).
    let mut child = tokio::process::Command::new(workspace_bin("phasefleet"))
        .args([
            "--database-url",
            &test_db_url(),
            "runs",
            "list",
            "--limit",
            "1000",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut first)
        .await
        .unwrap();
    drop(stdout);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --help never shows DATABASE_URL's password.
    let help = tokio::process::Command::new(workspace_bin("phasefleet"))
        .arg("--help")
        .env("DATABASE_URL", "postgres://u:hunter2-SECRET@db/x")
        .output()
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("hunter2"));
    // Messages use words.
    let again = cli(&["runs", "cancel", &run.to_string()]).await;
    ok(&again);
    assert_eq!(again.stdout.trim(), "already ended (cancelled)");
}

#[tokio::test]
async fn a_reused_idempotency_key_with_another_request_is_a_conflict_in_the_cli_too() {
    let _ = pool().await;
    let q = unique_queue("cli-idem");
    let key = format!("cli-key-{}", uuid::Uuid::new_v4());
    let repo = |p: &str| support::engine::repo(p).display().to_string();
    let other = std::env::temp_dir().join(format!("{key}.yaml"));
    std::fs::write(
        &other,
        std::fs::read_to_string(repo("examples/spec-review-verify.yaml"))
            .unwrap()
            .replace("name: spec-review-verify", "name: another-template"),
    )
    .unwrap();
    let submit_with = |template: String| {
        let (a, r, key, q) = (
            repo("examples/personas/synthetic-author.yaml"),
            repo("examples/personas/synthetic-reviewer.yaml"),
            key.clone(),
            q.clone(),
        );
        async move {
            cli(&[
                "submit",
                &template,
                "--persona",
                &a,
                "--persona",
                &r,
                "--idempotency-key",
                &key,
                "--queue",
                &q,
                "--output",
                "json",
            ])
            .await
        }
    };
    let first = submit_with(repo("examples/spec-review-verify.yaml")).await;
    ok(&first);
    let same = submit_with(repo("examples/spec-review-verify.yaml")).await;
    ok(&same);
    assert_eq!(first.json()["run_id"], same.json()["run_id"]);
    assert_eq!(same.json()["outcome"], "existing");
    let conflict = submit_with(other.display().to_string()).await;
    assert_eq!(conflict.code, 4, "stderr: {}", conflict.stderr);
    assert!(
        conflict.stderr.contains("different request"),
        "{}",
        conflict.stderr
    );
    let _ = std::fs::remove_file(other);
}

#[tokio::test]
async fn a_repository_goes_in_and_artifacts_and_files_come_out_through_the_cli() {
    let pool = pool().await;
    let q = unique_queue("cli-files");
    let repo = TempDir::new("cli-repo");
    let repo_dir = repo.path();
    let readme = "# A repository\nThe agent reads this.\n";
    std::fs::write(repo_dir.join("README.md"), readme).unwrap();
    std::fs::write(repo_dir.join("huge.bin"), vec![7u8; 2 * 1024 * 1024]).unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "one",
        ],
    ] {
        assert!(
            std::process::Command::new("git")
                .arg("-C")
                .arg(repo_dir)
                .args(args)
                .status()
                .unwrap()
                .success()
        );
    }
    let repo = |p: &str| support::engine::repo(p).display().to_string();
    let (template, a, r) = (
        repo("examples/repo-review.yaml"),
        repo("examples/personas/synthetic-author.yaml"),
        repo("examples/personas/synthetic-reviewer.yaml"),
    );
    let at_head = format!("{}@HEAD", repo_dir.display());
    let submit_args = |exclude: bool| {
        let mut v = vec![
            "submit",
            &template,
            "--persona",
            &a,
            "--persona",
            &r,
            "--queue",
            &q,
            "--repo",
            &at_head,
            "--output",
            "json",
        ];
        if exclude {
            v.extend(["--exclude", "*.bin"]);
        }
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let too_big = cli(&submit_args(false)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    assert_eq!(too_big.code, 2, "{}", too_big.stderr);
    assert!(
        too_big.stderr.contains("huge.bin") && too_big.stderr.contains("--exclude"),
        "{}",
        too_big.stderr
    );
    let submitted = cli(&submit_args(true)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    ok(&submitted);
    assert!(
        submitted
            .stderr
            .contains("left out 1 path(s): huge.bin (excluded)"),
        "{}",
        submitted.stderr
    );
    let run = submitted.json()["run_id"].as_str().unwrap().to_owned();
    let run_id = phasefleet::RunId(run.parse().unwrap());
    let fleet = Fleet::synthetic(&pool, &q, 1);
    let approval = support::engine::pending_approval(&pool, run_id)
        .await
        .to_string();
    // The reviewer sees what they approve: in the inbox, and whole.
    let inbox = cli(&["approvals", "list", "--limit", "1000"]).await;
    ok(&inbox);
    let row = inbox
        .stdout
        .lines()
        .find(|l| l.contains(&approval))
        .unwrap_or_default();
    assert!(row.contains("review.json"), "{row}");
    let shown = cli(&["approvals", "show", &approval]).await;
    ok(&shown);
    assert!(
        shown.stdout.contains("review.json") && shown.stdout.contains("\"verdict\""),
        "{}",
        shown.stdout
    );
    let survey = cli(&["runs", "artifact", &run, "survey", "--output", "json"]).await;
    ok(&survey);
    let cited: Value = serde_json::from_str(survey.json()["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        cited["files"][0],
        json!({ "path": "README.md", "sha256": phasefleet::workflow::sha256_hex(readme) })
    );
    ok(&cli(&["approvals", "decide", &approval, "--action", "approve"]).await);
    assert_eq!(
        wait_for(&pool, run_id, &[RunState::Completed, RunState::Failed]).await,
        RunState::Completed
    );
    fleet.shutdown().await;
    let files = cli(&["runs", "files", &run, "--output", "json"]).await;
    ok(&files);
    let listed: Vec<(String, String)> = files
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["origin"].as_str().unwrap().to_owned(),
                f["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        listed.contains(&(String::new(), "README.md".into())),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("handover".into(), "synthetic/handover.txt".into())),
        "the files-only phase's output: {listed:?}"
    );
    let content = cli(&["runs", "file", &run, "README.md"]).await;
    ok(&content);
    assert_eq!(content.stdout, readme);
    let missing = cli(&["runs", "file", &run, "nope.txt"]).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);
}

/// The README's first command, on a database of its own (the demo works on the
/// `default` queue, which no other test may see): every run completes and every gate is
/// decided by the demo's approver.
#[tokio::test]
async fn the_readme_demo_completes_every_run_and_decides_every_gate() {
    let pool = pool_on("phasefleet_demo").await;
    let db = format!("{}/phasefleet_demo", server_url());
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        cli_with(Some(&db), &["demo", "--runs", "20"]),
    )
    .await
    .expect("the demo ran longer than 300 s");
    ok(&out);
    assert!(
        out.stderr.contains("20/20 run(s) completed"),
        "{}",
        out.stderr
    );
    let runs: Vec<phasefleet::RunId> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("submitted run "))
        .map(|id| phasefleet::RunId(id.trim().parse().unwrap()))
        .collect();
    assert_eq!(runs.len(), 20, "{}", out.stderr);
    let decided: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM approval_decisions d JOIN approval_requests r ON r.id = d.request_id
          WHERE r.run_id = ANY($1) AND d.decided_by = 'demo-approver' AND d.action = 'approve'",
    )
    .bind(&runs)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(decided, 20, "one approved gate per run");
}

#[tokio::test]
async fn a_graph_mistake_in_a_template_exits_2_naming_the_phase_and_field() {
    let dir = TempDir::new("cli-graph");
    let example =
        std::fs::read_to_string(support::engine::repo("examples/parallel-review.yaml")).unwrap();
    let persona = support::engine::repo("examples/personas/synthetic-author.yaml");
    let reviewer = support::engine::repo("examples/personas/synthetic-reviewer.yaml");
    for (name, text, field, says) in [
        (
            "cycle.yaml",
            example.replacen(
                "    role: author\n",
                "    role: author\n    needs: [summary]\n",
                1,
            ),
            "phases[0].needs",
            "cycle: spec needs summary",
        ),
        (
            "fan-out.yaml",
            example.replace("needs: [spec, rework]", "needs: [rework]"),
            "phases[5].fan_out.over",
            "not one of this phase's needs",
        ),
        (
            "condition.yaml",
            example.replace("artifact: review_security,", "artifact: summary,"),
            "phases[4].when.artifact",
            "not upstream",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = cli(&[
            "submit",
            path.to_str().unwrap(),
            "--persona",
            persona.to_str().unwrap(),
            "--persona",
            reviewer.to_str().unwrap(),
        ])
        .await;
        assert_eq!(out.code, 2, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("`{field}`")) && out.stderr.contains(says),
            "{name}: {}",
            out.stderr
        );
    }
}

/// The audit rows whose target is `target`, newest first.
async fn audit_of(
    pool: &sqlx::PgPool,
    target: &str,
) -> Vec<phasefleet::store::operator_actions::OperatorActionRow> {
    let mut c = pool.acquire().await.unwrap();
    phasefleet::store::operator_actions::operator_actions_list(&mut c, None, 500)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.target.as_deref() == Some(target))
        .collect()
}
