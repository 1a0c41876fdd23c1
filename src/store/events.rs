//! `run_events`: the append-only event log of each run.

use crate::events::{EVENTS_CHANNEL, Event, NewEvent};
use crate::ids::RunId;
use sqlx::PgConnection;

/// When live streams hear of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeStreams {
    /// A NOTIFY in the appending transaction (delivered at its commit).
    InTransaction,
    /// The caller wakes them after its commit ([`crate::events::StreamWakeUps`]): a
    /// transaction that notifies holds PostgreSQL's database-wide notification lock
    /// through its commit, so the busiest transactions (a phase's) leave it out.
    AfterCommit,
}

/// Append `events` to the run's log in one statement: keys the run already used are
/// skipped, the rest get the next dense sequence numbers from `runs.next_event_seq`,
/// and, with [`WakeStreams::InTransaction`], live streams are notified of the last one.
/// Call inside the transaction that makes the change the events record, after locking
/// the run (every engine transaction does), so sequences and the duplicate check cannot
/// race. Returns what was appended (a key the run already used appends nothing).
///
/// # Errors
/// Database errors (including a missing run).
pub async fn events_append(
    conn: &mut PgConnection,
    run: RunId,
    events: &[NewEvent],
    wake: WakeStreams,
) -> Result<Vec<Appended>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    let phases: Vec<Option<&str>> = events.iter().map(|e| e.phase.as_deref()).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.data).collect();
    let appended: Vec<Appended> = sqlx::query_as(
        "WITH new AS (
             SELECT e.kind, e.phase, e.key, e.data, e.ord,
                    row_number() OVER (ORDER BY e.ord) AS n
               FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[])
                    WITH ORDINALITY AS e(kind, phase, key, data, ord)
              WHERE NOT EXISTS (SELECT 1 FROM run_events x
                                 WHERE x.run_id = $1 AND x.idempotency_key = e.key)
         ), bump AS (
             UPDATE runs SET next_event_seq = next_event_seq + (SELECT count(*) FROM new),
                    updated_at = now()
              WHERE id = $1
          RETURNING next_event_seq - (SELECT count(*) FROM new) AS first
         ), inserted AS (
             INSERT INTO run_events (run_id, seq, kind, phase_key, idempotency_key, data)
             SELECT $1, bump.first + new.n - 1, new.kind, new.phase, new.key, new.data
               FROM new, bump
          RETURNING seq, kind
         ), notified AS (
             SELECT pg_notify($6, $1::text || ':' || max(seq)) FROM inserted
             HAVING count(*) > 0 AND $7
         )
         SELECT seq, kind FROM inserted WHERE (SELECT count(*) FROM notified) >= 0
         ORDER BY seq",
    )
    .bind(run)
    .bind(&kinds)
    .bind(&phases)
    .bind(&keys)
    .bind(&data)
    .bind(EVENTS_CHANNEL)
    .bind(wake == WakeStreams::InTransaction)
    .fetch_all(&mut *conn)
    .await?;
    Ok(appended)
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
