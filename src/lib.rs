//! phasefleet core: the queue, the workflow engine and the agent runtime.
//!
//! Data flow: `submit` -> `queue` -> worker (crate `phasefleet-worker`) -> `engine`
//! (phase job: agent -> validate -> approval or next phase) -> `report`.
//! See ARCHITECTURE.md.

pub mod db;
pub mod ids;
pub mod local_pg;
pub mod queue;

pub use ids::{ApprovalId, JobId, RunId, WorkerId};
