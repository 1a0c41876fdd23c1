//! Handlers, one module per resource.

pub mod approvals;
pub mod runs;
pub mod stream;
pub mod system;
pub mod ui;
