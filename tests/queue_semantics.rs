//! The queue's contract, exercised directly on the shared test database.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::WorkerId;
use phasefleet::queue::{
    self, Backoff, CancelOutcome, Enqueued, JobState, NewJob, QueueError, RetryOutcome,
};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_hand_one_job_to_two_workers() {
    let pool = pool().await;
    let q = unique_queue("claims");
    let mut conn = pool.acquire().await.unwrap();
    for i in 0..600 {
        queue::enqueue(&mut conn, &NewJob::new("noop", json!({ "i": i })).queue(&q))
            .await
            .unwrap();
    }
    drop(conn);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let pool = pool.clone();
        let q = q.clone();
        tasks.spawn(async move {
            let me = WorkerId::new();
            let mut seen = Vec::new();
            loop {
                let mut conn = pool.acquire().await.unwrap();
                let batch = 1 + (w % 4);
                let jobs = queue::claim(&mut conn, me, &q, batch, Duration::from_secs(30))
                    .await
                    .unwrap();
                if jobs.is_empty() {
                    return seen;
                }
                for j in jobs {
                    let _done = queue::complete(&mut conn, &j.lease()).await.unwrap();
                    seen.push(j.id);
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), 600, "every job claimed exactly once in total");
    assert_eq!(unique.len(), 600, "no job handed to two workers");
    assert_eq!(
        jobs_left(&pool, &q).await,
        0,
        "every job completed and left the table"
    );
}

#[tokio::test]
async fn zombie_cannot_complete_after_its_lease_is_rescued() {
    let pool = pool().await;
    let q = unique_queue("zombie");
    let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let (a, b) = (WorkerId::new(), WorkerId::new());
    let mut conn = pool.acquire().await.unwrap();
    let claimed_a = queue::claim(&mut conn, a, &q, 1, Duration::from_millis(300))
        .await
        .unwrap();
    let lease_a = claimed_a[0].lease();
    // A goes silent; its lease expires and a rescue pass takes the job back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Any worker's rescue pass may take it (other tests run workers on this database);
    // ours makes sure one has run.
    queue::rescue_expired(&mut conn, 1000).await.unwrap();
    let row = job(&pool, id).await;
    assert_eq!(
        (row.state, row.rescues),
        (JobState::Ready, 1),
        "expired lease rescued"
    );
    let claimed_b = queue::claim(&mut conn, b, &q, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let lease_b = claimed_b[0].lease();
    assert!(
        lease_b.token > lease_a.token,
        "a new claim gets a newer fencing token"
    );

    // The zombie wakes up: every write it tries is refused. Its heartbeat says the
    // lease is lost and the job is still in the queue (taken, not completed).
    let hb = queue::heartbeat(&mut conn, &[lease_a], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(hb.lost, vec![id]);
    assert!(hb.gone.is_empty(), "taken by another worker, not gone");
    assert!(matches!(
        queue::complete(&mut conn, &lease_a).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(matches!(
        queue::fail(&mut conn, &lease_a, "x").await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(matches!(
        queue::hand_back(&mut conn, &lease_a).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert!(matches!(
        queue::retry(&mut conn, &lease_a, "x", &Backoff::default(), None).await,
        Err(QueueError::LeaseLost { .. })
    ));
    assert_eq!(
        (job(&pool, id).await.attempts, job(&pool, id).await.rescues),
        (2, 1)
    );
    // The rightful owner completes it: the row leaves the table, and the zombie still
    // cannot complete what is gone.
    let _done = queue::complete(&mut conn, &lease_b).await.unwrap();
    assert_eq!(job_state(&pool, id).await, JobState::Completed);
    assert!(matches!(
        queue::complete(&mut conn, &lease_a).await,
        Err(QueueError::LeaseLost { .. })
    ));
}

#[tokio::test]
async fn a_completion_batch_completes_held_leases_and_refuses_stale_ones() {
    let pool = pool().await;
    let q = unique_queue("batch");
    for i in 0..3 {
        enqueue(&pool, NewJob::new("noop", json!({ "i": i })).queue(&q)).await;
    }
    let (a, b) = (WorkerId::new(), WorkerId::new());
    let mut conn = pool.acquire().await.unwrap();
    let claimed = queue::claim(&mut conn, a, &q, 3, Duration::from_secs(30))
        .await
        .unwrap();
    let leases: Vec<_> = claimed.iter().map(queue::ClaimedJob::lease).collect();
    // The second job changes hands (a rescue and a new claim) before the batch is written.
    let stolen = leases[1];
    sqlx::query("UPDATE jobs SET lease_token = lease_token + 1, lease_owner = $2 WHERE id = $1")
        .bind(stolen.job_id)
        .bind(b)
        .execute(&mut *conn)
        .await
        .unwrap();
    let done = queue::complete_many(&mut conn, &leases).await.unwrap();
    assert_eq!(done.len(), 2, "only the held leases are completed");
    assert!(done.proof(&leases[0]).is_ok());
    assert!(done.proof(&leases[2]).is_ok());
    assert!(matches!(
        done.proof(&stolen),
        Err(QueueError::LeaseLost { .. })
    ));
    let row = job(&pool, stolen.job_id).await;
    assert_eq!(
        row.state,
        JobState::Running,
        "the stale lease left the new owner's job alone"
    );
    for held in [leases[0], leases[2]] {
        assert_eq!(job_state(&pool, held.job_id).await, JobState::Completed);
    }
}

/// Claim `n` noop jobs of a fresh queue for worker `me`.
async fn claimed(pool: &sqlx::PgPool, name: &str, n: i64, me: WorkerId) -> Vec<queue::Lease> {
    let q = unique_queue(name);
    for i in 0..n {
        enqueue(pool, NewJob::new("noop", json!({ "i": i })).queue(&q)).await;
    }
    let mut conn = pool.acquire().await.unwrap();
    queue::claim(&mut conn, me, &q, n, Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(queue::ClaimedJob::lease)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_completer_batches_handlers_and_fences_each_lease() {
    use phasefleet_worker::Completer;
    let pool = pool().await;
    let me = WorkerId::new();
    let leases = claimed(&pool, "completer", 40, me).await;
    // One job of the batch changes hands before its completion is written.
    let stolen = leases[7];
    sqlx::query("UPDATE jobs SET lease_token = lease_token + 1 WHERE id = $1")
        .bind(stolen.job_id)
        .execute(&pool)
        .await
        .unwrap();
    let (completer, flush) = Completer::new(pool.clone(), 16, Duration::from_millis(20));
    let stop = tokio_util::sync::CancellationToken::new();
    let flushing = tokio::spawn(flush.run(stop.clone()));
    let mut handlers = tokio::task::JoinSet::new();
    for lease in leases.clone() {
        let completer = completer.clone();
        handlers.spawn(async move { (lease, completer.complete(lease).await) });
    }
    let mut lost = Vec::new();
    while let Some(joined) = handlers.join_next().await {
        let (lease, result) = joined.unwrap();
        match result {
            Ok(_done) => {}
            Err(QueueError::LeaseLost { job_id, .. }) => lost.push(job_id),
            Err(other) => panic!("unexpected error for {lease:?}: {other}"),
        }
    }
    assert_eq!(lost, vec![stolen.job_id], "only the stale lease is refused");
    for held in leases.iter().filter(|l| l.job_id != stolen.job_id) {
        assert_eq!(job_state(&pool, held.job_id).await, JobState::Completed);
    }
    // After the flush task has stopped, completions are written one by one.
    stop.cancel();
    let batches = flushing.await.unwrap();
    assert!(
        (1..=10).contains(&batches),
        "39 completions were written in a few statements, not one each (got {batches})"
    );
    let late = claimed(&pool, "completer-late", 1, me).await[0];
    let _done = completer.complete(late).await.unwrap();
    assert_eq!(job_state(&pool, late.job_id).await, JobState::Completed);
}

#[tokio::test]
async fn zombie_completion_inside_a_transaction_rolls_back_its_effects() {
    let pool = pool().await;
    let q = unique_queue("fenced-tx");
    let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let a = WorkerId::new();
    let mut conn = pool.acquire().await.unwrap();
    let lease = queue::claim(&mut conn, a, &q, 1, Duration::from_millis(200))
        .await
        .unwrap()[0]
        .lease();
    tokio::time::sleep(Duration::from_millis(300)).await;
    queue::rescue_expired(&mut conn, 1000).await.unwrap();
    // The zombie's "effect" is enqueueing a follow-up job in the same transaction.
    let follow = unique_queue("follow");
    let mut tx = pool.begin().await.unwrap();
    queue::enqueue(&mut tx, &NewJob::new("noop", json!({})).queue(&follow))
        .await
        .unwrap();
    let err = queue::complete(&mut tx, &lease).await.unwrap_err();
    assert!(matches!(err, QueueError::LeaseLost { .. }));
    tx.rollback().await.unwrap();
    assert_eq!(
        count_in_state(&pool, &follow, JobState::Ready).await,
        0,
        "effect rolled back"
    );
    assert_eq!(job_state(&pool, id).await, JobState::Ready);
}

#[tokio::test]
async fn transactional_enqueue_rolled_back_leaves_nothing() {
    let pool = pool().await;
    let q = unique_queue("txenq");
    let key = format!("key-{q}");
    let mut tx = pool.begin().await.unwrap();
    let e = queue::enqueue(
        &mut tx,
        &NewJob::new("noop", json!({})).queue(&q).unique_key(&key),
    )
    .await
    .unwrap();
    assert!(matches!(e, Enqueued::Created(_)));
    tx.rollback().await.unwrap();
    let n: (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE queue = $1 OR unique_key = $2")
        .bind(&q)
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        n.0, 0,
        "rolled-back enqueue leaves no row and frees its unique key"
    );

    let mut tx = pool.begin().await.unwrap();
    let e = queue::enqueue(
        &mut tx,
        &NewJob::new("noop", json!({})).queue(&q).unique_key(&key),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(job(&pool, e.id()).await.state, JobState::Ready);
}

#[tokio::test]
async fn unique_enqueue_returns_the_existing_job() {
    let pool = pool().await;
    let q = unique_queue("unique");
    let key = format!("k-{q}");
    let mut conn = pool.acquire().await.unwrap();
    let first = queue::enqueue(
        &mut conn,
        &NewJob::new("noop", json!({"n": 1}))
            .queue(&q)
            .unique_key(&key),
    )
    .await
    .unwrap();
    let second = queue::enqueue(
        &mut conn,
        &NewJob::new("noop", json!({"n": 2}))
            .queue(&q)
            .unique_key(&key),
    )
    .await
    .unwrap();
    assert!(matches!(first, Enqueued::Created(_)));
    assert_eq!(second, Enqueued::Existing(first.id()));
    assert_eq!(
        job(&pool, first.id()).await.payload,
        json!({"n": 1}),
        "the first job is untouched"
    );
    // Once the job completed it has left the table, and its key with it: the same key
    // makes a new job (producers that must not repeat work check their own state).
    let lease = queue::claim(&mut conn, WorkerId::new(), &q, 1, Duration::from_secs(30))
        .await
        .unwrap()[0]
        .lease();
    let _done = queue::complete(&mut conn, &lease).await.unwrap();
    let again = queue::enqueue(
        &mut conn,
        &NewJob::new("noop", json!({"n": 3}))
            .queue(&q)
            .unique_key(&key),
    )
    .await
    .unwrap();
    assert!(
        matches!(again, Enqueued::Created(id) if id != first.id()),
        "{again:?}"
    );
}

#[tokio::test]
async fn bad_enqueue_arguments_are_refused() {
    let pool = pool().await;
    let mut conn = pool.acquire().await.unwrap();
    for bad in [
        NewJob::new("", json!({})),
        NewJob::new("noop", json!({})).queue(""),
        NewJob::new("noop", json!({})).queue("*"),
        NewJob::new("noop", json!({})).max_attempts(0),
    ] {
        let err = queue::enqueue(&mut conn, &bad).await.unwrap_err();
        assert!(matches!(err, QueueError::InvalidArgument(_)), "{err}");
    }
}

#[tokio::test]
async fn priority_first_then_run_at_then_fifo() {
    let pool = pool().await;
    let q = unique_queue("order");
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let low = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let high = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q).priority(10)).await;
    let low2 = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let scheduled = enqueue(
        &pool,
        NewJob::new("noop", json!({}))
            .queue(&q)
            .priority(100)
            .run_at(later),
    )
    .await;
    let me = WorkerId::new();
    let mut conn = pool.acquire().await.unwrap();
    let got: Vec<_> = queue::claim(&mut conn, me, &q, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    let mut expected = vec![high, low, low2];
    let mut sorted_got = got.clone();
    sorted_got.sort_by_key(|id| expected.iter().position(|e| e == id));
    assert_eq!(
        sorted_got, expected,
        "claims the ready ones, not the scheduled one"
    );
    assert_eq!(got.len(), 3);
    expected.clear();
    assert_eq!(
        job_state(&pool, scheduled).await,
        JobState::Ready,
        "future run_at waits"
    );
    // one at a time, the claim order is priority then FIFO
    let q2 = unique_queue("order1");
    let a = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q2)).await;
    let b = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q2).priority(5)).await;
    let c = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q2)).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(
            queue::claim(&mut conn, me, &q2, 1, Duration::from_secs(30))
                .await
                .unwrap()[0]
                .id,
        );
    }
    assert_eq!(order, vec![b, a, c]);
}

#[tokio::test]
async fn retries_back_off_then_dead_letter() {
    let pool = pool().await;
    let q = unique_queue("retry");
    let id = enqueue(
        &pool,
        NewJob::new("fail", json!({})).queue(&q).max_attempts(3),
    )
    .await;
    let me = WorkerId::new();
    let backoff = Backoff {
        base: Duration::from_millis(400),
        max: Duration::from_secs(10),
    };
    let mut conn = pool.acquire().await.unwrap();
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let j = eventually(Duration::from_secs(10), "retry becomes ready", || {
            let pool = pool.clone();
            let q = q.clone();
            async move {
                let mut c = pool.acquire().await.unwrap();
                queue::claim(&mut c, me, &q, 1, Duration::from_secs(30))
                    .await
                    .unwrap()
                    .pop()
            }
        })
        .await;
        assert_eq!(j.attempts, attempt);
        let before = chrono::Utc::now();
        match queue::retry(&mut conn, &j.lease(), "boom", &backoff, None)
            .await
            .unwrap()
        {
            RetryOutcome::Scheduled(at) => delays.push((at - before).num_milliseconds()),
            RetryOutcome::Dead => assert_eq!(attempt, 3, "dead only when attempts are spent"),
        }
    }
    // attempt 1 -> 200..400ms, attempt 2 -> 400..800ms
    assert_eq!(delays.len(), 2);
    assert!((150..=450).contains(&delays[0]), "first backoff {delays:?}");
    assert!(
        (350..=850).contains(&delays[1]),
        "second backoff {delays:?}"
    );
    let row = job(&pool, id).await;
    assert_eq!(row.state, JobState::Dead);
    assert_eq!(row.last_error.as_deref(), Some("boom"));
    assert!(row.finished_at.is_some());
    // requeue revives it with a fresh budget
    queue::requeue(&mut conn, id).await.unwrap();
    let row = job(&pool, id).await;
    assert_eq!((row.state, row.attempts), (JobState::Ready, 0));
}

#[tokio::test]
async fn rescue_counts_against_the_attempt_cap() {
    let pool = pool().await;
    let q = unique_queue("rescuecap");
    let id = enqueue(
        &pool,
        NewJob::new("noop", json!({})).queue(&q).max_attempts(2),
    )
    .await;
    let mut conn = pool.acquire().await.unwrap();
    for round in 1..=2 {
        let got = queue::claim(
            &mut conn,
            WorkerId::new(),
            &q,
            1,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 1, "claim {round}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        queue::rescue_expired(&mut conn, 1000).await.unwrap();
        let row = job(&pool, id).await;
        let expected = if round == 2 {
            JobState::Dead
        } else {
            JobState::Ready
        };
        assert_eq!(
            row.state, expected,
            "a job that keeps losing workers dead-letters at the cap"
        );
    }
    let row = job(&pool, id).await;
    assert_eq!((row.state, row.rescues), (JobState::Dead, 2));
    assert!(row.last_error.unwrap().contains("lease expired"));
}

#[tokio::test]
async fn paused_queue_yields_nothing_until_resumed() {
    let pool = pool().await;
    let q = unique_queue("pause");
    enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let mut conn = pool.acquire().await.unwrap();
    queue::pause(&mut conn, &q, Some("test")).await.unwrap();
    assert!(queue::is_paused(&mut conn, &q).await.unwrap());
    assert!(
        queue::claim(&mut conn, WorkerId::new(), &q, 5, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(queue::resume(&mut conn, &q).await.unwrap());
    assert_eq!(
        queue::claim(&mut conn, WorkerId::new(), &q, 5, Duration::from_secs(5))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn cancel_ready_running_and_finished_jobs() {
    let pool = pool().await;
    let q = unique_queue("cancel");
    let waiting = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        queue::cancel(&mut conn, waiting).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        queue::cancel(&mut conn, waiting).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    let running = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let me = WorkerId::new();
    let lease = queue::claim(&mut conn, me, &q, 1, Duration::from_secs(30))
        .await
        .unwrap()[0]
        .lease();
    assert_eq!(
        queue::cancel(&mut conn, running).await.unwrap(),
        CancelOutcome::Requested
    );
    let hb = queue::heartbeat(&mut conn, &[lease], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        hb.cancel_requested,
        vec![running],
        "the worker learns of it at its heartbeat"
    );
    queue::hand_back(&mut conn, &lease).await.unwrap();
    assert_eq!(job_state(&pool, running).await, JobState::Cancelled);
    assert!(matches!(
        queue::cancel(&mut conn, phasefleet::JobId(i64::MAX)).await,
        Err(QueueError::NotFound(_))
    ));
}

#[tokio::test]
async fn requeue_refuses_a_running_job_and_finds_no_completed_one() {
    let pool = pool().await;
    let q = unique_queue("requeue");
    let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let me = WorkerId::new();
    let mut conn = pool.acquire().await.unwrap();
    let lease = queue::claim(&mut conn, me, &q, 1, Duration::from_secs(30))
        .await
        .unwrap()[0]
        .lease();
    assert!(matches!(
        queue::requeue(&mut conn, id).await,
        Err(QueueError::Conflict {
            state: "running",
            ..
        })
    ));
    let _done = queue::complete(&mut conn, &lease).await.unwrap();
    let gone = queue::requeue(&mut conn, id).await.unwrap_err();
    assert!(
        matches!(gone, QueueError::NotFound(_))
            && gone.to_string().contains("completed jobs are not kept"),
        "{gone}"
    );
    let listed = queue::list(&mut conn, Some(JobState::Completed), Some(&q), None, 10).await;
    assert!(
        matches!(&listed, Err(QueueError::InvalidArgument(m)) if m.contains("not kept")),
        "{listed:?}"
    );
    assert!(matches!(
        queue::requeue(&mut conn, phasefleet::JobId(i64::MAX)).await,
        Err(QueueError::NotFound(_))
    ));
}

#[tokio::test]
async fn requeue_dead_with_dry_run() {
    let pool = pool().await;
    let q = unique_queue("deadq");
    let mut conn = pool.acquire().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
        let lease = queue::claim(&mut conn, WorkerId::new(), &q, 1, Duration::from_secs(30))
            .await
            .unwrap()[0]
            .lease();
        queue::fail(&mut conn, &lease, "permanent").await.unwrap();
        ids.push(id);
    }
    assert_eq!(queue::requeue_dead(&mut conn, &q, true).await.unwrap(), ids);
    assert_eq!(
        count_in_state(&pool, &q, JobState::Dead).await,
        3,
        "dry run changes nothing"
    );
    let mut revived = queue::requeue_dead(&mut conn, &q, false).await.unwrap();
    revived.sort();
    assert_eq!(revived, ids);
    assert_eq!(count_in_state(&pool, &q, JobState::Ready).await, 3);
}

#[tokio::test]
async fn prune_deletes_only_old_finished_jobs() {
    let pool = pool().await;
    let q = unique_queue("prune");
    let mut conn = pool.acquire().await.unwrap();
    let mut cancelled = Vec::new();
    for _ in 0..2 {
        let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
        assert_eq!(
            queue::cancel(&mut conn, id).await.unwrap(),
            CancelOutcome::Cancelled
        );
        cancelled.push(id);
    }
    let (old, recent) = (cancelled[0], cancelled[1]);
    let old_dead = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    sqlx::query("UPDATE jobs SET state = 'dead', finished_at = now() WHERE id = $1")
        .bind(old_dead)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '2 days' WHERE id = ANY($1)")
        .bind(vec![old.0, old_dead.0])
        .execute(&mut *conn)
        .await
        .unwrap();
    let waiting = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let mut total = 0;
    loop {
        let n = queue::prune(&mut conn, Duration::from_secs(86_400), false, 10_000)
            .await
            .unwrap();
        total += n;
        if n == 0 {
            break;
        }
    }
    assert!(total >= 1);
    assert!(matches!(
        queue::get(&mut conn, old).await,
        Err(QueueError::NotFound(_))
    ));
    assert_eq!(job_state(&pool, recent).await, JobState::Cancelled);
    assert_eq!(
        job_state(&pool, old_dead).await,
        JobState::Dead,
        "dead jobs stay unless asked for"
    );
    assert_eq!(job_state(&pool, waiting).await, JobState::Ready);
}

#[tokio::test]
async fn stats_report_depth_and_oldest_ready() {
    let pool = pool().await;
    let q = unique_queue("stats");
    enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let mut conn = pool.acquire().await.unwrap();
    let s = queue::stats(&mut conn).await.unwrap();
    let mine = s
        .by_state
        .iter()
        .find(|c| c.queue == q && c.state == JobState::Ready)
        .unwrap();
    assert_eq!(mine.count, 2);
    assert!(s.ready_now >= 2);
    assert!(s.oldest_ready_age_secs.is_some());
}

/// A worker that lost its lease (cut off, then back) may not begin a model call for
/// the job: the ledger row before the call is written only under the current lease.
#[tokio::test]
async fn a_model_call_begins_only_under_the_deliverys_current_lease() {
    let pool = pool().await;
    let q = unique_queue("ledger-lease");
    let run = support::engine::submit(&pool, support::engine::request(&q, json!({}))).await;
    // The run is running (its first phase would have started it).
    sqlx::query("UPDATE runs SET state = 'running' WHERE id = $1")
        .bind(run)
        .execute(&pool)
        .await
        .unwrap();
    let job_q = unique_queue("ledger-lease-job");
    enqueue(&pool, NewJob::new("noop", json!({})).queue(&job_q)).await;
    let mut conn = pool.acquire().await.unwrap();
    let first = queue::claim(
        &mut conn,
        WorkerId::new(),
        &job_q,
        1,
        Duration::from_millis(200),
    )
    .await
    .unwrap()[0]
        .lease();
    let ledger =
        |lease| phasefleet::agent::Ledger::new(pool.clone(), run, "spec", 1).under_lease(lease);
    ledger(first)
        .begin_call(1, "mock/valid", "openai", uuid::Uuid::new_v4())
        .await
        .unwrap();
    // The lease runs out and another worker takes the job.
    tokio::time::sleep(Duration::from_millis(300)).await;
    queue::rescue_expired(&mut conn, 1000).await.unwrap();
    let second = queue::claim(
        &mut conn,
        WorkerId::new(),
        &job_q,
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap()[0]
        .lease();
    assert!(matches!(
        ledger(first)
            .begin_call(2, "mock/valid", "openai", uuid::Uuid::new_v4())
            .await,
        Err(phasefleet::agent::ledger::BeginError::RunEnded)
    ));
    ledger(second)
        .begin_call(2, "mock/valid", "openai", uuid::Uuid::new_v4())
        .await
        .unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM llm_calls WHERE run_id = $1")
        .bind(run)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2, "the stale delivery wrote no ledger row");
}

/// A claim that a failover lost (the standby never got it) leaves the job as it was
/// before; the next claim must not hand out the token the lost one had, or the worker
/// still holding it would pass the fence.
#[tokio::test]
async fn a_claim_lost_in_a_failover_is_never_handed_out_again_with_the_same_token() {
    let pool = pool().await;
    let q = unique_queue("lost-claim");
    let id = enqueue(&pool, NewJob::new("noop", json!({})).queue(&q)).await;
    let before: (i64,) = sqlx::query_as("SELECT lease_token FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let lost = queue::claim(&mut conn, WorkerId::new(), &q, 1, Duration::from_secs(30))
        .await
        .unwrap()[0]
        .lease();
    // What the promoted standby has: the job as it was before that claim.
    sqlx::query(
        "UPDATE jobs SET state = 'ready', lease_token = $2, lease_owner = NULL,
                lease_expires_at = NULL, attempts = attempts - 1 WHERE id = $1",
    )
    .bind(id)
    .bind(before.0)
    .execute(&pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = queue::claim(&mut conn, WorkerId::new(), &q, 1, Duration::from_secs(30))
        .await
        .unwrap()[0]
        .lease();
    assert_ne!(
        again.token, lost.token,
        "the lost claim's token was handed out again"
    );
    assert!(matches!(
        queue::complete(&mut conn, &lost).await,
        Err(QueueError::LeaseLost { .. })
    ));
    let _done = queue::complete(&mut conn, &again).await.unwrap();
}

#[tokio::test]
async fn a_heartbeat_tells_a_job_that_completed_meanwhile_from_one_taken_over() {
    let pool = pool().await;
    let lease = claimed(&pool, "hb-gone", 1, WorkerId::new()).await[0];
    let done = lease.job_id;
    let mut conn = pool.acquire().await.unwrap();
    // The job completes while a renewal that still lists it is on its way.
    let _ = queue::complete(&mut conn, &lease).await.unwrap();
    let hb = queue::heartbeat(&mut conn, &[lease], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((hb.lost, hb.gone), (vec![done], vec![done]));
}

/// A renewal does not wait on a job whose row a transaction holds (its completion, a
/// hand-over): it extends the others, calls that one busy (not lost) and renews it next
/// time. Waiting, it would hold the rows it extended until that transaction ended, and
/// their completions would queue behind it.
#[tokio::test]
async fn a_heartbeat_passes_over_a_job_whose_row_a_transaction_holds() {
    let pool = pool().await;
    let leases = claimed(&pool, "hb-busy", 2, WorkerId::new()).await;
    let (held, other) = (leases[0], leases[1]);
    let expiry = |id: phasefleet::JobId| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT lease_expires_at FROM jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (held_before, other_before) = (expiry(held.job_id).await, expiry(other.job_id).await);
    // A completion of the first job is under way and has not committed.
    let mut completing = pool.begin().await.unwrap();
    sqlx::query("UPDATE jobs SET last_error = 'completing' WHERE id = $1")
        .bind(held.job_id)
        .execute(&mut *completing)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let hb = tokio::time::timeout(
        Duration::from_secs(5),
        queue::heartbeat(&mut conn, &[held, other], Duration::from_secs(60)),
    )
    .await
    .expect("the renewal waited on the held row")
    .unwrap();
    assert_eq!(hb.busy, vec![held.job_id]);
    assert!(hb.lost.is_empty() && hb.gone.is_empty(), "{hb:?}");
    assert!(
        expiry(other.job_id).await > other_before,
        "the free lease was not extended"
    );
    completing.rollback().await.unwrap();
    assert_eq!(expiry(held.job_id).await, held_before);
    // Released, it is renewed by the next heartbeat.
    let hb = queue::heartbeat(&mut conn, &[held, other], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(hb.busy.is_empty() && hb.lost.is_empty(), "{hb:?}");
    assert!(expiry(held.job_id).await > held_before);
}
