//! Chaos: many runs (a quarter of them graphs: parallel phases, a condition, a fan-out)
//! through several worker processes against the mock LLM over HTTP,
//! while workers are SIGKILLed at random, PostgreSQL is restarted once and Redis is
//! stopped and started. Afterwards the invariant checker must find nothing, every run
//! must have completed, and the ledger must account for every request the mock saw.
//!
//! Private PostgreSQL and Redis (restarting them disturbs no other test). Size:
//! `CHAOS_RUNS` (default 40, the CI variant), `CHAOS_WORKERS` (default 3). The full
//! variant: `CHAOS_RUNS=300 cargo nextest run --test chaos --release` (see
//! docs/reliability.md).
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::RunId;
use phasefleet::approval::{self, Action};
use phasefleet::local_pg::LocalPg;
use phasefleet::submit::SubmitRequest;
use phasefleet::workflow::Definition;
use phasefleet::workflow::WorkflowTemplate;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_killed_workers_a_postgres_restart_and_a_redis_outage() {
    let runs_wanted = env_usize("CHAOS_RUNS", 40);
    let workers_wanted = env_usize("CHAOS_WORKERS", 3);
    let started = Instant::now();

    let dir = std::env::temp_dir().join(format!(
        "phasefleet-chaos-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let pg = LocalPg::start(&dir, &[("fsync", "off"), ("max_connections", "200")])
        .await
        .unwrap();
    let db_url = pg.url();
    let pool = phasefleet::db::pool_options(8)
        .connect(&db_url)
        .await
        .unwrap();
    phasefleet::db::migrate(&pool).await.unwrap();
    let mut redis = RedisServer::start(free_port());
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = format!("http://{}", listener.local_addr().unwrap());
    let stats = phasefleet_mockllm::spawn(listener);

    // Three model behaviours: slow enough that kills land mid-call, a repair, 5xx retries.
    let personas = vec![
        mock::named_persona("author", "mock/slow-800"),
        mock::named_persona("reviewer", "mock/slow-400"),
        mock::named_persona("flaky-author", "mock/invalid-then-valid"),
        mock::named_persona("erroring-author", "mock/server-error"),
    ];
    let config_file = engine::mock_config_file(&format!("{mock}/v1"));
    // An example template with its roles played by the mock's personas.
    let example = |path: &str| {
        let text = std::fs::read_to_string(engine::repo(path))
            .unwrap()
            .replace("persona: synthetic-author", "persona: author")
            .replace("persona: synthetic-reviewer", "persona: reviewer");
        WorkflowTemplate::from_str_named(path, &text).unwrap()
    };
    let template = example("examples/spec-review-verify.yaml");
    // Every fourth run is a graph: three parallel reviews, a condition, a fan-out.
    let graph = example("examples/parallel-review.yaml");
    let schemas = engine::schemas();
    let q = "chaos";
    let mut runs: Vec<RunId> = Vec::new();
    for i in 0..runs_wanted {
        let mut bindings = std::collections::BTreeMap::new();
        match i % 4 {
            1 => {
                bindings.insert("author".to_owned(), "flaky-author".to_owned());
            }
            2 => {
                bindings.insert("author".to_owned(), "erroring-author".to_owned());
            }
            _ => {}
        }
        let req = SubmitRequest {
            template: if i % 4 == 3 {
                graph.clone()
            } else {
                template.clone()
            },
            personas: personas.clone(),
            bindings,
            idempotency_key: Some(format!("chaos-{i}")),
            submitted_by: Some("chaos".into()),
            ..engine::request(q, serde_json::json!({}))
        };
        runs.push(
            phasefleet::submit::submit(&pool, &schemas, &engine::config(), req)
                .await
                .unwrap()
                .run_id(),
        );
    }

    let worker_args: Vec<String> = [
        "--lease-ms",
        "2000",
        "--poll-ms",
        "200",
        "--concurrency",
        "4",
        "--shutdown-grace-ms",
        "1000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let spawn_worker = || {
        let args: Vec<&str> = worker_args.iter().map(String::as_str).collect();
        WorkerProcess::spawn_with_env(
            &db_url,
            q,
            &args,
            &[
                ("REDIS_URL", redis_url.as_str()),
                (
                    "PHASEFLEET_MODEL_LIMITS",
                    r#"{"mock/slow-800":{"concurrent":10,"rpm":6000}}"#,
                ),
                ("PHASEFLEET_LLM_CALL_TIMEOUT_SECS", "10"),
                ("PHASEFLEET_CONFIG", config_file.path()),
            ],
        )
    };
    let mut workers: Vec<WorkerProcess> = (0..workers_wanted).map(|_| spawn_worker()).collect();

    // A reviewer approves what waits, revising one request in ten.
    let stop = CancellationToken::new();
    let decided = Arc::new(AtomicUsize::new(0));
    let approver = {
        let (pool, stop, decided) = (pool.clone(), stop.clone(), decided.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.is_cancelled() {
                if let Ok(mut c) = pool.acquire().await
                    && let Ok(pending) =
                        approval::pending(&mut c, &phasefleet::teams::Scope::Fleet, 200).await
                {
                    drop(c);
                    for a in pending {
                        n += 1;
                        let (action, comment) = if n.is_multiple_of(10) && a.round == 1 {
                            (Action::Revise, Some("tighten the findings"))
                        } else {
                            (Action::Approve, None)
                        };
                        if approval::decide(
                            &pool,
                            &phasefleet::teams::Scope::Fleet,
                            a.id,
                            action,
                            comment,
                            Some("chaos-reviewer"),
                        )
                        .await
                        .is_ok()
                        {
                            decided.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let ended = |pool: sqlx::PgPool, runs: Vec<RunId>| async move {
        let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
        sqlx::query_as::<_, (i64,)>(
            "SELECT count(*) FROM runs WHERE id = ANY($1) AND state IN ('completed', 'failed', 'aborted', 'cancelled')",
        )
        .bind(ids)
        .fetch_one(&pool)
        .await
        .map(|r| r.0)
        .unwrap_or(-1)
    };

    // Chaos until every run has ended.
    let (mut kills, mut pg_restarts, mut redis_outages) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(env_usize("CHAOS_MAX_SECS", 600) as u64);
    let total = i64::try_from(runs_wanted).unwrap();
    let mut tick = 0;
    loop {
        let done = ended(pool.clone(), runs.clone()).await;
        if done == total && pg_restarts == 1 && redis_outages == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chaos: only {done}/{total} runs ended in time"
        );
        tick += 1;
        if tick == 3 {
            pg.restart().await.unwrap();
            pg_restarts += 1;
        } else if tick == 6 {
            redis.down();
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.up();
            redis_outages += 1;
        } else {
            let victim = fastrand::usize(..workers.len());
            workers[victim].signal("KILL");
            let _ = workers[victim].child.wait().await;
            kills += 1;
            workers[victim] = spawn_worker();
        }
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1200..2500))).await;
    }
    // A phase whose worker was killed max_attempts times is dead-lettered and its run
    // fails with that reason (poison-job protection). The operator's answer is
    // `admin requeue --run`: re-open each such run and let the fleet finish it.
    let ids: Vec<uuid::Uuid> = runs.iter().map(|r| r.0).collect();
    let failed: Vec<(RunId, Option<String>)> =
        sqlx::query_as("SELECT id, error FROM runs WHERE id = ANY($1) AND state <> 'completed'")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .unwrap();
    for (run, error) in &failed {
        let error = error.clone().unwrap_or_default();
        assert!(
            error.contains("worker lost"),
            "run {run} failed for another reason: {error}"
        );
        phasefleet::retry::retry_failed_run(&pool, *run, Some("chaos-operator"), false)
            .await
            .unwrap();
    }
    let reopened = failed.len();
    eventually(Duration::from_secs(180), "re-opened runs complete", || {
        let pool = pool.clone();
        let ids = ids.clone();
        async move {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM runs WHERE id = ANY($1) AND state = 'completed'",
            )
            .bind(ids)
            .fetch_one(&pool)
            .await
            .ok()?;
            (n == total).then_some(())
        }
    })
    .await;
    // Let the fleet settle, then stop it gracefully.
    stop.cancel();
    approver.await.unwrap();
    for w in &workers {
        w.signal("TERM");
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(20), w.child.wait()).await;
    }

    let mut c = pool.acquire().await.unwrap();
    let violations = phasefleet::store::invariants::check(&mut c, Some(&runs), 0.0)
        .await
        .unwrap();
    assert!(violations.is_empty(), "invariants broken: {violations:#?}");
    let (completed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM runs WHERE id = ANY($1) AND state = 'completed'")
            .bind(&ids)
            .fetch_one(&mut *c)
            .await
            .unwrap();
    let failed: Vec<(String,)> = sqlx::query_as(
        "SELECT COALESCE(error, state::text) FROM runs WHERE id = ANY($1) AND state <> 'completed'",
    )
    .bind(&ids)
    .fetch_all(&mut *c)
    .await
    .unwrap();
    assert_eq!(completed, total, "runs that did not complete: {failed:?}");

    // The ledger accounts for every request the mock received: each carries the id of
    // a ledger row written before it was sent. Rows whose request never arrived are
    // attempts cut off by a kill between the insert and the send.
    let seen: HashSet<String> = stats.call_ids().into_iter().collect();
    let requests = stats.requests.load(Ordering::SeqCst);
    assert_eq!(
        u64::try_from(seen.len()).unwrap(),
        requests,
        "every request carried a distinct call id"
    );
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT call_id::text, status FROM llm_calls WHERE call_id IS NOT NULL")
            .fetch_all(&mut *c)
            .await
            .unwrap();
    let ledger: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let unrecorded: Vec<&String> = seen
        .iter()
        .filter(|id| !ledger.contains(id.as_str()))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "model calls missing from the ledger: {unrecorded:?}"
    );
    let not_sent = rows.iter().filter(|(id, _)| !seen.contains(id)).count();
    let cut_off = rows.iter().filter(|(_, s)| s == "in_flight").count();
    assert!(
        rows.iter()
            .filter(|(id, _)| !seen.contains(id))
            .all(|(_, s)| s == "in_flight"),
        "a finished ledger row without a request"
    );
    // A turn sent twice is a phase job delivered again after a kill or a restart.
    let (events, jobs_redelivered, fan_outs, items, skipped): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM run_events WHERE run_id = ANY($1)),
                (SELECT count(*) FROM (SELECT 1 FROM llm_calls WHERE run_id = ANY($1)
                  GROUP BY run_id, phase_key, attempt, turn HAVING count(*) > 1) AS again),
                (SELECT count(*) FROM run_events WHERE run_id = ANY($1) AND kind = 'phase.fanned_out'),
                (SELECT count(*) FROM run_phases WHERE run_id = ANY($1) AND parent IS NOT NULL AND state = 'completed'),
                (SELECT count(*) FROM run_phases WHERE run_id = ANY($1) AND state = 'skipped')",
    )
    .bind(&ids)
    .fetch_one(&mut *c)
    .await
    .unwrap();
    println!(
        "CHAOS: runs={total} completed={completed} workers={workers_wanted} kills={kills} pg_restarts={pg_restarts} \
         redis_outages={redis_outages} dead_lettered_by_kills_and_reopened={reopened} approvals_decided={} mock_requests={requests} ledger_rows={} \
         ledger_cut_off_in_flight={cut_off} ledger_not_sent={not_sent} events={events} jobs_redelivered={jobs_redelivered} \
         graph_runs={} fan_outs={fan_outs} items_completed={items} phases_skipped_by_condition={skipped} \
         violations=0 secs={:.0}",
        decided.load(Ordering::Relaxed),
        rows.len(),
        total / 4,
        started.elapsed().as_secs_f64()
    );
    assert!(
        kills > 0 && pg_restarts == 1 && redis_outages == 1,
        "the chaos happened"
    );
    assert_eq!(fan_outs, total / 4, "every graph run fanned out once");
    assert!(items >= fan_outs, "every fan-out's items completed");
    drop(c);
    pool.close().await;
    drop(redis);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
