//! Connecting to PostgreSQL and applying migrations.
//!
//! Workers must outlive database restarts, so [`connect_with_retry`] keeps trying with
//! capped exponential backoff until the caller's cancellation token fires.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The embedded migrations under `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("gave up connecting to PostgreSQL: shutdown requested")]
    Cancelled,
}

/// When a pool checks that a connection still works before handing it out (a broken
/// one is dropped and another taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// Before every use: a broken connection never reaches the caller. For callers that
    /// do not retry (the API's requests, the CLI).
    BeforeEachUse,
    /// Only when it was idle for more than [`PING_IF_IDLE_FOR`]: a ping is a round trip
    /// to the server, and a busy worker would make one before every transaction. A
    /// connection that broke since its last use fails its first statement, which a
    /// worker retries as any database error (the phase is delivered again).
    AfterIdle,
}

/// A pooled connection idle for longer than this is pinged before it is handed out
/// ([`Ping::AfterIdle`]).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Pool options shared by every binary: short acquire timeout so a database outage
/// surfaces as an error the caller can back off from instead of a hang; each connection
/// pinged before it is handed out ([`Ping::BeforeEachUse`]).
#[must_use]
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    pool_options_pinging(max_connections, Ping::BeforeEachUse)
}

/// [`pool_options`] with the pings of `ping`.
#[must_use]
pub fn pool_options_pinging(max_connections: u32, ping: Ping) -> PgPoolOptions {
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5));
    match ping {
        Ping::BeforeEachUse => options.test_before_acquire(true),
        Ping::AfterIdle => options
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            }),
    }
}

/// Connect once.
///
/// # Errors
/// [`DbError::Connect`] when the server cannot be reached or refuses the login.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    connect_pinging(url, max_connections, Ping::BeforeEachUse).await
}

/// [`connect`] with the pings of `ping`.
///
/// # Errors
/// [`DbError::Connect`] when the server cannot be reached or refuses the login.
pub async fn connect_pinging(
    url: &str,
    max_connections: u32,
    ping: Ping,
) -> Result<PgPool, DbError> {
    pool_options_pinging(max_connections, ping)
        .connect(url)
        .await
        .map_err(|source| DbError::Connect {
            url: redact(url),
            source,
        })
}

/// Connect (with the pings of `ping`), retrying with capped backoff until it works or
/// `cancel` fires.
///
/// # Errors
/// [`DbError::Cancelled`] when cancelled before a connection was made.
pub async fn connect_with_retry(
    url: &str,
    max_connections: u32,
    ping: Ping,
    cancel: &CancellationToken,
) -> Result<PgPool, DbError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match connect_pinging(url, max_connections, ping).await {
            Ok(pool) => return Ok(pool),
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis(), "database not reachable");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(DbError::Cancelled),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Apply pending migrations. Safe to run from several processes at once (sqlx takes an
/// advisory lock).
///
/// # Errors
/// [`DbError::Migrate`] when a migration fails or the history does not match.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Apply migrations, tolerating migrations the database has that this build does not
/// know (a newer build migrated it). For shared test databases that several checkouts
/// use; production uses [`migrate`], which refuses.
///
/// # Errors
/// [`DbError::Migrate`] when a migration fails.
pub async fn migrate_tolerating_newer(pool: &PgPool) -> Result<(), DbError> {
    let mut m = sqlx::migrate::Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    m.set_ignore_missing(true);
    m.run(pool).await?;
    Ok(())
}

/// Whether the database answers.
pub async fn ping(pool: &PgPool) -> bool {
    // Bounded: on a cut link a pooled connection hangs instead of failing, and a
    // readiness probe must answer "no" within its own timeout.
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    );
    matches!(answer.await, Ok(Ok(_)))
}

/// Take the session advisory lock `key` if nobody holds it (on this connection).
///
/// # Errors
/// Database errors.
pub async fn try_advisory_lock(
    conn: &mut sqlx::PgConnection,
    key: i64,
) -> Result<bool, sqlx::Error> {
    let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    Ok(got)
}

/// Release the session advisory lock `key` taken on this connection.
///
/// # Errors
/// Database errors.
pub async fn advisory_unlock(conn: &mut sqlx::PgConnection, key: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Make the transaction on `conn` wait at most `seconds` for any lock; a longer wait
/// fails its statement (`lock_not_available`).
///
/// # Errors
/// Database errors.
pub async fn set_local_lock_timeout(
    conn: &mut sqlx::PgConnection,
    seconds: u32,
) -> Result<(), sqlx::Error> {
    // `SET LOCAL` as a function, which takes parameters.
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{seconds}s"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The database's clock (rows are stamped by it, not by this host's).
///
/// # Errors
/// Database errors.
pub async fn now(pool: &PgPool) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await
}

/// A database URL without its password, for logs and error messages.
#[must_use]
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres:///db"), "postgres:///db");
    }
}
