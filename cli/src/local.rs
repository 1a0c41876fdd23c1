//! Where the database is: `DATABASE_URL`, or a private PostgreSQL this process starts
//! from the system binaries (kept under `.phasefleet/pg`, reused across runs).

use crate::exit::CliError;
use phasefleet::local_pg::LocalPg;
use sqlx::PgPool;
use std::path::Path;

/// A connected, migrated database; holds the private server alive while in scope.
pub struct Database {
    pub pool: PgPool,
    pub url: String,
    _local: Option<LocalPg>,
}

pub async fn open(url: Option<&str>, max_connections: u32) -> Result<Database, CliError> {
    let (url, local) = match url {
        Some(u) => (u.to_owned(), None),
        None => {
            let dir = Path::new(".phasefleet/pg");
            eprintln!(
                "DATABASE_URL is not set: starting a private PostgreSQL in {}",
                dir.display()
            );
            let pg = LocalPg::start(dir, &[]).await?;
            (pg.url(), Some(pg))
        }
    };
    let pool = phasefleet::db::connect(&url, max_connections).await?;
    phasefleet::db::migrate(&pool).await?;
    Ok(Database {
        pool,
        url,
        _local: local,
    })
}
