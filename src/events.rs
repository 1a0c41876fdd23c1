//! The run event log: append-only, a dense per-run sequence, idempotency keys scoped to
//! the run. Appending locks the run row, reads the next seq from it (never counts rows),
//! and ignores a key the run has already used. Any other error is returned.

use crate::ids::RunId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// Channel notified with `run_id:seq` after each append (for live event streams).
pub const EVENTS_CHANNEL: &str = "phasefleet_events";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    New(i64),
    /// The key was used before in this run; nothing was written.
    Duplicate(i64),
}

/// Append an event. Call inside the transaction that makes the change it records.
///
/// # Errors
/// Database errors (including a missing run: foreign key violation).
pub async fn append(
    conn: &mut PgConnection,
    run: RunId,
    kind: &str,
    phase: Option<&str>,
    idempotency_key: &str,
    data: serde_json::Value,
) -> Result<Appended, sqlx::Error> {
    // The run row lock serialises appends per run, so the seq has no gaps and the
    // duplicate check cannot race.
    let (next,): (i64,) =
        sqlx::query_as("SELECT next_event_seq FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run)
            .fetch_one(&mut *conn)
            .await?;
    if let Some((seq,)) = sqlx::query_as::<_, (i64,)>(
        "SELECT seq FROM run_events WHERE run_id = $1 AND idempotency_key = $2",
    )
    .bind(run)
    .bind(idempotency_key)
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok(Appended::Duplicate(seq));
    }
    sqlx::query(
        "INSERT INTO run_events (run_id, seq, kind, phase_key, idempotency_key, data)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(run)
    .bind(next)
    .bind(kind)
    .bind(phase)
    .bind(idempotency_key)
    .bind(&data)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE runs SET next_event_seq = $2, updated_at = now() WHERE id = $1")
        .bind(run)
        .bind(next + 1)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(format!("{run}:{next}"))
        .execute(&mut *conn)
        .await?;
    Ok(Appended::New(next))
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Event {
    pub seq: i64,
    pub kind: String,
    pub phase_key: Option<String>,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Events of a run after `after_seq`, in order.
///
/// # Errors
/// Database errors.
pub async fn list(
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
