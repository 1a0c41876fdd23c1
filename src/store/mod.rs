//! The store: one module per table, functions named table + verb, rows read into named
//! structs. Flow modules call these; SQL for domain tables lives here (and the queue's
//! in `crate::queue`).

pub mod persona_registry;
pub mod personas;
