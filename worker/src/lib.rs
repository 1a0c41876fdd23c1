//! The worker runtime: claims jobs from the queue, runs them under a heartbeated lease,
//! takes back expired leases of lost workers, drains on request and shuts down
//! gracefully. Stateless: everything it knows lives in PostgreSQL.

mod builtin;
mod completer;
mod config;
mod engine;
mod handler;
mod inflight;
mod runtime;
pub mod shutdown;

pub use builtin::Builtins;
pub use completer::{Completer, FlushTask};
pub use config::{WorkerConfig, default_name};
pub use engine::EngineHandler;
pub use handler::{JobContext, JobError, JobHandler, MayGoOn};
pub use phasefleet::queue::workers::{WorkerRow, drain, list_workers, undrain};
pub use runtime::{Worker, WorkerError};
