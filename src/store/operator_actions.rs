//! `operator_actions`: the audit of what operators did to the fleet.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// One audited operator action.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OperatorActionRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// Who: the API token's label, or `cli:<user>@<host>`.
    pub actor: String,
    /// `api` (the web UI included) or `cli`.
    pub via: String,
    /// What, e.g. `pause_queue`, `requeue_job`, `drain_workers`.
    pub action: String,
    /// What it acted on (a queue, a job id, a worker id, `all`).
    pub target: Option<String>,
    pub ok: bool,
    /// What came of it, or why it was refused.
    pub result: String,
    pub detail: serde_json::Value,
}

/// A row to write.
#[derive(Debug, Clone)]
pub struct NewOperatorAction<'a> {
    pub actor: &'a str,
    pub via: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub ok: bool,
    pub result: &'a str,
    pub detail: &'a serde_json::Value,
}

/// Record one action.
///
/// # Errors
/// Database errors.
pub async fn operator_actions_insert(
    conn: &mut PgConnection,
    row: &NewOperatorAction<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO operator_actions (actor, via, action, target, ok, result, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(row.actor)
    .bind(row.via)
    .bind(row.action)
    .bind(row.target)
    .bind(row.ok)
    .bind(row.result)
    .bind(row.detail)
    .fetch_one(&mut *conn)
    .await
}

/// The latest actions, newest first (before row `before_id` when given).
///
/// # Errors
/// Database errors.
pub async fn operator_actions_list(
    conn: &mut PgConnection,
    before_id: Option<i64>,
    limit: i64,
) -> Result<Vec<OperatorActionRow>, sqlx::Error> {
    sqlx::query_as::<_, OperatorActionRow>(
        "SELECT id, at, actor, via, action, target, ok, result, detail FROM operator_actions
          WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Delete actions older than `older_than` (retention). Returns how many went.
///
/// # Errors
/// Database errors.
pub async fn operator_actions_prune(
    conn: &mut PgConnection,
    older_than: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let r =
        sqlx::query("DELETE FROM operator_actions WHERE at < now() - make_interval(secs => $1)")
            .bind(older_than.as_secs_f64())
            .execute(&mut *conn)
            .await?;
    Ok(r.rows_affected())
}
