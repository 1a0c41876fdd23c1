//! phasefleet core: the queue, the workflow engine and the agent runtime.
//!
//! Data flow, one module each: [`submit`] -> [`queue`] -> worker (crate
//! `phasefleet-worker`) -> [`phase`] (runs the [`agent`], [`validate`]s the artifact) ->
//! [`approval`] or [`advance`] (next phase) -> [`report`]. Below them: [`store`] (all
//! SQL of the domain tables), [`state`] (the transition tables), [`events`] (typed
//! events), [`phase_job`], [`workflow`] (definitions). See ARCHITECTURE.md.

pub mod advance;
pub mod agent;
pub mod approval;
pub mod budget;
pub mod cancel;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod ids;
pub mod input_files;
pub mod local_pg;
pub mod operator;
pub mod phase;
pub mod phase_job;
pub mod prices;
pub mod queue;
pub mod report;
pub mod retry;
pub mod safe_html;
pub mod state;
pub mod store;
pub mod submit;
pub mod teams;
pub mod telemetry;
pub mod validate;
pub mod views;
pub mod webhooks;
pub mod workflow;

pub use ids::{ApprovalId, JobId, RunId, WorkerId};
