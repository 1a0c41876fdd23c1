//! `run_events`: the append-only event log of each run.

use super::StoreError;
use super::run_phases::{self, PhaseWrite, PhaseWriteArrays};
use crate::events::{EVENTS_CHANNEL, Event, NewEvent};
use crate::ids::RunId;
use sqlx::PgConnection;
use std::sync::LazyLock;

/// The events to append, numbered: `$1` the run, `$2..$5` the events' kinds, phases,
/// keys and data. Keys the run already used are skipped, the rest get the next dense
/// sequence numbers from `runs.next_event_seq` (bumped only when there is one).
const APPEND_CTES: &str = "new AS (
             SELECT e.kind, e.phase, e.key, e.data, e.ord,
                    row_number() OVER (ORDER BY e.ord) AS n
               FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[])
                    WITH ORDINALITY AS e(kind, phase, key, data, ord)
              WHERE NOT EXISTS (SELECT 1 FROM run_events x
                                 WHERE x.run_id = $1 AND x.idempotency_key = e.key)
         ), bump AS (
             UPDATE runs SET next_event_seq = next_event_seq + (SELECT count(*) FROM new),
                    updated_at = now()
              WHERE id = $1 AND EXISTS (SELECT 1 FROM new)
          RETURNING next_event_seq - (SELECT count(*) FROM new) AS first
         ), inserted AS (
             INSERT INTO run_events (run_id, seq, kind, phase_key, idempotency_key, data)
             SELECT $1, bump.first + new.n - 1, new.kind, new.phase, new.key, new.data
               FROM new, bump
          RETURNING seq, kind
         )";

/// Append, and notify live streams (`$6`, the channel) of the last seq. Each variant is
/// its own statement (none takes a flag): a plan that one flag's value could simplify
/// would be planned again on every call instead of once per connection.
static APPEND_AND_NOTIFY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {APPEND_CTES}, notified AS (
             SELECT pg_notify($6, $1::text || ':' || max(seq)) FROM inserted HAVING count(*) > 0
         )
         SELECT seq, kind FROM inserted WHERE (SELECT count(*) FROM notified) >= 0 ORDER BY seq"
    )
});

/// Write the phase rows held back by the transaction (`$6..$11`), then append, without
/// notifying.
static WRITE_PHASES_AND_APPEND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH written AS ({}), {APPEND_CTES}
         SELECT (SELECT count(*) FROM written) AS phases_written,
                ARRAY(SELECT seq FROM inserted ORDER BY seq) AS seqs,
                ARRAY(SELECT kind FROM inserted ORDER BY seq) AS kinds",
        run_phases::write_many_sql(6)
    )
});

/// Append `events` to the run's log in one statement, and notify live streams of the
/// last one (delivered at the commit). Call inside the transaction that makes the
/// change the events record, after locking the run (every engine transaction does), so
/// sequences and the duplicate check cannot race. Returns what was appended (a key the
/// run already used appends nothing).
///
/// # Errors
/// Database errors (including a missing run).
pub async fn events_append(
    conn: &mut PgConnection,
    run: RunId,
    events: &[NewEvent],
) -> Result<Vec<Appended>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let query = sqlx::query_as(APPEND_AND_NOTIFY.as_str()).bind(run);
    EventColumns::of(events)
        .bind(query)
        .bind(EVENTS_CHANNEL)
        .fetch_all(&mut *conn)
        .await
}

/// What [`events_append_with_phase_writes`] wrote.
#[derive(Debug, sqlx::FromRow)]
struct WrittenAndAppended {
    phases_written: i64,
    seqs: Vec<i64>,
    kinds: Vec<String>,
}

/// Write `phase_writes` and append `events` in one statement, as [`events_append`] does
/// but without notifying: a transaction that notifies holds PostgreSQL's database-wide
/// notification lock through its commit, so the busiest transactions (a phase's) leave
/// it out and the caller wakes the streams after its commit
/// ([`crate::events::StreamWakeUps`]).
///
/// # Errors
/// [`StoreError::Stale`] when a phase row was not in its `from` state; database errors.
pub async fn events_append_with_phase_writes(
    conn: &mut PgConnection,
    run: RunId,
    events: &[NewEvent],
    phase_writes: &[PhaseWrite],
) -> Result<Vec<Appended>, StoreError> {
    if events.is_empty() {
        run_phases::run_phases_write_many(conn, run, phase_writes).await?;
        return Ok(Vec::new());
    }
    let query = sqlx::query_as(WRITE_PHASES_AND_APPEND.as_str()).bind(run);
    let query = EventColumns::of(events).bind(query);
    let row: WrittenAndAppended = PhaseWriteArrays::of(phase_writes)
        .bind(query)
        .fetch_one(&mut *conn)
        .await?;
    run_phases::all_written(row.phases_written, phase_writes)?;
    Ok(row
        .seqs
        .into_iter()
        .zip(row.kinds)
        .map(|(seq, kind)| Appended { seq, kind })
        .collect())
}

/// Events as the columns [`APPEND_CTES`] binds.
struct EventColumns<'a> {
    kinds: Vec<&'a str>,
    phases: Vec<Option<&'a str>>,
    keys: Vec<&'a str>,
    data: Vec<&'a serde_json::Value>,
}

impl<'a> EventColumns<'a> {
    fn of(events: &'a [NewEvent]) -> Self {
        Self {
            kinds: events.iter().map(|e| e.kind).collect(),
            phases: events.iter().map(|e| e.phase.as_deref()).collect(),
            keys: events.iter().map(|e| e.key.as_str()).collect(),
            data: events.iter().map(|e| &e.data).collect(),
        }
    }

    /// Bind the columns to `query` as `$2..$5`, in [`APPEND_CTES`]'s order.
    fn bind<'q, O>(self, query: super::PgQueryAs<'q, O>) -> super::PgQueryAs<'q, O>
    where
        'a: 'q,
    {
        query
            .bind(self.kinds)
            .bind(self.phases)
            .bind(self.keys)
            .bind(self.data)
    }
}

/// Tell live streams that these runs have events up to these seqs, in one statement
/// (one notification per run). Call after the transaction that appended them committed.
///
/// # Errors
/// Database errors.
pub async fn events_wake_streams(
    conn: &mut PgConnection,
    runs: &[(RunId, i64)],
) -> Result<(), sqlx::Error> {
    let payloads: Vec<String> = runs
        .iter()
        .map(|(run, seq)| format!("{run}:{seq}"))
        .collect();
    sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
        .bind(EVENTS_CHANNEL)
        .bind(&payloads)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// An event [`events_append`] appended.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Appended {
    pub seq: i64,
    pub kind: String,
}

/// One event of a run by its seq.
///
/// # Errors
/// Database errors.
pub async fn events_get(
    conn: &mut PgConnection,
    run: RunId,
    seq: i64,
) -> Result<Option<Event>, sqlx::Error> {
    sqlx::query_as::<_, Event>(
        "SELECT seq, kind, phase_key, data, created_at FROM run_events WHERE run_id = $1 AND seq = $2",
    )
    .bind(run)
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await
}

/// Events of a run after `after_seq`, in order.
///
/// # Errors
/// Database errors.
pub async fn events_list(
    conn: &mut PgConnection,
    run: RunId,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as::<_, Event>(
        "SELECT seq, kind, phase_key, data, created_at FROM run_events
          WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(run)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}
