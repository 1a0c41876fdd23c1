//! `runs`: one row per run, its state, budget and spend. Every engine transaction
//! starts by locking the run row ([`runs_lock`]), so changes to one run are serialised.
//! State changes go through [`runs_set_state`], which refuses what the transition table
//! (`crate::state`) does not allow.

use super::StoreError;
use crate::events::NewEvent;
use crate::ids::RunId;
use crate::queue::NewJob;
use crate::state::RunState;
use crate::store::run_phases::PhaseRow;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunRow {
    pub id: RunId,
    pub template_hash: String,
    pub state: RunState,
    pub idempotency_key: Option<String>,
    pub submitted_by: Option<String>,
    pub budget_usd: Option<f64>,
    pub budget_tokens: Option<i64>,
    pub spent_usd: f64,
    pub spent_tokens: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The queue its phase jobs go to.
    pub queue: String,
    /// How many times an operator re-opened it after it failed.
    pub retries: i32,
    /// The team it belongs to.
    pub team: String,
    /// The W3C trace context its spans continue (when traces were on at submit).
    pub traceparent: Option<String>,
}

/// The columns of [`RunRow`] from `runs r` (every read of a whole run row uses them).
pub(crate) const RUN_COLUMNS: &str =
    "r.id, r.template_hash, r.state, r.idempotency_key, r.submitted_by,
    r.budget_usd, r.budget_tokens, r.spent_usd, r.spent_tokens, r.error, r.created_at,
    r.started_at, r.finished_at, r.queue, r.retries, r.team, r.traceparent";

/// A run row joined with one of its phase rows.
#[derive(sqlx::FromRow)]
struct RunAndPhase {
    #[sqlx(flatten)]
    run: RunRow,
    position: i32,
    phase_key: String,
    role: String,
    phase_state: crate::state::PhaseState,
    attempts: i32,
    max_attempts: i32,
    round: i32,
    revise_comment: Option<String>,
    phase_error: Option<String>,
    phase_started_at: Option<DateTime<Utc>>,
    phase_finished_at: Option<DateTime<Utc>>,
    phase_requires: Option<String>,
    needs: Option<Vec<String>>,
    parent: Option<String>,
    item_index: Option<i32>,
}

/// Lock and read a run. `None` when it does not exist.
///
/// # Errors
/// Database errors.
pub async fn runs_lock(conn: &mut PgConnection, id: RunId) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

/// Lock a run and its phases and read them, in one statement. Locking the phase rows
/// too makes a lock that waited for another transaction return what that transaction
/// committed (a plain subquery would read its statement's older snapshot).
///
/// # Errors
/// Database errors.
pub async fn runs_lock_with_phases(
    conn: &mut PgConnection,
    id: RunId,
) -> Result<Option<(RunRow, Vec<PhaseRow>)>, sqlx::Error> {
    let rows = sqlx::query_as::<_, RunAndPhase>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS}, p.position, p.phase_key, p.role, p.state AS phase_state, p.attempts,
                p.max_attempts, p.round, p.revise_comment, p.error AS phase_error,
                p.started_at AS phase_started_at, p.finished_at AS phase_finished_at,
                p.requires AS phase_requires, p.needs, p.parent, p.item_index
           FROM runs r JOIN run_phases p ON p.run_id = r.id
          WHERE r.id = $1 ORDER BY p.position, p.item_index NULLS FIRST FOR UPDATE OF r, p"
    )))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut run = None;
    let mut phases = Vec::with_capacity(rows.len());
    for r in rows {
        phases.push(PhaseRow {
            position: r.position,
            phase_key: r.phase_key,
            role: r.role,
            state: r.phase_state,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            round: r.round,
            revise_comment: r.revise_comment,
            error: r.phase_error,
            started_at: r.phase_started_at,
            finished_at: r.phase_finished_at,
            requires: r.phase_requires,
            needs: r.needs,
            parent: r.parent,
            item_index: r.item_index,
        });
        run = Some(r.run);
    }
    Ok(run.map(|run| (run, phases)))
}

/// Read a run without locking it.
///
/// # Errors
/// Database errors.
pub async fn runs_get(conn: &mut PgConnection, id: RunId) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

/// Runs, newest first, optionally in one state.
///
/// # Errors
/// Database errors.
pub async fn runs_list(
    conn: &mut PgConnection,
    state: Option<RunState>,
    limit: i64,
) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE ($1::run_state IS NULL OR r.state = $1)
          ORDER BY r.created_at DESC, r.id LIMIT $2"
    )))
    .bind(state)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Move `run` (read under its lock) to `next`, stamping start and finish times; an
/// `error` replaces the stored one. Refuses what the transition table does not allow.
/// Returns the row as it now is.
///
/// # Errors
/// [`StoreError::Transition`]; [`StoreError::Stale`] when the row was not in the state
/// read; database errors.
pub async fn runs_set_state(
    conn: &mut PgConnection,
    run: &RunRow,
    next: RunState,
    error: Option<&str>,
) -> Result<RunRow, StoreError> {
    run.state.check_becomes(next)?;
    sqlx::query_as::<_, RunRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE runs AS r SET state = $3, error = CASE WHEN $2 IN ('failed', 'awaiting_budget') AND $3 = 'running' THEN NULL ELSE COALESCE($4, error) END,
                updated_at = now(),
                started_at = CASE WHEN $3 = 'running' THEN COALESCE(started_at, now()) ELSE started_at END,
                finished_at = CASE WHEN $3 IN ('completed', 'failed', 'aborted', 'cancelled') THEN now() END,
                retries = retries + CASE WHEN $2 = 'failed' AND $3 = 'running' THEN 1 ELSE 0 END
          WHERE id = $1 AND state = $2
         RETURNING {RUN_COLUMNS}"
    )))
    .bind(run.id)
    .bind(run.state)
    .bind(next)
    .bind(error)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(StoreError::Stale("run"))
}

/// What a run's budget check needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BudgetRow {
    pub state: RunState,
    pub budget_usd: Option<f64>,
    pub budget_tokens: Option<i64>,
    pub spent_usd: f64,
    pub spent_tokens: i64,
}

/// The run's state, budget and spend (no lock).
///
/// # Errors
/// Database errors.
pub async fn runs_get_budget(
    conn: &mut PgConnection,
    id: RunId,
) -> Result<Option<BudgetRow>, sqlx::Error> {
    sqlx::query_as::<_, BudgetRow>(
        "SELECT state, budget_usd, budget_tokens, spent_usd, spent_tokens FROM runs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await
}

/// Lock a run's row for a write that appends to its log outside the engine (a model
/// or tool call's event) and read its state: after the engine's transactions that end
/// the run, before theirs that would. `None` for a missing run.
///
/// # Errors
/// Database errors.
pub async fn runs_lock_state(
    conn: &mut PgConnection,
    id: RunId,
) -> Result<Option<RunState>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM runs WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
}

/// Add the phase job a run stopped at to the jobs its budget park keeps (`new_park`:
/// the run just stopped, so a new park begins with this job alone); returns the park's
/// number. One job is kept as an object, more as a list (an earlier release reads the
/// object).
///
/// # Errors
/// Database errors.
pub async fn runs_park_for_budget(
    conn: &mut PgConnection,
    id: RunId,
    job: &serde_json::Value,
    new_park: bool,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE runs SET budget_parks = budget_parks + CASE WHEN $3 THEN 1 ELSE 0 END,
                parked_job = CASE WHEN $3 OR parked_job IS NULL THEN $2::jsonb
                                  WHEN jsonb_typeof(parked_job) = 'array'
                                  THEN parked_job || jsonb_build_array($2::jsonb)
                                  ELSE jsonb_build_array(parked_job, $2::jsonb) END
          WHERE id = $1
         RETURNING budget_parks",
    )
    .bind(id)
    .bind(job)
    .bind(new_park)
    .fetch_one(&mut *conn)
    .await
}

/// Put the jobs a raise took back into the park (the run is still out of budget).
///
/// # Errors
/// Database errors.
pub async fn runs_keep_parked(
    conn: &mut PgConnection,
    id: RunId,
    jobs: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE runs SET parked_job = $2 WHERE id = $1")
        .bind(id)
        .bind(jobs)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Set a run's limits (either may stay as it is) and take back the phase job it was
/// parked at, with the park's number.
///
/// # Errors
/// Database errors.
pub async fn runs_set_budget(
    conn: &mut PgConnection,
    id: RunId,
    usd: Option<f64>,
    tokens: Option<i64>,
) -> Result<(Option<serde_json::Value>, i32), sqlx::Error> {
    sqlx::query_as(
        "UPDATE runs r SET budget_usd = COALESCE($2, r.budget_usd),
                budget_tokens = COALESCE($3, r.budget_tokens), parked_job = NULL, updated_at = now()
           FROM runs old WHERE r.id = $1 AND old.id = r.id
         RETURNING old.parked_job, r.budget_parks",
    )
    .bind(id)
    .bind(usd)
    .bind(tokens)
    .fetch_one(&mut *conn)
    .await
}

/// Add a model call's spend to the run (saturating: no report can overflow or lower
/// the sums). Returns the run's state.
///
/// # Errors
/// Database errors.
pub async fn runs_add_spend(
    conn: &mut PgConnection,
    id: RunId,
    usd: f64,
    tokens: i64,
) -> Result<RunState, sqlx::Error> {
    let (state,): (RunState,) = sqlx::query_as(
        "UPDATE runs SET spent_usd = LEAST(spent_usd + GREATEST($2, 0), 1e15),
                spent_tokens = LEAST(spent_tokens::numeric + GREATEST($3, 0), 9223372036854775807)::bigint
          WHERE id = $1 RETURNING state",
    )
    .bind(id)
    .bind(usd)
    .bind(tokens)
    .fetch_one(&mut *conn)
    .await?;
    Ok(state)
}

/// The team's run under an idempotency key, with its request hash.
///
/// # Errors
/// Database errors.
pub async fn runs_find_by_key(
    conn: &mut PgConnection,
    team: &str,
    key: &str,
) -> Result<Option<(RunId, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, request_hash FROM runs WHERE team = $1 AND idempotency_key = $2")
        .bind(team)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
}

/// A phase of a submitted run.
#[derive(Debug, Clone)]
pub struct NewPhase {
    pub position: i32,
    pub key: String,
    pub role: String,
    pub max_attempts: i32,
    /// The capability its jobs require (`provider:NAME`).
    pub requires: Option<String>,
    /// The phases it needs (none: it starts with the run).
    pub needs: Vec<String>,
}

/// The template a run is submitted with, stored once per hash.
#[derive(Debug, Clone, Copy)]
pub struct NewTemplate<'a> {
    pub hash: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub body: &'a serde_json::Value,
}

/// A persona bound by a submitted run, stored once per hash.
#[derive(Debug, Clone)]
pub struct NewPersona {
    pub hash: String,
    pub name: String,
    pub version: String,
    pub body: serde_json::Value,
}

/// Which persona plays a role in a submitted run.
#[derive(Debug, Clone)]
pub struct NewBinding {
    pub role: String,
    pub persona_hash: String,
    /// The hash of role and persona together.
    pub binding_hash: String,
    /// The request overrode the template's default persona for the role.
    pub overridden: bool,
}

/// A submitted run's inputs.
#[derive(Debug, Clone, Copy)]
pub struct NewInputs<'a> {
    pub requirements: &'a str,
    pub objective: &'a serde_json::Value,
    pub extra: &'a serde_json::Value,
}

/// Everything a submitted run starts with, stored by [`runs_insert_submitted`].
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub id: RunId,
    pub template: NewTemplate<'a>,
    pub personas: Vec<NewPersona>,
    pub idempotency_key: Option<&'a str>,
    pub submitted_by: Option<&'a str>,
    pub budget_usd: Option<f64>,
    pub budget_tokens: Option<i64>,
    pub queue: &'a str,
    pub team: &'a str,
    pub request_hash: &'a str,
    pub inputs: NewInputs<'a>,
    pub bindings: Vec<NewBinding>,
    pub phases: Vec<NewPhase>,
    pub event: NewEvent,
    /// The first attempts of the phases that need nothing.
    pub first_jobs: Vec<NewJob>,
    /// The trace the run's spans continue.
    pub traceparent: Option<&'a str>,
}

/// [`runs_insert_submitted`]'s statement; each group of parameters is bound by one
/// helper, in this order.
const INSERT_SUBMITTED: &str = "WITH template AS (
         INSERT INTO templates (hash, name, version, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (hash) DO NOTHING
     ), persona AS (
         INSERT INTO personas (hash, name, version, body)
         SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::jsonb[])
         ON CONFLICT (hash) DO NOTHING
     ), run AS (
         INSERT INTO runs (id, template_hash, idempotency_key, submitted_by, budget_usd,
                           budget_tokens, queue, team, request_hash, traceparent, next_event_seq)
         VALUES ($9, $1, $10, $11, $12, $13, $14, $15, $16, $17, 2)
         ON CONFLICT (team, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id
     ), inputs AS (
         INSERT INTO run_inputs (run_id, requirements, objective, extra)
         SELECT id, $18, $19, $20 FROM run
     ), bindings AS (
         INSERT INTO run_bindings (run_id, role, persona_hash, binding_hash, overridden)
         SELECT run.id, b.* FROM run, unnest($21::text[], $22::text[], $23::text[], $24::bool[]) AS b
     ), phases AS (
         INSERT INTO run_phases (run_id, position, phase_key, role, max_attempts, requires, needs)
         SELECT run.id, p.position, p.key, p.role, p.max_attempts, p.requires,
                string_to_array(p.needs, ',')
           FROM run, unnest($25::int[], $26::text[], $27::text[], $28::int[], $29::text[], $30::text[])
                     AS p(position, key, role, max_attempts, requires, needs)
     ), event AS (
         INSERT INTO run_events (run_id, seq, kind, phase_key, idempotency_key, data)
         SELECT id, 1, $31, NULL, $32, $33 FROM run
     ), job AS (
         INSERT INTO jobs (queue, kind, payload, priority, max_attempts, unique_key, run_id, requires)
         SELECT $14, $34, j.payload, $35, $36, j.unique_key, id, j.requires
           FROM run, unnest($37::jsonb[], $38::text[], $39::text[]) AS j(payload, unique_key, requires)
     )
     SELECT id FROM run WHERE pg_notify($40, id::text || ':1')::text IS NOT NULL";

/// Store a submitted run whole, in ONE statement (so one commit): its template and
/// personas (once per hash), the run, inputs, bindings, phases, the `run.submitted`
/// event and the first phase jobs. Returns `None`, and stores nothing but definitions,
/// when the team already has a run under the idempotency key.
///
/// # Errors
/// Database errors.
pub async fn runs_insert_submitted(
    conn: &mut PgConnection,
    new: &NewRun<'_>,
) -> Result<Option<RunId>, sqlx::Error> {
    let query = sqlx::query_as::<_, (RunId,)>(INSERT_SUBMITTED);
    let query = bind_personas(new.template.bind(query), &new.personas);
    let query = query
        .bind(new.id)
        .bind(new.idempotency_key)
        .bind(new.submitted_by)
        .bind(new.budget_usd)
        .bind(new.budget_tokens)
        .bind(new.queue)
        .bind(new.team)
        .bind(new.request_hash)
        .bind(new.traceparent);
    let query = bind_phases(
        bind_bindings(new.inputs.bind(query), &new.bindings),
        &new.phases,
    );
    let query = bind_first_jobs(bind_event(query, &new.event), &new.first_jobs)
        .bind(crate::events::EVENTS_CHANNEL);
    let row = query.fetch_optional(&mut *conn).await?;
    Ok(row.map(|(id,)| id))
}

impl NewTemplate<'_> {
    /// `$1`-`$4` of [`INSERT_SUBMITTED`].
    fn bind<'q, O>(self, query: super::PgQueryAs<'q, O>) -> super::PgQueryAs<'q, O>
    where
        Self: 'q,
    {
        query
            .bind(self.hash)
            .bind(self.name)
            .bind(self.version)
            .bind(self.body)
    }
}

impl NewInputs<'_> {
    /// `$18`-`$20` of [`INSERT_SUBMITTED`].
    fn bind<'q, O>(self, query: super::PgQueryAs<'q, O>) -> super::PgQueryAs<'q, O>
    where
        Self: 'q,
    {
        query
            .bind(self.requirements)
            .bind(self.objective)
            .bind(self.extra)
    }
}

/// One column of `rows`, as an array parameter.
fn column<'r, T, C>(rows: &'r [T], field: impl Fn(&'r T) -> C) -> Vec<C> {
    rows.iter().map(field).collect()
}

/// `$5`-`$8` of [`INSERT_SUBMITTED`].
fn bind_personas<'q, O>(
    query: super::PgQueryAs<'q, O>,
    personas: &'q [NewPersona],
) -> super::PgQueryAs<'q, O> {
    query
        .bind(column(personas, |p| p.hash.as_str()))
        .bind(column(personas, |p| p.name.as_str()))
        .bind(column(personas, |p| p.version.as_str()))
        .bind(column(personas, |p| &p.body))
}

/// `$21`-`$24` of [`INSERT_SUBMITTED`].
fn bind_bindings<'q, O>(
    query: super::PgQueryAs<'q, O>,
    bindings: &'q [NewBinding],
) -> super::PgQueryAs<'q, O> {
    query
        .bind(column(bindings, |b| b.role.as_str()))
        .bind(column(bindings, |b| b.persona_hash.as_str()))
        .bind(column(bindings, |b| b.binding_hash.as_str()))
        .bind(column(bindings, |b| b.overridden))
}

/// `$25`-`$30` of [`INSERT_SUBMITTED`] (a phase's needs as one comma-joined string:
/// PostgreSQL arrays of arrays must be rectangular).
fn bind_phases<'q, O>(
    query: super::PgQueryAs<'q, O>,
    phases: &'q [NewPhase],
) -> super::PgQueryAs<'q, O> {
    query
        .bind(column(phases, |p| p.position))
        .bind(column(phases, |p| p.key.as_str()))
        .bind(column(phases, |p| p.role.as_str()))
        .bind(column(phases, |p| p.max_attempts))
        .bind(column(phases, |p| p.requires.as_deref()))
        .bind(column(phases, |p| p.needs.join(",")))
}

/// `$31`-`$33` of [`INSERT_SUBMITTED`].
fn bind_event<'q, O>(
    query: super::PgQueryAs<'q, O>,
    event: &'q NewEvent,
) -> super::PgQueryAs<'q, O> {
    query.bind(event.kind).bind(&event.key).bind(&event.data)
}

/// `$34`-`$39` of [`INSERT_SUBMITTED`]: what the first jobs share, then their arrays.
fn bind_first_jobs<'q, O>(
    query: super::PgQueryAs<'q, O>,
    jobs: &'q [NewJob],
) -> super::PgQueryAs<'q, O> {
    query
        .bind(crate::phase_job::PHASE_JOB_KIND)
        .bind(jobs.first().map_or(0, |j| j.priority))
        .bind(crate::phase_job::PHASE_JOB_MAX_DELIVERIES)
        .bind(column(jobs, |j| &j.payload))
        .bind(column(jobs, |j| j.unique_key.as_deref()))
        .bind(column(jobs, |j| j.requires.as_deref()))
}

/// Active runs whose phase job was dead-lettered and that have no live job (up to 100).
///
/// # Errors
/// Database errors.
pub async fn runs_find_orphaned(
    conn: &mut PgConnection,
) -> Result<Vec<(RunId, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (r.id) r.id, j.last_error FROM runs r JOIN jobs j ON j.run_id = r.id
          WHERE r.state IN ('queued', 'running') AND j.state = 'dead' AND j.kind = 'phase'
            AND NOT EXISTS (SELECT 1 FROM jobs l WHERE l.run_id = r.id AND l.state IN ('ready', 'running'))
          ORDER BY r.id, j.finished_at DESC LIMIT 100",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Whether the run has a job that is ready or running.
///
/// # Errors
/// Database errors.
pub async fn runs_has_live_job(conn: &mut PgConnection, id: RunId) -> Result<bool, sqlx::Error> {
    let (live,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = $1 AND state IN ('ready', 'running'))",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(live)
}

/// Delete up to `batch` runs that ended more than `older_than` ago, with everything of
/// theirs (their events in the same statement, the rest by cascade). Returns how many.
/// Call in a loop until it returns 0.
///
/// # Errors
/// Database errors.
pub async fn runs_prune_ended(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "WITH ended AS (
             SELECT id FROM runs
              WHERE state IN ('completed', 'failed', 'aborted', 'cancelled')
                AND finished_at < now() - make_interval(secs => $1)
              LIMIT $2 FOR UPDATE SKIP LOCKED
         ), events AS (
             DELETE FROM run_events WHERE run_id IN (SELECT id FROM ended)
         )
         DELETE FROM runs WHERE id IN (SELECT id FROM ended)",
    )
    .bind(older_than.as_secs_f64())
    .bind(batch)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

/// A run as listed: with its template's name and pending approvals.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: RunId,
    pub state: RunState,
    pub team: String,
    pub template: String,
    pub template_version: String,
    pub submitted_by: Option<String>,
    pub spent_usd: f64,
    pub spent_tokens: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub pending_approvals: i64,
}

/// Which runs [`runs_list_summaries`] returns.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this team's runs (a team's caller always has its own here).
    pub team: Option<String>,
    pub state: Option<RunState>,
    pub template: Option<String>,
    pub submitted_by: Option<String>,
}

/// Runs matching `filter`, newest first, after the keyset `(created_at, id)` of `after`.
///
/// # Errors
/// Database errors.
pub async fn runs_list_summaries(
    conn: &mut PgConnection,
    filter: &RunFilter,
    after: Option<(DateTime<Utc>, RunId)>,
    limit: i64,
) -> Result<Vec<RunSummary>, sqlx::Error> {
    sqlx::query_as::<_, RunSummary>(
        "SELECT r.id, r.state, r.team, t.name AS template, t.version AS template_version, r.submitted_by,
                r.spent_usd, r.spent_tokens, r.error, r.created_at, r.finished_at,
                (SELECT count(*) FROM approval_requests a JOIN run_phases ph ON ph.run_id = a.run_id AND ph.phase_key = a.phase_key AND ph.round = a.round AND ph.state = 'awaiting_approval' WHERE a.run_id = r.id AND a.state = 'pending') AS pending_approvals
           FROM runs r JOIN templates t ON t.hash = r.template_hash
          WHERE ($1::run_state IS NULL OR r.state = $1)
            AND ($2::text IS NULL OR t.name = $2)
            AND ($3::text IS NULL OR r.submitted_by = $3)
            AND ($4::timestamptz IS NULL OR (r.created_at, r.id) < ($4, $5))
            AND ($7::text IS NULL OR r.team = $7)
          ORDER BY r.created_at DESC, r.id DESC
          LIMIT $6",
    )
    .bind(filter.state)
    .bind(&filter.template)
    .bind(&filter.submitted_by)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .bind(&filter.team)
    .fetch_all(&mut *conn)
    .await
}
