//! `personas`: every persona definition a run was bound to, stored once per canonical
//! hash.

use crate::workflow::Persona;
use sqlx::PgConnection;

/// Store a persona body under its hash (nothing happens when it is already stored).
///
/// # Errors
/// Database errors.
pub async fn personas_insert(
    conn: &mut PgConnection,
    persona: &Persona,
    body: &serde_json::Value,
    hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO personas (hash, name, version, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (hash) DO NOTHING",
    )
    .bind(hash)
    .bind(&persona.name)
    .bind(&persona.version)
    .bind(body)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A persona's body, as stored.
///
/// # Errors
/// Database errors (a hash no persona has is one).
pub async fn personas_get_body(
    conn: &mut PgConnection,
    hash: &str,
) -> Result<serde_json::Value, sqlx::Error> {
    let (body,): (serde_json::Value,) = sqlx::query_as("SELECT body FROM personas WHERE hash = $1")
        .bind(hash)
        .fetch_one(&mut *conn)
        .await?;
    Ok(body)
}
