//! Worker processes under crashes, pauses, signals and drains, on the shared database.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::queue::{JobState, NewJob};
use phasefleet_worker::{Builtins, Worker, WorkerConfig};
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;
use tokio_util::sync::CancellationToken;

async fn wait_running_on(pool: &sqlx::PgPool, id: phasefleet::JobId, worker: phasefleet::WorkerId) {
    eventually(
        Duration::from_secs(30),
        "job running on the worker",
        || async {
            let j = job(pool, id).await;
            (j.state == JobState::Running && j.lease_owner == Some(worker)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn sigkilled_workers_job_is_reclaimed_within_the_lease_window() {
    let pool = pool().await;
    let q = unique_queue("sigkill");
    let id = enqueue(
        &pool,
        NewJob::new("sleep", json!({ "ms_by_attempt": [60_000, 1_000] })).queue(&q),
    )
    .await;
    let mut a = WorkerProcess::spawn(&test_db_url(), &q, FAST_WORKER);
    let a_id = worker_id_of(&pool, a.pid()).await;
    wait_running_on(&pool, id, a_id).await;
    let mut b = WorkerProcess::spawn(&test_db_url(), &q, FAST_WORKER);
    let b_id = worker_id_of(&pool, b.pid()).await;

    a.signal("KILL");
    let killed_at = Instant::now();
    wait_running_on(&pool, id, b_id).await;
    let took = killed_at.elapsed();
    let rescued = job(&pool, id).await;
    assert_eq!(
        (rescued.attempts, rescued.rescues),
        (2, 1),
        "one lost delivery, one rescue"
    );
    // lease 1.5s + a rescue pass every 1s + the claim: inside four lease windows.
    assert!(
        took < Duration::from_secs(6),
        "re-claimed {took:?} after the kill"
    );
    eventually(
        Duration::from_secs(20),
        "the survivor completes the job and counts it",
        || async { (completions_by(&pool, b_id).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(job_state(&pool, id).await, JobState::Completed);
    assert!(!a.is_alive());
    assert!(b.is_alive());
}

#[tokio::test]
async fn paused_zombie_worker_cannot_complete_a_rescued_job() {
    let pool = pool().await;
    let q = unique_queue("sigstop");
    // First delivery sleeps 2.5s: the zombie's timer ends while it is stopped, so it
    // tries to complete as soon as it runs again.
    let id = enqueue(
        &pool,
        NewJob::new("sleep", json!({ "ms_by_attempt": [2_500, 10] })).queue(&q),
    )
    .await;
    let mut a = WorkerProcess::spawn(&test_db_url(), &q, FAST_WORKER);
    let a_id = worker_id_of(&pool, a.pid()).await;
    wait_running_on(&pool, id, a_id).await;
    a.signal("STOP");
    let b = WorkerProcess::spawn(&test_db_url(), &q, FAST_WORKER);
    let b_id = worker_id_of(&pool, b.pid()).await;
    eventually(
        Duration::from_secs(20),
        "survivor completes the job",
        || async { (job_state(&pool, id).await == JobState::Completed).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3_000)).await; // let the zombie's sleep end
    a.signal("CONT");
    tokio::time::sleep(Duration::from_millis(1_500)).await; // it tries to complete now
    eventually(
        Duration::from_secs(10),
        "the survivor's completion is counted",
        || async { (completions_by(&pool, b_id).await == 1).then_some(()) },
    )
    .await;
    // A few heartbeats later the zombie still has counted nothing: its completion was
    // refused by the fence.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        completions_by(&pool, a_id).await,
        0,
        "the zombie's completion was refused"
    );
    assert!(a.is_alive(), "the zombie carries on after losing a lease");
}

#[tokio::test]
async fn sigterm_hands_back_unfinished_jobs_without_spending_an_attempt() {
    let pool = pool().await;
    let q = unique_queue("sigterm");
    let slow = enqueue(
        &pool,
        NewJob::new("sleep", json!({ "ms": 60_000 })).queue(&q),
    )
    .await;
    let quick = enqueue(&pool, NewJob::new("sleep", json!({ "ms": 300 })).queue(&q)).await;
    let mut a = WorkerProcess::spawn(
        &test_db_url(),
        &q,
        &[
            "--lease-ms",
            "5000",
            "--poll-ms",
            "200",
            "--shutdown-grace-ms",
            "1500",
        ],
    );
    let a_id = worker_id_of(&pool, a.pid()).await;
    wait_running_on(&pool, slow, a_id).await;
    wait_running_on(&pool, quick, a_id).await;
    a.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), a.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "worker exits cleanly on SIGTERM: {status}"
    );
    assert_eq!(
        job_state(&pool, quick).await,
        JobState::Completed,
        "in-flight work within the grace period finishes"
    );
    let s_row = job(&pool, slow).await;
    assert_eq!(s_row.state, JobState::Ready, "the rest is handed back");
    assert_eq!(s_row.attempts, 0, "handing back spends no attempt");
    let (state,): (String,) = sqlx::query_as("SELECT state FROM workers WHERE id = $1")
        .bind(a_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "stopped");
}

/// An in-process worker on `queue` with 2 slots, a 900 ms lease and 100 ms polls.
fn quick_worker(queue: &str) -> WorkerConfig {
    WorkerConfig {
        queue: queue.to_owned(),
        concurrency: 2,
        lease: Duration::from_millis(900),
        poll_interval: Duration::from_millis(100),
        ..WorkerConfig::default()
    }
}

#[tokio::test]
async fn drain_stops_claiming_lets_in_flight_finish_and_undrain_resumes() {
    let pool = pool().await;
    let q = unique_queue("drain");
    let cfg = quick_worker(&q);
    let worker = Worker::new(pool.clone(), cfg, Builtins);
    let wid = worker.id();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let in_flight = enqueue(
        &pool,
        NewJob::new("sleep", json!({ "ms": 1_000 })).queue(&q),
    )
    .await;
    wait_running_on(&pool, in_flight, wid).await;
    assert_eq!(
        phasefleet_worker::drain(&mut pool.acquire().await.unwrap(), Some(wid))
            .await
            .unwrap(),
        vec![wid]
    );
    eventually(
        Duration::from_secs(10),
        "worker reports drained",
        || async {
            let w = phasefleet_worker::list_workers(&pool, false).await.unwrap();
            w.iter()
                .find(|w| w.id == wid)
                .filter(|w| w.state == "drained")
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(
        job_state(&pool, in_flight).await,
        JobState::Completed,
        "in-flight job finished"
    );
    let after = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        job_state(&pool, after).await,
        JobState::Ready,
        "a drained worker claims nothing"
    );
    phasefleet_worker::undrain(&mut pool.acquire().await.unwrap(), Some(wid))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "undrained worker resumes",
        || async { (job_state(&pool, after).await == JobState::Completed).then_some(()) },
    )
    .await;
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn in_process_worker_runs_many_jobs_and_dead_letters_failures() {
    let pool = pool().await;
    let q = unique_queue("inproc");
    let cfg = WorkerConfig {
        queue: q.clone(),
        concurrency: 8,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(200),
        backoff: phasefleet::queue::Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        ..WorkerConfig::default()
    };
    let stop = CancellationToken::new();
    let worker = Worker::new(pool.clone(), cfg, Builtins);
    let wid = worker.id();
    let handle = tokio::spawn(worker.run(stop.clone()));
    for i in 0..200 {
        enqueue(&pool, NewJob::new("noop", json!({ "i": i })).queue(&q)).await;
    }
    let failing = enqueue(
        &pool,
        NewJob::new("fail", json!({})).queue(&q).max_attempts(3),
    )
    .await;
    let unknown = enqueue(&pool, NewJob::new("no-such-kind", json!({})).queue(&q)).await;
    eventually(
        Duration::from_secs(30),
        "all noop jobs complete",
        || async { (completions_by(&pool, wid).await == 200).then_some(()) },
    )
    .await;
    let mut conn = pool.acquire().await.unwrap();
    let stats = phasefleet::queue::stats(&mut conn).await.unwrap();
    assert!(
        stats.completed_last_minute >= 200,
        "throughput counts what workers completed: {stats:?}"
    );
    drop(conn);
    let dead = eventually(
        Duration::from_secs(30),
        "failing job dead-letters",
        || async {
            let j = job(&pool, failing).await;
            (j.state == JobState::Dead).then_some(j)
        },
    )
    .await;
    assert_eq!(dead.attempts, 3);
    let u = eventually(
        Duration::from_secs(10),
        "unknown kind dead-letters at once",
        || async {
            let j = job(&pool, unknown).await;
            (j.state == JobState::Dead).then_some(j)
        },
    )
    .await;
    assert_eq!(u.attempts, 1);
    assert!(u.last_error.unwrap().contains("no handler"));
    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_process_exports_its_counters_for_prometheus() {
    let pool = pool().await;
    let q = unique_queue("metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _w = WorkerProcess::spawn(
        &test_db_url(),
        &q,
        &["--poll-ms", "200", "--metrics-listen", &addr],
    );
    for _ in 0..3 {
        enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    }
    enqueue(
        &pool,
        NewJob::new("fail", json!({})).queue(&q).max_attempts(1),
    )
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "counters exported", || async {
        let text = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let has = |needle: &str| text.contains(needle);
        (has(&format!(
            "phasefleet_jobs_completed_total{{queue=\"{q}\"}} 3"
        )) && has(&format!("phasefleet_jobs_claimed_total{{queue=\"{q}\"}} 4"))
            && has(&format!(
                "phasefleet_jobs_failed_total{{queue=\"{q}\",outcome=\"retry\"}} 1"
            )))
        .then_some(())
    })
    .await;
}

/// A heartbeat held up longer than a lease (here: its `workers` row locked by someone
/// else) must count the completions it carries once. A heartbeat abandoned at its
/// time-out cannot tell whether its statement will still commit; putting its count back
/// for the next beat counted the same completion once per abandoned beat.
#[tokio::test]
async fn a_heartbeat_held_up_past_its_lease_counts_each_completion_once() {
    let pool = pool().await;
    let q = unique_queue("slowbeat");
    let cfg = quick_worker(&q);
    let stop = CancellationToken::new();
    let worker = Worker::new(pool.clone(), cfg, Builtins);
    let wid = worker.id();
    let handle = tokio::spawn(worker.run(stop.clone()));
    eventually(Duration::from_secs(10), "the worker registers", || async {
        let n: (i64,) = sqlx::query_as("SELECT count(*) FROM workers WHERE id = $1")
            .bind(wid)
            .fetch_one(&pool)
            .await
            .unwrap();
        (n.0 == 1).then_some(())
    })
    .await;
    // Hold the worker's row: every heartbeat now waits on the lock.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM workers WHERE id = $1 FOR UPDATE")
        .bind(wid)
        .execute(&mut *holder)
        .await
        .unwrap();
    let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    eventually(Duration::from_secs(10), "the job completes", || async {
        (job_state(&pool, id).await == JobState::Completed).then_some(())
    })
    .await;
    // Several heartbeats (one every 300 ms, each given up on after 900 ms) pile up
    // behind the lock; then it is released and the ones that were sent commit.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    holder.commit().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the completion is counted",
        || async { (completions_by(&pool, wid).await >= 1).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        completions_by(&pool, wid).await,
        1,
        "one completed job is counted once"
    );
    stop.cancel();
    handle.await.unwrap().unwrap();
}
