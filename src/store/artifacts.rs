//! `artifacts`: what each attempt produced, with its sha256 and validation result.
//! Unique per (run, phase, round, attempt): a duplicate delivery inserts nothing.

use crate::ids::RunId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// An attempt's artifact to store.
#[derive(Debug, Clone)]
pub struct NewArtifact<'a> {
    pub run: RunId,
    pub phase: &'a str,
    pub round: i32,
    pub attempt: i32,
    /// `None` for a phase whose output is files.
    pub path: Option<&'a str>,
    pub schema_id: Option<&'a str>,
    pub content: Option<&'a str>,
    pub sha256: Option<&'a str>,
    pub valid: bool,
    pub issues: &'a serde_json::Value,
}

/// Store an attempt's artifact; `None` when this attempt's artifact is stored already.
///
/// # Errors
/// Database errors.
pub async fn artifacts_insert(
    conn: &mut PgConnection,
    a: &NewArtifact<'_>,
) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO artifacts (run_id, phase_key, round, attempt, path, schema_id, content, sha256, valid, validation_errors)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (run_id, phase_key, round, attempt) DO NOTHING RETURNING id",
    )
    .bind(a.run)
    .bind(a.phase)
    .bind(a.round)
    .bind(a.attempt)
    .bind(a.path)
    .bind(a.schema_id)
    .bind(a.content)
    .bind(a.sha256)
    .bind(a.valid)
    .bind(a.issues)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(id,)| id))
}

/// An artifact without its content.
#[derive(Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ArtifactMeta {
    pub id: i64,
    pub phase_key: String,
    pub round: i32,
    pub attempt: i32,
    /// `None` for a phase whose output is files.
    pub path: Option<String>,
    pub schema_id: Option<String>,
    pub sha256: Option<String>,
    pub valid: bool,
    pub validation_errors: serde_json::Value,
    pub bytes: Option<i32>,
    pub created_at: DateTime<Utc>,
}

const ARTIFACT_COLUMNS: &str = "id, phase_key, round, attempt, path, schema_id, sha256, valid,
    validation_errors, octet_length(content) AS bytes, created_at";

/// The artifacts of a run, oldest first.
///
/// # Errors
/// Database errors.
pub async fn artifacts_list(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Vec<ArtifactMeta>, sqlx::Error> {
    sqlx::query_as::<_, ArtifactMeta>(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE run_id = $1 ORDER BY id"
    )))
    .bind(run)
    .fetch_all(&mut *conn)
    .await
}

/// One artifact with its content as stored (the agent's file, byte for byte).
///
/// # Errors
/// Database errors.
pub async fn artifacts_get_with_content(
    conn: &mut PgConnection,
    run: RunId,
    id: i64,
) -> Result<Option<(ArtifactMeta, Option<String>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct WithContent {
        #[sqlx(flatten)]
        meta: ArtifactMeta,
        content: Option<String>,
    }
    let row = sqlx::query_as::<_, WithContent>(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTIFACT_COLUMNS}, content FROM artifacts WHERE run_id = $1 AND id = $2"
    )))
    .bind(run)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| (r.meta, r.content)))
}

/// The latest artifact of one phase (the one an approval waits on, or the accepted
/// one), with its content.
///
/// # Errors
/// Database errors.
pub async fn artifacts_latest_for_phase(
    conn: &mut PgConnection,
    run: RunId,
    phase: &str,
) -> Result<Option<(ArtifactMeta, Option<String>)>, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM artifacts WHERE run_id = $1 AND phase_key = $2
          ORDER BY round DESC, attempt DESC LIMIT 1",
    )
    .bind(run)
    .bind(phase)
    .fetch_optional(&mut *conn)
    .await?;
    match id {
        Some(id) => artifacts_get_with_content(conn, run, id).await,
        None => Ok(None),
    }
}

/// Artifacts by id, without their content.
///
/// # Errors
/// Database errors.
pub async fn artifacts_get_many(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<Vec<ArtifactMeta>, sqlx::Error> {
    sqlx::query_as::<_, ArtifactMeta>(sqlx::AssertSqlSafe(format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
}

/// The content of the accepted artifact of `phase` (its latest valid one with a path),
/// if it has one.
///
/// # Errors
/// Database errors.
pub async fn artifacts_accepted_content(
    conn: &mut PgConnection,
    run: RunId,
    phase: &str,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT content FROM artifacts
          WHERE run_id = $1 AND phase_key = $2 AND valid AND path IS NOT NULL
          ORDER BY round DESC, attempt DESC LIMIT 1",
    )
    .bind(run)
    .bind(phase)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.and_then(|(c,)| c))
}

/// A fan-out phase's gathered artifact to store.
pub struct Gathered<'a> {
    pub run: RunId,
    pub phase: &'a str,
    pub round: i32,
    pub path: &'a str,
    pub schema_id: &'a str,
    /// Refuse to gather more bytes than this.
    pub max_bytes: i64,
}

/// Store the artifact of fan-out phase `g.phase`: the array of its items' accepted
/// artifacts in item order, as attempt 0 of its round. `Err(size)` when the array would
/// hold more than `g.max_bytes`; `Ok(None)` when it is stored already.
///
/// # Errors
/// Database errors.
pub async fn artifacts_gather(
    conn: &mut PgConnection,
    g: &Gathered<'_>,
) -> Result<Result<Option<i64>, i64>, sqlx::Error> {
    let (id, size): (Option<i64>, i64) = sqlx::query_as(
        "WITH items AS (
             SELECT p.item_index, a.content FROM run_phases p
               JOIN LATERAL (SELECT content FROM artifacts x
                              WHERE x.run_id = p.run_id AND x.phase_key = p.phase_key AND x.valid
                              ORDER BY x.round DESC, x.attempt DESC LIMIT 1) a ON true
              WHERE p.run_id = $1 AND p.parent = $2
         ), size AS (
             SELECT COALESCE(sum(octet_length(content)), 0)::bigint AS bytes FROM items
         ), gathered AS (
             SELECT COALESCE((SELECT jsonb_agg(content::jsonb ORDER BY item_index) FROM items),
                             '[]'::jsonb)::text AS content
               FROM size WHERE size.bytes <= $6
         ), stored AS (
             INSERT INTO artifacts (run_id, phase_key, round, attempt, path, schema_id, content, sha256, valid)
             SELECT $1, $2, $3, 0, $4, $5, g.content, encode(sha256(convert_to(g.content, 'UTF8')), 'hex'), true
               FROM gathered g
             ON CONFLICT (run_id, phase_key, round, attempt) DO NOTHING RETURNING id
         )
         SELECT (SELECT id FROM stored), (SELECT bytes FROM size)",
    )
    .bind(g.run)
    .bind(g.phase)
    .bind(g.round)
    .bind(g.path)
    .bind(g.schema_id)
    .bind(g.max_bytes)
    .fetch_one(&mut *conn)
    .await?;
    if size > g.max_bytes {
        return Ok(Err(size));
    }
    Ok(Ok(id))
}
