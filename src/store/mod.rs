//! The store: one module per table (or pair of tables that only live together),
//! functions named table + verb, rows read into named structs. Flow modules, the API
//! and the CLI call these; SQL lives here and in `crate::queue`, nowhere else.
//! Functions take the caller's connection, so they compose into its transaction.

pub mod approvals;
pub mod artifacts;
pub mod events;
pub mod files;
pub mod fleet;
pub mod invariants;
pub mod ledger;
pub mod model_prices;
pub mod operator_actions;
pub mod persona_registry;
pub mod personas;
pub mod reports;
pub mod run_inputs;
pub mod run_phases;
pub mod runs;
pub mod templates;
pub mod webhook_deliveries;

use crate::state::ForbiddenTransition;
use sqlx::postgres::PgQueryResult;

/// A `query_as` statement, for the helpers that bind a group of its parameters.
pub(crate) type PgQueryAs<'q, O> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>;

/// Why a store write was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The transition table does not allow the change.
    #[error(transparent)]
    Transition(#[from] ForbiddenTransition),
    /// The row was not in the state read under the run's lock (a writer that did not
    /// take the lock changed it).
    #[error("the {0} changed under its lock")]
    Stale(&'static str),
    /// What the database holds does not parse (a stored template, a parked job).
    #[error("stored {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// An update of one row read under the run's lock changed exactly that row; otherwise
/// the `what` was changed by a writer that did not take the lock.
fn one_row_changed(done: &PgQueryResult, what: &'static str) -> Result<(), StoreError> {
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::Stale(what))
    }
}
