//! Shared fixtures for the integration tests. Every test uses ONE shared, long-lived
//! database (`phasefleet_test` by default) that keeps everything earlier tests and runs
//! left behind, so "the second run on a populated database" is every run here. Tests
//! isolate themselves by queue name, not by database.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use phasefleet::JobId;
pub mod api;
pub mod engine;
pub mod mock;
pub mod netfault;

use phasefleet::queue::{self, JobRow, JobState, NewJob};
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The admin URL of the PostgreSQL server the tests use.
pub fn server_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn test_db_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| format!("{}/phasefleet_test", server_url()))
}

static MIGRATED: OnceCell<()> = OnceCell::const_new();

/// A pool on the shared, migrated test database (created on first use).
pub async fn pool() -> PgPool {
    MIGRATED
        .get_or_init(|| async {
            ensure_database(&server_url(), "phasefleet_test").await;
            let pool = phasefleet::db::connect(&test_db_url(), 2).await.unwrap();
            phasefleet::db::migrate_tolerating_newer(&pool)
                .await
                .unwrap();
            pool.close().await;
        })
        .await;
    phasefleet::db::pool_options(20)
        .connect(&test_db_url())
        .await
        .unwrap()
}

/// A pool on a migrated database of its own, `name`, on the test server: for a test
/// whose runs (on the `default` queue, or fleet-wide rows) others must not see.
pub async fn pool_on(name: &str) -> PgPool {
    let server = server_url();
    ensure_database(&server, name).await;
    let pool = phasefleet::db::connect(&format!("{server}/{name}"), 10)
        .await
        .unwrap();
    phasefleet::db::migrate_tolerating_newer(&pool)
        .await
        .unwrap();
    pool
}

/// Create `name` on the server at `server` unless it exists (racing test processes
/// may both try; the loser's error is ignored).
pub async fn ensure_database(server: &str, name: &str) {
    let admin = phasefleet::db::connect(&format!("{server}/postgres"), 1)
        .await
        .unwrap();
    let exists: (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&admin)
            .await
            .unwrap();
    if !exists.0 {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await;
        if let Err(e) = r {
            let code = e
                .as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.to_string());
            assert!(
                matches!(code.as_deref(), Some("42P04" | "23505")),
                "create database {name}: {e}"
            );
        }
    }
    admin.close().await;
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn enqueue(pool: &PgPool, job: NewJob) -> JobId {
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &job).await.unwrap().id()
}

pub async fn job(pool: &PgPool, id: JobId) -> JobRow {
    let mut conn = pool.acquire().await.unwrap();
    queue::get(&mut conn, id).await.unwrap()
}

/// A job's state; `Completed` once its row has left the table (a completed job is not
/// kept, and these tests prune nothing they then look up).
/// Claim the next job of `queue` as a worker of its own would (a fresh worker id, a
/// 30 s lease); the test drives the job itself.
pub async fn claim_one(pool: &PgPool, queue: &str) -> queue::ClaimedJob {
    let mut c = pool.acquire().await.unwrap();
    queue::claim(
        &mut c,
        phasefleet::WorkerId::new(),
        queue,
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    .pop()
    .unwrap()
}

pub async fn job_state(pool: &PgPool, id: JobId) -> JobState {
    let mut conn = pool.acquire().await.unwrap();
    match queue::get(&mut conn, id).await {
        Ok(row) => row.state,
        Err(queue::QueueError::NotFound(_)) => JobState::Completed,
        Err(other) => panic!("reading job {id}: {other}"),
    }
}

/// Jobs of `queue` still in the table, in any state (completed ones have left it).
pub async fn jobs_left(pool: &PgPool, queue: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM jobs WHERE queue = $1")
        .bind(queue)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

/// Jobs `worker` reported completed (its heartbeats' throughput rows).
pub async fn completions_by(pool: &PgPool, worker: phasefleet::WorkerId) -> i64 {
    sqlx::query_as::<_, (i64,)>(
        "SELECT COALESCE(sum(completed), 0)::int8 FROM job_completions WHERE worker_id = $1",
    )
    .bind(worker)
    .fetch_one(pool)
    .await
    .unwrap()
    .0
}

pub async fn count_in_state(pool: &PgPool, queue: &str, state: JobState) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM jobs WHERE queue = $1 AND state = $2")
        .bind(queue)
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
        .0
}

/// Poll `check` until it returns `Some` or `deadline` passes (then panic with `what`).
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of a workspace binary, building it first if this test build did not.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|p| p.parent()).unwrap().to_path_buf();
    let path = dir.join(name);
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let package = match name {
            "phasefleet" => "phasefleet-cli",
            other => other,
        };
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", package, "--bin", name]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building {name} failed");
        built.push(name.to_owned());
    }
    path
}

/// Worker process flags for tests: 1.5 s leases, 200 ms polls, 4 slots.
pub const FAST_WORKER: &[&str] = &[
    "--lease-ms",
    "1500",
    "--poll-ms",
    "200",
    "--concurrency",
    "4",
];

/// A `phasefleet-worker` child process, killed when dropped.
pub struct WorkerProcess {
    pub child: tokio::process::Child,
}

impl WorkerProcess {
    pub fn spawn(db_url: &str, queue: &str, extra: &[&str]) -> Self {
        Self::spawn_with_env(db_url, queue, extra, &[])
    }

    pub fn spawn_with_env(db_url: &str, queue: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let child = tokio::process::Command::new(workspace_bin("phasefleet-worker"))
            .args(["--database-url", db_url, "--queue", queue])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_WORKER_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Self { child }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id().unwrap()).unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// The worker id a worker process registered under, found by its pid.
pub async fn worker_id_of(pool: &PgPool, pid: i32) -> phasefleet::WorkerId {
    eventually(Duration::from_secs(30), "worker registers", || async {
        sqlx::query_as::<_, (phasefleet::WorkerId,)>(
            "SELECT id FROM workers WHERE pid = $1 AND state <> 'stopped' ORDER BY started_at DESC LIMIT 1",
        )
        .bind(pid)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|r| r.0)
    })
    .await
}

/// A temporary directory, removed on drop (also when the test fails).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "phasefleet-{prefix}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server that can be stopped and started on the same port.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start(port: u16) -> Self {
        let mut r = Self { port, child: None };
        r.up();
        r
    }

    pub fn up(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/provision.sh installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come up");
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.down();
    }
}
