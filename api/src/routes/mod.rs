//! Handlers, one module per resource.

pub mod admin;
pub mod approvals;
pub mod files;
pub mod fleet;
pub mod runs;
pub mod stream;
pub mod system;
pub mod ui;
