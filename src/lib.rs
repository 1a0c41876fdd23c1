//! phasefleet core: the queue, the workflow engine and the agent runtime.
//!
//! Data flow, one module each: [`submit`] -> [`queue`] -> worker (crate
//! `phasefleet-worker`) -> [`phase`] (runs the [`agent`], [`validate`]s the artifact) ->
//! [`approval`] or [`advance`] (next phase) -> [`report`]. [`events`] records every step;
//! [`runs`] owns run and phase state. See ARCHITECTURE.md.

pub mod advance;
pub mod agent;
pub mod approval;
pub mod cancel;
pub mod config;
pub mod db;
pub mod events;
pub mod ids;
pub mod invariants;
pub mod local_pg;
pub mod phase;
pub mod queue;
pub mod report;
pub mod retry;
pub mod runs;
pub mod store;
pub mod submit;
pub mod teams;
pub mod validate;
pub mod views;
pub mod workflow;

pub use ids::{ApprovalId, JobId, RunId, WorkerId};
