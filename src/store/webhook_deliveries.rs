//! `webhook_deliveries`: each attempt to deliver a notification to a webhook.

use crate::ids::RunId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    pub id: i64,
    /// The id the receiver deduplicates on (the same for every attempt).
    pub delivery_id: String,
    pub webhook: String,
    pub notification: String,
    pub run_id: RunId,
    pub event_seq: i64,
    pub attempt: i32,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<i32>,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub at: DateTime<Utc>,
}

/// An attempt to record.
#[derive(Debug, Clone)]
pub struct NewDeliveryAttempt<'a> {
    pub delivery_id: &'a str,
    pub webhook: &'a str,
    pub notification: &'a str,
    pub run_id: RunId,
    pub event_seq: i64,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub ok: bool,
    pub error: Option<&'a str>,
    pub duration_ms: i64,
}

/// Record an attempt.
///
/// # Errors
/// Database errors.
pub async fn webhook_deliveries_insert(
    conn: &mut PgConnection,
    a: &NewDeliveryAttempt<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (delivery_id, webhook, notification, run_id, event_seq, attempt,
                                         status_code, ok, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(a.delivery_id)
    .bind(a.webhook)
    .bind(a.notification)
    .bind(a.run_id)
    .bind(a.event_seq)
    .bind(a.attempt)
    .bind(a.status_code)
    .bind(a.ok)
    .bind(a.error)
    .bind(a.duration_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The latest attempts, newest first (of one run, when given).
///
/// # Errors
/// Database errors.
pub async fn webhook_deliveries_list(
    conn: &mut PgConnection,
    run: Option<RunId>,
    limit: i64,
) -> Result<Vec<DeliveryAttempt>, sqlx::Error> {
    sqlx::query_as::<_, DeliveryAttempt>(
        "SELECT id, delivery_id, webhook, notification, run_id, event_seq, attempt, status_code, ok,
                error, duration_ms, at
           FROM webhook_deliveries WHERE $1::uuid IS NULL OR run_id = $1
          ORDER BY id DESC LIMIT $2",
    )
    .bind(run)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Delete attempts older than `older_than` (retention). Returns how many went.
///
/// # Errors
/// Database errors.
pub async fn webhook_deliveries_prune(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let r =
        sqlx::query("DELETE FROM webhook_deliveries WHERE at < now() - make_interval(secs => $1)")
            .bind(older_than.as_secs_f64())
            .execute(&mut *conn)
            .await?;
    Ok(r.rows_affected())
}
