//! Faults beyond kills, made real with network namespaces (tests/support/netfault.rs):
//! workers, the API and the mock model each in a namespace of their own, reaching a
//! private PostgreSQL and Redis over links the test cuts, heals, delays and makes lossy;
//! and a PostgreSQL primary replaced by its streaming standby while runs are in flight.
//! After each scenario the invariant checker must find nothing.
//!
//! Needs root (CI runs as root). Size of the lossy-link scenario: `PARTITION_RUNS`
//! (default 12, the CI variant); the full variant is in docs/reliability.md.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::RunId;
use phasefleet::local_pg::LocalPg;
use phasefleet::state::PhaseState;
use phasefleet::submit::SubmitRequest;
use phasefleet::workflow::{Definition, WorkflowTemplate};
use phasefleet_mockllm::Stats;
use sqlx::PgPool;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::engine::{assert_event_log_sound, assert_run_completed, drive};
use support::netfault::{FaultNet, Node, Relay};
use support::*;

/// Worker leases in these scenarios: a cut longer than this loses the lease.
const LEASE_MS: u64 = 2000;

/// The example workflow, its roles played by the personas `author` and `reviewer`;
/// without its gate unless `gated`.
fn example(gated: bool) -> WorkflowTemplate {
    let mut text = std::fs::read_to_string(engine::repo("examples/spec-review-verify.yaml"))
        .unwrap()
        .replace("persona: synthetic-author", "persona: author")
        .replace("persona: synthetic-reviewer", "persona: reviewer");
    if !gated {
        text = text.replace("gates: [human_review]", "");
    }
    WorkflowTemplate::from_str_named("partition.yaml", &text).unwrap()
}

/// The example workflow without its gate, its roles played by mock models.
fn request(queue: &str, author: &str, reviewer: &str, i: usize) -> SubmitRequest {
    SubmitRequest {
        template: example(false),
        personas: vec![
            mock::named_persona("author", author),
            mock::named_persona("reviewer", reviewer),
        ],
        idempotency_key: Some(format!("partition-{queue}-{i}")),
        submitted_by: Some("partitions".into()),
        ..engine::request(queue, serde_json::json!({}))
    }
}

/// A private PostgreSQL, the mock model in its namespace, and workers in theirs.
struct Cluster {
    pg: LocalPg,
    /// The test's own connection (loopback, never cut).
    pool: PgPool,
    mock: SocketAddr,
    stats: Arc<Stats>,
    net: FaultNet,
    _dir: TempDir,
}

/// A worker process in its own namespace, with its links.
struct NsWorker {
    node: Node,
    /// Its link to PostgreSQL.
    db: Relay,
    /// Its link to the model (a loopback port in its namespace).
    model: Relay,
    process: WorkerProcess,
    _config: engine::ConfigFile,
}

impl Cluster {
    async fn start(pg_settings: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("partitions");
        let mut settings = vec![("fsync", "off"), ("max_connections", "200")];
        settings.extend_from_slice(pg_settings);
        let pg = LocalPg::start(&dir.path().join("primary"), &settings)
            .await
            .unwrap();
        let pool = phasefleet::db::pool_options(8)
            .connect(&pg.url())
            .await
            .unwrap();
        phasefleet::db::migrate(&pool).await.unwrap();
        let mut net = FaultNet::new();
        let mock_node = net.node("model");
        let listener = net.listen_in(&mock_node);
        let mock = SocketAddr::from((mock_node.addr, listener.local_addr().unwrap().port()));
        let stats = phasefleet_mockllm::spawn(listener);
        Self {
            pg,
            pool,
            mock,
            stats,
            net,
            _dir: dir,
        }
    }

    fn pg_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.pg.port()))
    }

    /// A worker in a new namespace `name`, reaching PostgreSQL through `db` (a relay
    /// on its link; a new one to this cluster's server when `None`).
    async fn worker(&mut self, name: &str, queue: &str, db: Option<SocketAddr>) -> NsWorker {
        self.worker_with(name, queue, db, &[]).await
    }

    async fn worker_with(
        &mut self,
        name: &str,
        queue: &str,
        db: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> NsWorker {
        let node = self.net.node(name);
        let db = self.net.expose(&node, db.unwrap_or(self.pg_addr())).await;
        let model = self.net.expose_on_loopback(&node, self.mock);
        let config = engine::mock_config_file(&format!("http://{}/v1", model.addr));
        let lease = LEASE_MS.to_string();
        let mut cmd = self.net.command(&node, &workspace_bin("phasefleet-worker"));
        cmd.args([
            "--database-url",
            &format!("postgres://postgres@{}/postgres", db.addr),
            "--queue",
            queue,
            "--lease-ms",
            &lease,
            "--poll-ms",
            "200",
            "--concurrency",
            "4",
            "--shutdown-grace-ms",
            "1000",
        ])
        .env("PHASEFLEET_CONFIG", config.path())
        .env("PHASEFLEET_LLM_CALL_TIMEOUT_SECS", "10")
        .env("RUST_LOG", "info,sqlx=warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(if std::env::var_os("TEST_WORKER_LOGS").is_some() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        });
        let child = cmd.spawn().unwrap();
        NsWorker {
            node,
            db,
            model,
            process: WorkerProcess { child },
            _config: config,
        }
    }

    async fn submit(&self, req: SubmitRequest) -> RunId {
        phasefleet::submit::submit(&self.pool, &engine::schemas(), &engine::config(), req)
            .await
            .unwrap()
            .run_id()
    }

    async fn assert_invariants(&self, runs: &[RunId]) {
        let mut c = self.pool.acquire().await.unwrap();
        let violations = phasefleet::store::invariants::check(&mut c, Some(runs), 0.0)
            .await
            .unwrap();
        assert!(violations.is_empty(), "invariants broken: {violations:#?}");
    }
}

async fn count(pool: &PgPool, sql: &'static str, run: RunId) -> i64 {
    sqlx::query_as::<_, (i64,)>(sql)
        .bind(run)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

/// A worker cut off from PostgreSQL for longer than its lease while its phase waits on
/// the model: another worker rescues and completes the phase; when the link heals, the
/// first worker's attempt is fenced: no second artifact, no event appended again, no
/// further model call for that attempt, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_postgres_past_its_lease_is_fenced_when_the_link_heals() {
    let mut cluster = Cluster::start(&[]).await;
    let queue = "cut-db";
    // The author takes four turns of 1.5 s (the cut lands between two of them); the
    // reviewer takes 6 s, so the run is still running (its review in flight) when
    // the cut worker comes back.
    let cut = cluster.worker("cut", queue, None).await;
    let run = cluster
        .submit(request(queue, "mock/steps-4-1500", "mock/slow-6000", 0))
        .await;
    eventually(
        Duration::from_secs(30),
        "the spec's model call is sent",
        || {
            let pool = cluster.pool.clone();
            async move {
                (count(
                    &pool,
                    "SELECT count(*) FROM llm_calls WHERE run_id = $1 AND phase_key = 'spec'",
                    run,
                )
                .await
                    > 0)
                .then_some(())
            }
        },
    )
    .await;
    cluster.net.cut(&cut.node, &cut.db);
    let rescuer = cluster.worker("rescuer", queue, None).await;
    let rescuer_id = worker_id_of(&cluster.pool, rescuer.process.pid()).await;
    eventually(
        Duration::from_secs(30),
        "the rescuer takes the spec's job",
        || {
            let pool = cluster.pool.clone();
            async move {
                sqlx::query_as::<_, (i64,)>(
                    "SELECT count(*) FROM jobs WHERE run_id = $1 AND lease_owner = $2",
                )
                .bind(run)
                .bind(rescuer_id)
                .fetch_one(&pool)
                .await
                .ok()
                .and_then(|r| (r.0 > 0).then_some(()))
            }
        },
    )
    .await;
    // Heal while the rescuer works on the spec: the cut worker's attempt, its answer in
    // hand and waiting for a connection, would go on with its next turn.
    cut.model.capture();
    let healed_at = chrono::Utc::now();
    cluster.net.heal(&cut.node, &cut.db);
    // The cut worker is back: its heartbeat reaches PostgreSQL again.
    let cut_id = worker_id_of(&cluster.pool, cut.process.pid()).await;
    eventually(
        Duration::from_secs(90),
        "the cut worker's heartbeat is back",
        || {
            let pool = cluster.pool.clone();
            async move {
                sqlx::query_as::<_, (bool,)>("SELECT heartbeat_at > $2 FROM workers WHERE id = $1")
                    .bind(cut_id)
                    .bind(healed_at)
                    .fetch_one(&pool)
                    .await
                    .ok()
                    .and_then(|r| r.0.then_some(()))
            }
        },
    )
    .await;
    let state = drive(&cluster.pool, run).await;
    assert_eq!(state, phasefleet::state::RunState::Completed);
    let mut c = cluster.pool.acquire().await.unwrap();
    let spec = engine::phase_of(&mut c, run, "spec")
        .await
        .unwrap()
        .unwrap();
    drop(c);
    assert_eq!(spec.state, PhaseState::Completed);
    // What the cut worker asked the model after the heal: later phases it claimed
    // are its own work; a request for the spec would be the attempt taken from it.
    let sent = cut.model.captured();
    assert!(
        !sent.contains("Phase: spec"),
        "the cut worker sent the model a request for the spec after the heal (its attempt was taken over)"
    );
    assert_eq!(
        count(
            &cluster.pool,
            "SELECT count(*) FROM artifacts WHERE run_id = $1 AND phase_key = 'spec'",
            run
        )
        .await,
        1,
        "one spec artifact"
    );
    assert_eq!(
        count(
            &cluster.pool,
            "SELECT count(*) FROM run_events WHERE run_id = $1 AND kind = 'phase.completed' AND phase_key = 'spec'",
            run
        )
        .await,
        1,
        "the spec completed once"
    );
    assert_event_log_sound(&cluster.pool, run).await;
    cluster.assert_invariants(&[run]).await;
    drop(rescuer);
    drop(cut);
}

/// A worker cut off from the model provider only: its calls time out and are retried
/// per the retry policy while its heartbeats keep the lease (the job is never
/// rescued); each HTTP attempt has one ledger row, and the run completes after the
/// heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_model_retries_keeps_its_lease_and_writes_one_ledger_row_per_call()
 {
    let mut cluster = Cluster::start(&[]).await;
    let queue = "cut-model";
    // Calls time out after 2 s; the cut lasts through at least two of them.
    let worker = cluster
        .worker_with(
            "cut",
            queue,
            None,
            &[("PHASEFLEET_LLM_CALL_TIMEOUT_SECS", "2")],
        )
        .await;
    let worker_id = worker_id_of(&cluster.pool, worker.process.pid()).await;
    cluster.net.cut(&worker.node, &worker.model);
    let run = cluster
        .submit(request(queue, "mock/slow-200", "mock/slow-200", 0))
        .await;
    let finished_calls = |n: i64| {
        let pool = cluster.pool.clone();
        async move {
            eventually(Duration::from_secs(30), &format!("{n} calls timed out"), || {
                let pool = pool.clone();
                async move {
                    (count(
                        &pool,
                        "SELECT count(*) FROM llm_calls WHERE run_id = $1 AND status <> 'in_flight'",
                        run,
                    )
                    .await
                        >= n)
                        .then_some(())
                }
            })
            .await;
        }
    };
    finished_calls(1).await;
    // The lease is this worker's still: renewed while its call waits, never taken back.
    let (owner, rescues, live): (Option<phasefleet::WorkerId>, i32, bool) = sqlx::query_as(
        "SELECT lease_owner, rescues, lease_expires_at > now() FROM jobs WHERE run_id = $1 AND state = 'running'",
    )
    .bind(run)
    .fetch_one(&cluster.pool)
    .await
    .unwrap();
    assert_eq!(owner, Some(worker_id));
    assert_eq!(rescues, 0, "the job was never rescued");
    assert!(live, "the lease is live");
    finished_calls(2).await;
    cluster.net.heal(&worker.node, &worker.model);
    assert_eq!(
        drive(&cluster.pool, run).await,
        phasefleet::state::RunState::Completed
    );
    // One ledger row per HTTP attempt: every call id once; the timed-out attempts of
    // the spec are rows of their own, the mock saw only the answered ones.
    assert_eq!(
        count(
            &cluster.pool,
            "SELECT count(*) FROM (SELECT call_id FROM llm_calls WHERE run_id = $1 GROUP BY call_id HAVING count(*) > 1) d",
            run
        )
        .await,
        0,
        "a call recorded twice"
    );
    let (rows, timed_out): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE error ILIKE '%timed out%') FROM llm_calls WHERE run_id = $1",
    )
    .bind(run)
    .fetch_one(&cluster.pool)
    .await
    .unwrap();
    assert!(timed_out >= 2, "the calls cut off timed out: {timed_out}");
    // Every request the mock saw is one of those rows (a request let through just as
    // the link healed may have answered too late and count as timed out).
    let ledger: HashSet<String> =
        sqlx::query_as::<_, (String,)>("SELECT call_id::text FROM llm_calls WHERE run_id = $1")
            .bind(run)
            .fetch_all(&cluster.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect();
    let seen = cluster.stats.call_ids();
    assert!(
        seen.iter().all(|id| ledger.contains(id)),
        "a request the ledger does not know"
    );
    assert!(
        i64::try_from(seen.len()).unwrap() >= rows - timed_out,
        "every answered call reached the mock"
    );
    assert_event_log_sound(&cluster.pool, run).await;
    cluster.assert_invariants(&[run]).await;
}

/// Runs through two workers whose links to PostgreSQL add 50 ms +- 10 ms (worker to
/// PostgreSQL, as `tc netem` on the worker's interface would) and drop 1% of packets
/// each way: every run completes, and the phases per second are printed next
/// to the same runs over clean links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_complete_over_slow_lossy_links_to_postgres() {
    let runs = std::env::var("PARTITION_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12usize);
    let mut cluster = Cluster::start(&[]).await;
    let mut measured = Vec::new();
    for (label, faulty) in [("clean", false), ("50ms+-10ms,1%loss", true)] {
        let queue = format!("links-{faulty}");
        let mut workers = Vec::new();
        for w in 0..2 {
            let worker = cluster
                .worker(
                    &format!("{}{w}", if faulty { "slow" } else { "clean" }),
                    &queue,
                    None,
                )
                .await;
            if faulty {
                worker
                    .db
                    .set_delay(Some((Duration::from_millis(50), Duration::from_millis(10))));
                cluster.net.set_loss(&worker.node, 10);
            }
            workers.push(worker);
        }
        let started = Instant::now();
        let mut ids = Vec::new();
        for i in 0..runs {
            ids.push(
                cluster
                    .submit(request(&queue, "mock/valid", "mock/valid", i))
                    .await,
            );
        }
        for run in &ids {
            assert_eq!(
                drive(&cluster.pool, *run).await,
                phasefleet::state::RunState::Completed,
                "{label}: run {run}"
            );
        }
        let secs = started.elapsed().as_secs_f64();
        let phases = 3 * runs;
        measured.push((label, secs, phases as f64 / secs));
        cluster.assert_invariants(&ids).await;
        for run in &ids {
            assert_event_log_sound(&cluster.pool, *run).await;
        }
        drop(workers);
    }
    for (label, secs, rate) in &measured {
        println!(
            "LINKS: {label}: {runs} runs, {} phases in {secs:.1} s = {rate:.2} phases/s",
            3 * runs
        );
    }
    println!(
        "LINKS: slow lossy links at {:.0}% of the clean links' phases/s",
        100.0 * measured[1].2 / measured[0].2
    );
}

/// The API process in its own namespace, cut off from Redis and then from PostgreSQL:
/// without Redis it keeps serving (its readiness says Redis is unreachable and live
/// events come through its own LISTEN); without PostgreSQL readiness is 503 and a
/// submit is refused with 503 (nothing half-made); after the heal the refused submit,
/// retried with its Idempotency-Key, makes its run, an event stream resumes with
/// Last-Event-ID without a gap, and every accepted run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cut_off_from_redis_then_postgres_loses_nothing_and_its_streams_resume() {
    let mut cluster = Cluster::start(&[]).await;
    let mut redis = RedisServer::start(free_port());
    let queue = "api-cut";
    let _worker = cluster.worker("worker", queue, None).await;
    let api_node = cluster.net.node("api");
    let db = cluster.net.expose(&api_node, cluster.pg_addr()).await;
    let bus = cluster
        .net
        .expose(&api_node, SocketAddr::from(([127, 0, 0, 1], redis.port)))
        .await;
    const TOKEN: &str = "partition-admin-token-0123456789abcdef";
    // The mock's provider and a team that may use every queue.
    let config = engine::mock_config_file("http://127.0.0.1:9/v1");
    let mut api = cluster
        .net
        .command(&api_node, &workspace_bin("phasefleet-api"));
    api.args(["--listen", "0.0.0.0:8080"])
        .env("PHASEFLEET_CONFIG", config.path())
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@{}/postgres", db.addr),
        )
        .env("REDIS_URL", format!("redis://{}", bus.addr))
        .env("PHASEFLEET_API_TOKENS", format!("admin:{TOKEN}"))
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _api = api.spawn().unwrap();
    let base = format!("http://{}:8080", api_node.addr);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let submit = |key: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/v1/runs"))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", key)
                .json(&api::example_body(
                    queue,
                    serde_json::json!({ "synthetic": { "delay_ms": 700 } }),
                ))
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .map(|r| r.status())
        }
    };
    wait_ready(&http, &base, 60, "the API is ready on Redis", |s, b| {
        s.is_success() && b["event_bus"] == "redis"
    })
    .await;
    let mut statuses = vec![submit("cut-api-1").await.unwrap()];
    let run = run_by_key(&cluster.pool, "cut-api-1").await;
    let stream = |last: Option<i64>| {
        let mut req = http
            .get(format!("{base}/v1/runs/{run}/events/stream"))
            .bearer_auth(TOKEN);
        if let Some(last) = last {
            req = req.header("Last-Event-ID", last.to_string());
        }
        req.send()
    };
    let mut res = stream(None).await.unwrap();
    let mut seen = api::read_sse(&mut res, |kind, _| kind == "phase.started").await;

    // 1. Redis cut: still ready (its own LISTEN takes over the wake-ups), submits
    //    accepted, the open stream goes on.
    cluster.net.cut(&api_node, &bus);
    wait_ready(
        &http,
        &base,
        30,
        "readiness says Redis is unreachable",
        |s, b| s.is_success() && b["redis"] == "unreachable",
    )
    .await;
    statuses.push(submit("cut-api-2").await.unwrap());
    seen.extend(api::read_sse(&mut res, |kind, _| kind == "phase.completed").await);
    cluster.net.heal(&api_node, &bus);

    // 2. PostgreSQL cut: not ready; a submit is refused, not half-made.
    cluster.net.cut(&api_node, &db);
    wait_ready(
        &http,
        &base,
        30,
        "readiness is 503 without PostgreSQL",
        |s, b| s == reqwest::StatusCode::SERVICE_UNAVAILABLE && b["database"] == "unreachable",
    )
    .await;
    let refused = submit("cut-api-3").await;
    assert!(
        matches!(refused, Ok(reqwest::StatusCode::SERVICE_UNAVAILABLE)),
        "a submit without PostgreSQL: {refused:?}"
    );
    drop(res);
    cluster.net.heal(&api_node, &db);
    wait_ready(&http, &base, 60, "ready again", |s, _| s.is_success()).await;
    statuses.push(submit("cut-api-3").await.unwrap());
    assert!(
        statuses.iter().all(|s| *s == reqwest::StatusCode::CREATED),
        "every submit accepted once: {statuses:?}"
    );

    // 3. The stream resumes right after the last event it delivered; gates are
    //    approved; every accepted run completes.
    let last = seen.iter().filter_map(|e| e.0).max().unwrap();
    let mut res = stream(Some(last)).await.unwrap();
    let mut ids: Vec<RunId> = Vec::new();
    for key in ["cut-api-1", "cut-api-2", "cut-api-3"] {
        ids.push(run_by_key(&cluster.pool, key).await);
    }
    let approver = {
        let (pool, ids) = (cluster.pool.clone(), ids.clone());
        tokio::spawn(async move {
            for run in ids {
                drive(&pool, run).await;
            }
        })
    };
    let rest = api::read_sse(&mut res, |kind, _| kind == "end").await;
    approver.await.unwrap();
    assert_eq!(
        rest.first().unwrap().0,
        Some(last + 1),
        "resumes right after Last-Event-ID"
    );
    let all: Vec<i64> = seen.iter().chain(rest.iter()).filter_map(|e| e.0).collect();
    assert_eq!(
        all,
        (1..=i64::try_from(all.len()).unwrap()).collect::<Vec<_>>(),
        "every event once, in order"
    );
    for run in &ids {
        assert_run_completed(&cluster.pool, *run).await;
        assert_event_log_sound(&cluster.pool, *run).await;
    }
    cluster.assert_invariants(&ids).await;
    redis.down();
}

/// Poll the API's `/readyz` until `holds(status, body)`.
async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    secs: u64,
    what: &str,
    holds: impl Fn(reqwest::StatusCode, &serde_json::Value) -> bool,
) {
    eventually(Duration::from_secs(secs), what, || async {
        let res = http.get(format!("{base}/readyz")).send().await.ok()?;
        let status = res.status();
        let body = res.json::<serde_json::Value>().await.ok()?;
        holds(status, &body).then_some(())
    })
    .await;
}

async fn run_by_key(pool: &PgPool, key: &str) -> RunId {
    sqlx::query_as::<_, (RunId,)>("SELECT id FROM runs WHERE idempotency_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

/// What a failover lost: rows the old primary had committed that the promoted standby
/// does not have.
#[derive(Debug)]
struct FailoverLoss {
    /// Events the old primary had committed when it crashed.
    events_before: i64,
    /// ... that the standby lacked when promoted (the loss window).
    events_missing_at_promotion: i64,
    /// ... that the new primary lacks after every run completed (not redone).
    events_lost_for_good: i64,
    decisions_missing_at_promotion: i64,
    decisions_lost_for_good: i64,
    /// How far the standby's replay was behind the old primary's last WAL.
    wal_bytes_behind: i64,
}

impl FailoverLoss {
    fn print(&self, mode: &str) {
        println!(
            "FAILOVER {mode}: old primary committed {} events; missing at promotion {} events, {} decisions; \
             lost for good {} events, {} decisions; standby {} WAL bytes behind",
            self.events_before,
            self.events_missing_at_promotion,
            self.decisions_missing_at_promotion,
            self.events_lost_for_good,
            self.decisions_lost_for_good,
            self.wal_bytes_behind
        );
    }
}

/// Runs (with a gate each) through two workers in their namespaces; once a third of the
/// phases are done the primary crashes (`-m immediate`), the standby is promoted and
/// the proxies every process reaches PostgreSQL through are pointed at it. The workers
/// are not restarted. Afterwards every run completes on the new primary, the invariant
/// checker finds nothing, and the old primary (started again on its own) tells what it
/// had committed that the new one lacks.
async fn fail_over_under_load(synchronous: bool, runs: usize) -> FailoverLoss {
    let mut cluster = Cluster::start(&[("wal_level", "replica")]).await;
    // The replication stream crosses a relay: 20 ms each way when asynchronous, so
    // the standby lags as it would across hosts.
    let replication = cluster.net.proxy(cluster.pg_addr()).await;
    if !synchronous {
        replication.set_delay(Some((Duration::from_millis(20), Duration::ZERO)));
        replication.set_delay_down(Duration::from_millis(20));
    }
    let conninfo = format!("'host=127.0.0.1 port={} user=postgres'", replication.port());
    let standby = cluster
        .pg
        .start_standby(
            &cluster._dir.path().join("standby"),
            &[
                ("fsync", "off"),
                ("max_connections", "200"),
                ("primary_conninfo", &conninfo),
            ],
        )
        .await
        .unwrap();
    if synchronous {
        sqlx::query("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .execute(&cluster.pool)
            .await
            .unwrap();
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&cluster.pool)
            .await
            .unwrap();
    }
    let wanted = if synchronous { "sync" } else { "async" };
    eventually(Duration::from_secs(30), "the standby streams", || {
        let pool = cluster.pool.clone();
        async move {
            sqlx::query_as::<_, (String,)>("SELECT sync_state FROM pg_stat_replication")
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
                .filter(|r| r.0 == wanted)
                .map(|_| ())
        }
    })
    .await;
    // The stable address: the test and each worker reach PostgreSQL through proxies.
    let front = cluster.net.proxy(cluster.pg_addr()).await;
    let pool = phasefleet::db::pool_options(8)
        .connect(&format!("postgres://postgres@{}/postgres", front.addr))
        .await
        .unwrap();
    let queue = if synchronous {
        "failover-sync"
    } else {
        "failover-async"
    };
    let mut workers = Vec::new();
    for w in 0..2 {
        workers.push(cluster.worker(&format!("w{w}"), queue, None).await);
    }
    let mut ids = Vec::new();
    for i in 0..runs {
        let mut req = request(queue, "mock/slow-300", "mock/slow-300", i);
        req.template = example(true);
        ids.push(cluster.submit(req).await);
    }
    // A reviewer approves whatever waits, through the proxy, riding out the failover.
    let stop = tokio_util::sync::CancellationToken::new();
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let approver = {
        let (pool, stop, paused) = (pool.clone(), stop.clone(), paused.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if !paused.load(std::sync::atomic::Ordering::SeqCst)
                    && let Ok(mut c) = pool.acquire().await
                    && let Ok(pending) =
                        phasefleet::approval::pending(&mut c, &phasefleet::teams::Scope::Fleet, 200)
                            .await
                {
                    drop(c);
                    for a in pending {
                        let _ = phasefleet::approval::decide(
                            &pool,
                            &phasefleet::teams::Scope::Fleet,
                            a.id,
                            phasefleet::approval::Action::Approve,
                            None,
                            Some("failover-reviewer"),
                        )
                        .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let total_phases = i64::try_from(3 * runs).unwrap();
    eventually(
        Duration::from_secs(120),
        "a third of the phases done",
        || {
            let pool = cluster.pool.clone();
            async move {
                let (done,): (i64,) =
                    sqlx::query_as("SELECT count(*) FROM run_phases WHERE state = 'completed'")
                        .fetch_one(&pool)
                        .await
                        .ok()?;
                (done * 3 >= total_phases).then_some(())
            }
        },
    )
    .await;

    // The failover: crash, promote, repoint the proxies. No process is restarted.
    cluster.pool.close().await;
    let mut old = cluster.pg;
    if synchronous {
        // Synchronous replication keeps every *acknowledged* commit; one flushed on the
        // primary and still waiting for the standby when it crashes is on the old disk
        // only, which is allowed. Stop the committers an instant so none is waiting.
        paused.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in &workers {
            w.process.signal("STOP");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if !synchronous {
        // The primary's host is gone with what it had on the wire: the WAL the relay
        // holds is dropped with its connections, then the server stops.
        replication.retarget(SocketAddr::from(([127, 0, 0, 1], 9)));
    }
    old.crash().await.unwrap();
    if synchronous {
        for w in &workers {
            w.process.signal("CONT");
        }
        paused.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    let standby_lsn: (String,) = {
        let direct = phasefleet::db::pool_options(1)
            .connect(&standby.url())
            .await
            .unwrap();
        let lsn = sqlx::query_as("SELECT pg_last_wal_replay_lsn()::text")
            .fetch_one(&direct)
            .await
            .unwrap();
        direct.close().await;
        lsn
    };
    standby.promote().await.unwrap();
    // What the new primary holds before anyone writes to it (the proxies still point
    // at the dead server): the old primary's commits missing here are the loss window.
    let direct = phasefleet::db::pool_options(1)
        .connect(&standby.url())
        .await
        .unwrap();
    let (at_promotion, decided_at_promotion) = (
        events_of_all(&direct).await,
        decisions_of_all(&direct).await,
    );
    direct.close().await;
    let new_primary = SocketAddr::from(([127, 0, 0, 1], standby.port()));
    front.retarget(new_primary);
    for w in &workers {
        w.db.retarget(new_primary);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let states: Vec<(RunId, String)> =
            sqlx::query_as("SELECT id, state::text FROM runs WHERE id = ANY($1)")
                .bind(ids.iter().map(|r| r.0).collect::<Vec<_>>())
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        if states.len() == ids.len() && states.iter().all(|(_, s)| s == "completed") {
            break;
        }
        if Instant::now() > deadline {
            let stuck: Vec<_> = states.iter().filter(|(_, s)| s != "completed").collect();
            let phases: Vec<(RunId, String, String, i32)> = sqlx::query_as(
                "SELECT run_id, phase_key, state::text, attempts FROM run_phases WHERE run_id = ANY($1) AND state <> 'completed'",
            )
            .bind(stuck.iter().map(|r| r.0.0).collect::<Vec<_>>())
            .fetch_all(&pool)
            .await
            .unwrap();
            let jobs: Vec<(i64, String, Option<RunId>, serde_json::Value)> = sqlx::query_as(
                "SELECT id, state::text, run_id, payload FROM jobs WHERE run_id = ANY($1)",
            )
            .bind(stuck.iter().map(|r| r.0.0).collect::<Vec<_>>())
            .fetch_all(&pool)
            .await
            .unwrap();
            let events: Vec<(i64, String, Option<String>, String)> = sqlx::query_as(
                "SELECT seq, kind, phase_key, idempotency_key FROM run_events WHERE run_id = ANY($1) ORDER BY run_id, seq",
            )
            .bind(stuck.iter().map(|r| r.0.0).collect::<Vec<_>>())
            .fetch_all(&pool)
            .await
            .unwrap();
            panic!(
                "runs stuck after the failover: {stuck:?}\nphases: {phases:?}\njobs: {jobs:?}\nevents: {events:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    approver.await.unwrap();
    {
        let mut c = pool.acquire().await.unwrap();
        let violations = phasefleet::store::invariants::check(&mut c, Some(&ids), 0.0)
            .await
            .unwrap();
        assert!(violations.is_empty(), "invariants broken: {violations:#?}");
    }
    for run in &ids {
        assert_event_log_sound(&pool, *run).await;
    }
    for w in &mut workers {
        assert!(w.process.is_alive(), "the workers rode out the failover");
    }

    // What the old primary had committed that the new one lacks.
    let old = LocalPg::start(&cluster._dir.path().join("primary"), &[("fsync", "off")])
        .await
        .unwrap();
    let old_pool = phasefleet::db::pool_options(2)
        .connect(&old.url())
        .await
        .unwrap();
    let (before, after) = (events_of_all(&old_pool).await, events_of_all(&pool).await);
    let (decided_before, decided_after) = (
        decisions_of_all(&old_pool).await,
        decisions_of_all(&pool).await,
    );
    let (old_lsn,): (i64,) = sqlx::query_as("SELECT (pg_current_wal_lsn() - $1::pg_lsn)::bigint")
        .bind(&standby_lsn.0)
        .fetch_one(&old_pool)
        .await
        .unwrap();
    old_pool.close().await;
    pool.close().await;
    drop(workers);
    drop(old);
    drop(standby);
    let missing =
        |a: &HashSet<Event>, b: &HashSet<Event>| i64::try_from(a.difference(b).count()).unwrap();
    let missing_decisions = |a: &HashSet<Decision>, b: &HashSet<Decision>| {
        i64::try_from(a.difference(b).count()).unwrap()
    };
    FailoverLoss {
        events_before: i64::try_from(before.len()).unwrap(),
        events_missing_at_promotion: missing(&before, &at_promotion),
        events_lost_for_good: missing(&before, &after),
        decisions_missing_at_promotion: missing_decisions(&decided_before, &decided_at_promotion),
        decisions_lost_for_good: missing_decisions(&decided_before, &decided_after),
        wal_bytes_behind: old_lsn,
    }
}

/// An event by what it records (its seq may differ when it is appended again).
type Event = (uuid::Uuid, String);
type Decision = (uuid::Uuid, String);

async fn events_of_all(pool: &PgPool) -> HashSet<Event> {
    sqlx::query_as::<_, Event>("SELECT run_id, idempotency_key FROM run_events")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn decisions_of_all(pool: &PgPool) -> HashSet<Decision> {
    sqlx::query_as::<_, Decision>("SELECT request_id, action::text FROM approval_decisions")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// With synchronous replication a promoted standby has every committed phase, event
/// and approval decision the old primary had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_synchronous_standby_loses_no_committed_phase_event_or_decision() {
    let loss = fail_over_under_load(true, 12).await;
    loss.print("sync");
    assert!(loss.events_before > 0);
    assert_eq!(loss.events_missing_at_promotion, 0, "{loss:?}");
    assert_eq!(loss.decisions_missing_at_promotion, 0, "{loss:?}");
}

/// With asynchronous replication (20 ms each way) the loss window is measured: what
/// the old primary committed that the standby had not received. Every run still
/// completes and no run is left without a live lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_an_asynchronous_standby_strands_no_run_and_measures_its_loss_window() {
    let loss = fail_over_under_load(false, 12).await;
    loss.print("async");
    assert!(loss.events_before > 0);
}
