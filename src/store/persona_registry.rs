//! `persona_registry`: personas an admin registered by name. A run binds a role to a
//! registered persona by naming it; only personas registered here (or supplied by an
//! admin or operator) may name a model provider.

use crate::workflow::Definition;
use crate::workflow::Persona;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// A registered persona as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RegisteredPersona {
    pub name: String,
    pub persona_hash: String,
    pub version: String,
    pub body: serde_json::Value,
    pub registered_by: Option<String>,
    pub registered_at: DateTime<Utc>,
}

/// Store `persona` (once per hash) and point its name at it, replacing an earlier
/// registration of the same name.
///
/// # Errors
/// Database errors.
pub async fn persona_registry_upsert(
    conn: &mut PgConnection,
    persona: &Persona,
    registered_by: Option<&str>,
) -> Result<String, sqlx::Error> {
    let (body, hash) = persona.canonical();
    crate::store::personas::personas_insert(conn, persona, &body, &hash).await?;
    sqlx::query(
        "INSERT INTO persona_registry (name, persona_hash, registered_by) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET persona_hash = EXCLUDED.persona_hash,
                registered_by = EXCLUDED.registered_by, registered_at = now()",
    )
    .bind(&persona.name)
    .bind(&hash)
    .bind(registered_by)
    .execute(&mut *conn)
    .await?;
    Ok(hash)
}

/// The registered personas among `names`, as definitions.
///
/// # Errors
/// Database errors; a stored body that no longer parses is skipped.
pub async fn persona_registry_get_many(
    conn: &mut PgConnection,
    names: &[String],
) -> Result<Vec<Persona>, sqlx::Error> {
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
        "SELECT p.body FROM persona_registry r JOIN personas p ON p.hash = r.persona_hash
          WHERE r.name = ANY($1)",
    )
    .bind(names)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(body,)| serde_json::from_value(body).ok())
        .collect())
}

/// Every registered persona, by name.
///
/// # Errors
/// Database errors.
pub async fn persona_registry_list(
    conn: &mut PgConnection,
) -> Result<Vec<RegisteredPersona>, sqlx::Error> {
    sqlx::query_as::<_, RegisteredPersona>(
        "SELECT r.name, r.persona_hash, p.version, p.body, r.registered_by, r.registered_at
           FROM persona_registry r JOIN personas p ON p.hash = r.persona_hash ORDER BY r.name",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Remove a registration; returns whether there was one. Runs already bound keep it.
///
/// # Errors
/// Database errors.
pub async fn persona_registry_delete(
    conn: &mut PgConnection,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM persona_registry WHERE name = $1")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}
