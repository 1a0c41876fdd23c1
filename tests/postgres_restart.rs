//! A PostgreSQL restart under running workers loses nothing and kills no worker.
//! Uses a private server (system binaries) so restarting it disturbs no other test.
#![allow(clippy::unwrap_used)]

mod support;

use phasefleet::local_pg::LocalPg;
use phasefleet::queue::{self, NewJob};
use serde_json::json;
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_during_work_loses_nothing() {
    let dir = std::env::temp_dir().join(format!(
        "phasefleet-pgrestart-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let pg = LocalPg::start(&dir, &[("fsync", "off")]).await.unwrap();
    let url = pg.url();
    let pool = phasefleet::db::connect(&url, 4).await.unwrap();
    phasefleet::db::migrate(&pool).await.unwrap();
    let q = "restart";
    let total = 300;
    {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..total {
            queue::enqueue(
                &mut tx,
                &NewJob::new("sleep", json!({ "ms": 20, "i": i })).queue(q),
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let args = [
        "--lease-ms",
        "3000",
        "--poll-ms",
        "200",
        "--concurrency",
        "4",
    ];
    let mut w1 = WorkerProcess::spawn(&url, q, &args);
    let mut w2 = WorkerProcess::spawn(&url, q, &args);

    // Completed jobs leave the table: what is done is what is no longer there.
    let completed = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (i64,)>("SELECT $1 - count(*) FROM jobs")
            .bind(i64::from(total))
            .fetch_one(&pool)
            .await
            .map(|r| r.0)
            .unwrap_or(-1)
    };
    eventually(
        Duration::from_secs(60),
        "some work done before the restart",
        || {
            let pool = pool.clone();
            async move { (completed(pool).await >= 40).then_some(()) }
        },
    )
    .await;
    pg.restart().await.unwrap();
    let before_end = completed(pool.clone()).await;
    assert!(
        before_end < i64::from(total),
        "the restart happened mid-run ({before_end} done)"
    );

    eventually(
        Duration::from_secs(120),
        "every job completes after the restart",
        || {
            let pool = pool.clone();
            async move { (completed(pool).await == i64::from(total)).then_some(()) }
        },
    )
    .await;
    let mut conn = pool.acquire().await.unwrap();
    let left = sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM jobs")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(left.0, 0, "nothing dead, cancelled or stuck");
    assert!(
        w1.is_alive() && w2.is_alive(),
        "workers survive the restart"
    );
    // Both workers are still claiming after the restart.
    let after = queue::enqueue(&mut conn, &NewJob::new("noop", json!({})).queue(q))
        .await
        .unwrap()
        .id();
    eventually(
        Duration::from_secs(30),
        "a new job after the restart completes",
        || {
            let pool = pool.clone();
            async move {
                let mut c = pool.acquire().await.ok()?;
                let gone = queue::get(&mut c, after).await;
                matches!(gone, Err(queue::QueueError::NotFound(_))).then_some(())
            }
        },
    )
    .await;
    drop(conn);
    pool.close().await;
    w1.signal("TERM");
    w2.signal("TERM");
    let _ = w1.child.wait().await;
    let _ = w2.child.wait().await;
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}
