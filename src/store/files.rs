//! `file_blobs`, `run_files` and `team_uploads`: content stored once per sha256, each
//! run's manifest of paths (its inputs, and what its accepted phases wrote), and the
//! uploads a team may name in a submit.

use crate::ids::RunId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// Content to store, with its digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub sha256: String,
    pub content: Vec<u8>,
    pub is_binary: bool,
}

impl Blob {
    /// Digest and classify `content`: binary unless it is UTF-8 text without NUL.
    #[must_use]
    pub fn new(content: Vec<u8>) -> Self {
        let is_binary = std::str::from_utf8(&content).map_or(true, |t| t.contains('\0'));
        Self {
            sha256: crate::workflow::sha256_hex(&content),
            content,
            is_binary,
        }
    }
}

/// One path of a run's manifest.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunFile {
    /// `""` for an input; else the phase that wrote it.
    pub origin: String,
    pub path: String,
    pub sha256: String,
    pub size: i64,
    pub is_binary: bool,
    pub round: i32,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
}

/// A file an attempt starts with: text with its content, or binary with its size only.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SeedFile {
    pub path: String,
    /// `None` for a binary file (never loaded).
    pub content: Option<Vec<u8>>,
    pub size: i64,
}

/// Store blobs (content already stored is left alone).
///
/// # Errors
/// Database errors.
pub async fn file_blobs_put(conn: &mut PgConnection, blobs: &[&Blob]) -> Result<(), sqlx::Error> {
    if blobs.is_empty() {
        return Ok(());
    }
    // One row per digest (the same content at two paths is one blob). An existing blob
    // is touched, which locks it: a concurrent prune cannot delete it under this
    // transaction's references. In the order of the digests, so that two transactions
    // that touch the same blobs lock them in the same order.
    let mut seen = std::collections::HashSet::new();
    let mut blobs: Vec<&&Blob> = blobs.iter().filter(|b| seen.insert(&b.sha256)).collect();
    blobs.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    let shas: Vec<&str> = blobs.iter().map(|b| b.sha256.as_str()).collect();
    let contents: Vec<&[u8]> = blobs.iter().map(|b| b.content.as_slice()).collect();
    let binary: Vec<bool> = blobs.iter().map(|b| b.is_binary).collect();
    sqlx::query(
        "INSERT INTO file_blobs (sha256, content, size, is_binary)
         SELECT s, c, octet_length(c), b FROM UNNEST($1::text[], $2::bytea[], $3::bool[]) AS t(s, c, b)
         ON CONFLICT (sha256) DO UPDATE SET created_at = file_blobs.created_at",
    )
    .bind(&shas)
    .bind(&contents)
    .bind(&binary)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Set the files of one origin of a run (`""`: its inputs; a phase key: what its
/// accepted attempt wrote, replacing an earlier round's). The blobs must be stored.
///
/// # Errors
/// Database errors.
pub async fn run_files_replace(
    conn: &mut PgConnection,
    run: RunId,
    origin: &str,
    (round, attempt): (i32, i32),
    files: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    let paths: Vec<&str> = files.iter().map(|f| f.0).collect();
    let shas: Vec<&str> = files.iter().map(|f| f.1).collect();
    sqlx::query("DELETE FROM run_files WHERE run_id = $1 AND origin = $2")
        .bind(run)
        .bind(origin)
        .execute(&mut *conn)
        .await?;
    if files.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO run_files (run_id, origin, path, sha256, round, attempt)
         SELECT $1, $2, p, s, $5, $6 FROM UNNEST($3::text[], $4::text[]) AS t(p, s)",
    )
    .bind(run)
    .bind(origin)
    .bind(&paths)
    .bind(&shas)
    .bind(round)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What an attempt of a phase starts with: the run's inputs, then the files of each
/// completed phase `upstream` of it and of their fan-out items (one phase later in
/// template order replaces an earlier one's file at the same path, a later item an
/// earlier item's). `completed` are the run's completed phases and items as the
/// caller's transaction sees them.
///
/// # Errors
/// Database errors.
pub async fn run_files_seed(
    conn: &mut PgConnection,
    run: RunId,
    upstream: &[String],
    completed: &[String],
) -> Result<Vec<SeedFile>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (f.path) f.path, CASE WHEN b.is_binary THEN NULL ELSE b.content END AS content,
                b.size
           FROM run_files f
           JOIN file_blobs b ON b.sha256 = f.sha256
           LEFT JOIN run_phases p ON p.run_id = f.run_id AND p.phase_key = f.origin
          WHERE f.run_id = $1
            AND (f.origin = '' OR (p.phase_key = ANY($3)
                                   AND (p.phase_key = ANY($2) OR p.parent = ANY($2))))
          ORDER BY f.path, COALESCE(p.position, -1) DESC, p.item_index DESC NULLS LAST",
    )
    .bind(run)
    .bind(upstream)
    .bind(completed)
    .fetch_all(&mut *conn)
    .await
}

/// A run's manifest: every path of every origin, inputs first.
///
/// # Errors
/// Database errors.
pub async fn run_files_list(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<Vec<RunFile>, sqlx::Error> {
    sqlx::query_as(
        "SELECT f.origin, f.path, f.sha256, b.size, b.is_binary, f.round, f.attempt, f.created_at
           FROM run_files f JOIN file_blobs b ON b.sha256 = f.sha256
          WHERE f.run_id = $1
          ORDER BY f.origin <> '', f.origin, f.path",
    )
    .bind(run)
    .fetch_all(&mut *conn)
    .await
}

/// The content of one path of a run: of `origin` when given, else the latest writer's
/// (a phase's output over an input).
///
/// # Errors
/// Database errors.
pub async fn run_files_content(
    conn: &mut PgConnection,
    run: RunId,
    path: &str,
    origin: Option<&str>,
) -> Result<Option<(RunFile, Vec<u8>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct WithContent {
        #[sqlx(flatten)]
        file: RunFile,
        content: Vec<u8>,
    }
    let row = sqlx::query_as::<_, WithContent>(
        "SELECT f.origin, f.path, f.sha256, b.size, b.is_binary, f.round, f.attempt, f.created_at, b.content
           FROM run_files f
           JOIN file_blobs b ON b.sha256 = f.sha256
           LEFT JOIN run_phases p ON p.run_id = f.run_id AND p.phase_key = f.origin
          WHERE f.run_id = $1 AND f.path = $2 AND ($3::text IS NULL OR f.origin = $3)
          ORDER BY COALESCE(p.position, -1) DESC, p.item_index DESC NULLS LAST, f.created_at DESC
          LIMIT 1",
    )
    .bind(run)
    .bind(path)
    .bind(origin)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| (r.file, r.content)))
}

/// Record that `team` uploaded these blobs (they must be stored).
///
/// # Errors
/// Database errors.
pub async fn team_uploads_insert(
    conn: &mut PgConnection,
    team: &str,
    shas: &[&str],
) -> Result<(), sqlx::Error> {
    let shas: std::collections::BTreeSet<&str> = shas.iter().copied().collect();
    let shas: Vec<&str> = shas.into_iter().collect();
    sqlx::query(
        "INSERT INTO team_uploads (team, sha256) SELECT $1, s FROM UNNEST($2::text[]) AS t(s)
         ON CONFLICT (team, sha256) DO UPDATE SET uploaded_at = now()",
    )
    .bind(team)
    .bind(&shas)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Of `shas`, those `team` did not upload (or that are gone).
///
/// # Errors
/// Database errors.
pub async fn team_uploads_missing(
    conn: &mut PgConnection,
    team: &str,
    shas: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT s FROM UNNEST($2::text[]) AS t(s)
          WHERE NOT EXISTS (SELECT 1 FROM team_uploads u WHERE u.team = $1 AND u.sha256 = s)",
    )
    .bind(team)
    .bind(shas)
    .fetch_all(&mut *conn)
    .await
}

/// An uploaded blob's size and kind.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BlobDescription {
    pub sha256: String,
    pub size: i64,
    pub is_binary: bool,
}

/// Sizes and kinds of uploaded blobs, by sha256.
///
/// # Errors
/// Database errors.
pub async fn file_blobs_describe(
    conn: &mut PgConnection,
    shas: &[&str],
) -> Result<Vec<BlobDescription>, sqlx::Error> {
    sqlx::query_as("SELECT sha256, size, is_binary FROM file_blobs WHERE sha256 = ANY($1)")
        .bind(shas)
        .fetch_all(&mut *conn)
        .await
}

/// Delete blobs no run and no upload refers to (after runs are pruned). Uploads older
/// than `upload_ttl` are forgotten first (runs that used them keep their files).
/// Returns blobs deleted.
///
/// # Errors
/// Database errors.
pub async fn file_blobs_prune(
    conn: &mut PgConnection,
    upload_ttl: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM team_uploads WHERE uploaded_at < now() - make_interval(secs => $1)")
        .bind(upload_ttl.as_secs_f64())
        .execute(&mut *conn)
        .await?;
    let r = sqlx::query(
        "DELETE FROM file_blobs b
          WHERE NOT EXISTS (SELECT 1 FROM run_files f WHERE f.sha256 = b.sha256)
            AND NOT EXISTS (SELECT 1 FROM team_uploads u WHERE u.sha256 = b.sha256)",
    )
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}
