//! `templates`: every workflow template a run used, stored once per canonical hash
//! (inserted with the run, by `runs::runs_insert_submitted`).

use sqlx::PgConnection;

/// A template's name, version and hash, as the run detail shows them.
///
/// # Errors
/// Database errors.
pub async fn templates_get_summary(
    conn: &mut PgConnection,
    hash: &str,
) -> Result<serde_json::Value, sqlx::Error> {
    let (summary,): (serde_json::Value,) = sqlx::query_as(
        "SELECT jsonb_build_object('name', name, 'version', version, 'hash', hash) FROM templates WHERE hash = $1",
    )
    .bind(hash)
    .fetch_one(&mut *conn)
    .await?;
    Ok(summary)
}

/// A template's body, as stored.
///
/// # Errors
/// Database errors (a hash no template has is one).
pub async fn templates_get_body(
    conn: &mut PgConnection,
    hash: &str,
) -> Result<serde_json::Value, sqlx::Error> {
    let (body,): (serde_json::Value,) =
        sqlx::query_as("SELECT body FROM templates WHERE hash = $1")
            .bind(hash)
            .fetch_one(&mut *conn)
            .await?;
    Ok(body)
}
