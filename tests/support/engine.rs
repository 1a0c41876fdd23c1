//! Engine fixtures: the example workflow, in-process workers, an auto-approver.
#![allow(dead_code, clippy::unwrap_used)]

use phasefleet::RunId;
use phasefleet::agent::synthetic::SyntheticAgent;
use phasefleet::agent::{Agent, AgentError, AgentOutcome, AgentRequest};
use phasefleet::config::Config;
use phasefleet::phase::Engine;
use phasefleet::state::RunState;
use phasefleet::submit::{Budget, RunInputs, SubmitRequest, Submitted};
use phasefleet::validate::SchemaRegistry;
use phasefleet::webhooks::Webhooks;
use phasefleet::workflow::Definition;
use phasefleet::workflow::{Persona, WorkflowTemplate};
use phasefleet_worker::{EngineHandler, Worker, WorkerConfig};
use sqlx::PgPool;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub fn schemas() -> SchemaRegistry {
    SchemaRegistry::load_dir(&repo("schemas")).unwrap()
}

pub fn template() -> WorkflowTemplate {
    WorkflowTemplate::load(&repo("examples/spec-review-verify.yaml")).unwrap()
}

pub fn personas() -> Vec<Persona> {
    ["synthetic-author", "synthetic-reviewer"]
        .iter()
        .map(|n| Persona::load(&repo(&format!("examples/personas/{n}.yaml"))).unwrap())
        .collect()
}

pub fn request(queue: &str, extra: serde_json::Value) -> SubmitRequest {
    SubmitRequest {
        template: template(),
        personas: personas(),
        inputs: RunInputs {
            requirements: "# Test\nDo the thing.".into(),
            objective: serde_json::json!({"goal": "test"}),
            extra,
        },
        files: Vec::new(),
        bindings: Default::default(),
        budget: Budget::default(),
        idempotency_key: None,
        submitted_by: Some("tests".into()),
        queue: queue.to_owned(),
        team: phasefleet::teams::DEFAULT_TEAM.into(),
        may_define_provider_personas: true,
        allow_unserved: true,
        traceparent: None,
    }
}

/// The configuration tests submit with: the scripted mock as provider `mock` (any model,
/// priced $1 / $0.5 cached / $2 per million tokens), and the queues of every test open to
/// the default team.
pub fn config() -> Config {
    config_with_mock("http://127.0.0.1:9/v1")
}

/// [`config`] with the mock provider at `base_url` (a worker's view).
pub fn config_with_mock(base_url: &str) -> Config {
    Config::from_toml(&mock_config_toml(base_url)).unwrap()
}

/// A `phasefleet.toml` file with the mock provider at `base_url`, for worker processes
/// (`PHASEFLEET_CONFIG`). Removed when the returned guard drops.
pub fn mock_config_file(base_url: &str) -> ConfigFile {
    let path = std::env::temp_dir().join(format!(
        "phasefleet-test-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, mock_config_toml(base_url)).unwrap();
    ConfigFile(path)
}

/// A configuration file that is removed on drop.
pub struct ConfigFile(pub std::path::PathBuf);

impl ConfigFile {
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The TOML of [`config_with_mock`].
pub fn mock_config_toml(base_url: &str) -> String {
    format!(
        r#"
        [providers.mock]
        base_url = "{base_url}"
        allow_insecure_loopback = true
        [providers.mock.models."*"]
        input_usd_per_mtok = 1.0
        cached_input_usd_per_mtok = 0.5
        output_usd_per_mtok = 2.0
        [teams.default]
        queues = ["*"]
        "#
    )
}

pub async fn submit(pool: &PgPool, req: SubmitRequest) -> RunId {
    match phasefleet::submit::submit(pool, &schemas(), &config(), req)
        .await
        .unwrap()
    {
        Submitted::Created(id) | Submitted::Existing(id) => id,
    }
}

/// Wraps an agent and records every envelope it was given.
#[derive(Clone, Default)]
pub struct Recording<A> {
    pub inner: A,
    pub envelopes: Arc<Mutex<Vec<(String, i32, String)>>>,
}

impl<A: Agent + Clone> Agent for Recording<A> {
    async fn run(
        &self,
        req: AgentRequest,
        cancel: CancellationToken,
    ) -> Result<AgentOutcome, AgentError> {
        self.envelopes.lock().unwrap().push((
            req.phase_key.clone(),
            req.attempt,
            req.envelope.clone(),
        ));
        self.inner.run(req, cancel).await
    }
}

/// In-process workers on `queue`; stop them by cancelling the returned token.
pub struct Fleet {
    pub stop: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    pub fn start<A: Agent + Clone>(
        pool: &PgPool,
        queue: &str,
        workers: usize,
        concurrency: usize,
        agent: A,
    ) -> Self {
        Self::start_with_webhooks(
            pool,
            queue,
            workers,
            concurrency,
            agent,
            &Webhooks::default(),
        )
    }

    /// [`Fleet::start`] with workers that deliver to `webhooks`.
    pub fn start_with_webhooks<A: Agent + Clone>(
        pool: &PgPool,
        queue: &str,
        workers: usize,
        concurrency: usize,
        agent: A,
        webhooks: &Webhooks,
    ) -> Self {
        let stop = CancellationToken::new();
        let handles = (0..workers)
            .map(|_| {
                let cfg = WorkerConfig {
                    queue: queue.to_owned(),
                    concurrency,
                    lease: Duration::from_secs(5),
                    poll_interval: Duration::from_millis(200),
                    shutdown_grace: Duration::from_secs(2),
                    ..WorkerConfig::default()
                };
                let engine = Engine::new(pool.clone(), schemas(), agent.clone());
                let handler = EngineHandler::new(engine).with_webhooks(webhooks.clone());
                let w = Worker::new(pool.clone(), cfg, handler);
                let stop = stop.clone();
                tokio::spawn(async move {
                    w.run(stop).await.unwrap();
                })
            })
            .collect();
        Self { stop, handles }
    }

    pub fn synthetic(pool: &PgPool, queue: &str, workers: usize) -> Self {
        Self::start(pool, queue, workers, 8, SyntheticAgent)
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        for h in self.handles {
            h.await.unwrap();
        }
    }
}

pub async fn run_state(pool: &PgPool, run: RunId) -> RunState {
    let mut c = pool.acquire().await.unwrap();
    phasefleet::store::runs::runs_get(&mut c, run)
        .await
        .unwrap()
        .unwrap()
        .state
}

/// Approve whatever the run waits on, as a reviewer would, until it ends.
pub async fn drive(pool: &PgPool, run: RunId) -> RunState {
    drive_until(pool, run, RunState::is_terminal).await
}

/// Approve whatever the run asks, until its state satisfies `stop`.
pub async fn drive_until(pool: &PgPool, run: RunId, stop: impl Fn(RunState) -> bool) -> RunState {
    super::eventually(
        Duration::from_secs(90),
        &format!("run {run} reaches the state waited for"),
        || async {
            let mut c = pool.acquire().await.unwrap();
            let waiting = phasefleet::approval::for_run(&mut c, run).await.unwrap();
            drop(c);
            for a in waiting.into_iter().filter(|a| a.action.is_none()) {
                // A run that ended meanwhile refuses the decision; the loop sees it end.
                let _ = phasefleet::approval::decide(
                    pool,
                    &phasefleet::teams::Scope::Fleet,
                    a.id,
                    phasefleet::approval::Action::Approve,
                    None,
                    Some("tests"),
                )
                .await;
            }
            let s = run_state(pool, run).await;
            stop(s).then_some(s)
        },
    )
    .await
}

/// A run's error, or "" when it has none.
pub async fn error_of(pool: &PgPool, run: RunId) -> String {
    let mut c = pool.acquire().await.unwrap();
    phasefleet::store::runs::runs_get(&mut c, run)
        .await
        .unwrap()
        .unwrap()
        .error
        .unwrap_or_default()
}

/// One phase of a run, as stored.
pub async fn phase_of(
    c: &mut sqlx::PgConnection,
    run: RunId,
    key: &str,
) -> Result<Option<phasefleet::store::run_phases::PhaseRow>, sqlx::Error> {
    Ok(phasefleet::store::run_phases::run_phases_list(c, run)
        .await?
        .into_iter()
        .find(|p| p.phase_key == key))
}

/// Wait until the run reaches one of `states`.
pub async fn wait_for(pool: &PgPool, run: RunId, states: &[RunState]) -> RunState {
    super::eventually(
        Duration::from_secs(60),
        &format!("run {run} reaches {states:?}"),
        || async {
            let s = run_state(pool, run).await;
            states.contains(&s).then_some(s)
        },
    )
    .await
}

/// The id of the pending approval of `run`, once there is one.
pub async fn pending_approval(pool: &PgPool, run: RunId) -> phasefleet::ApprovalId {
    super::eventually(Duration::from_secs(60), "an approval request", || async {
        let mut c = pool.acquire().await.unwrap();
        phasefleet::approval::for_run(&mut c, run)
            .await
            .unwrap()
            .into_iter()
            .find(|a| a.action.is_none())
            .map(|a| a.id)
    })
    .await
}

/// The run's events, in order.
pub async fn events_of(pool: &PgPool, run: RunId) -> Vec<phasefleet::events::Event> {
    let mut c = pool.acquire().await.unwrap();
    phasefleet::store::events::events_list(&mut c, run, 0, 100_000)
        .await
        .unwrap()
}

/// The run completed: every phase completed, its report says so, its log is sound.
pub async fn assert_run_completed(pool: &PgPool, run: RunId) {
    assert_eq!(run_state(pool, run).await, RunState::Completed, "run {run}");
    let mut c = pool.acquire().await.unwrap();
    let phases = phasefleet::store::run_phases::run_phases_list(&mut c, run)
        .await
        .unwrap();
    assert!(
        phases
            .iter()
            .all(|p| p.state == phasefleet::state::PhaseState::Completed),
        "{phases:?}"
    );
    drop(c);
    assert_eq!(report(pool, run).await.0, "completed");
    assert_event_log_sound(pool, run).await;
}

/// Check the run's event log: seq dense from 1, idempotency keys unique.
pub async fn assert_event_log_sound(pool: &PgPool, run: RunId) {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, idempotency_key FROM run_events WHERE run_id = $1 ORDER BY seq",
    )
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap();
    for (i, (seq, _)) in rows.iter().enumerate() {
        assert_eq!(*seq, i64::try_from(i).unwrap() + 1, "event seq is dense");
    }
    let (next,): (i64,) = sqlx::query_as("SELECT next_event_seq FROM runs WHERE id = $1")
        .bind(run)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        next,
        i64::try_from(rows.len()).unwrap() + 1,
        "next seq follows the last event"
    );
}

/// The report stored for a run: (final state, json, markdown).
pub async fn report(pool: &PgPool, run: RunId) -> (String, serde_json::Value, String) {
    sqlx::query_as("SELECT final_state::text, json, markdown FROM reports WHERE run_id = $1")
        .bind(run)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no report stored for run {run}"))
}
