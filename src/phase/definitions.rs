//! The templates and personas a worker's attempts start from, parsed once per process.
//!
//! Both are stored once per canonical hash and never change under it, so a hash names
//! one body for good: an attempt reads only the hashes with its context and takes the
//! parsed definitions from here, reading a body from the database the first time this
//! process meets its hash. Without this, every phase read the template and persona
//! bodies from PostgreSQL and parsed them again.

use super::PhaseError;
use crate::store::{personas, templates};
use crate::workflow::{Persona, WorkflowTemplate};
use serde::de::DeserializeOwned;
use sqlx::PgConnection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// At most this many of each are kept; past it the map starts again empty (a fleet
/// uses a handful of templates, so this only bounds a process that meets thousands).
const KEPT: usize = 256;

/// Parsed templates and personas by hash. Cheap to clone; clones share the maps.
#[derive(Clone, Default)]
pub struct Definitions {
    templates: Arc<Mutex<HashMap<String, Arc<WorkflowTemplate>>>>,
    personas: Arc<Mutex<HashMap<String, Arc<Persona>>>>,
}

impl Definitions {
    /// The template stored under `hash`, parsed.
    ///
    /// # Errors
    /// [`PhaseError::Db`] when it cannot be read; [`PhaseError::Permanent`] when the
    /// stored body does not parse.
    pub async fn template(
        &self,
        conn: &mut PgConnection,
        hash: &str,
    ) -> Result<Arc<WorkflowTemplate>, PhaseError> {
        if let Some(kept) = kept(&self.templates, hash) {
            return Ok(kept);
        }
        let body = templates::templates_get_body(conn, hash).await?;
        parse_and_keep(&self.templates, hash, body, "template")
    }

    /// The persona stored under `hash`, parsed.
    ///
    /// # Errors
    /// As [`Self::template`].
    pub async fn persona(
        &self,
        conn: &mut PgConnection,
        hash: &str,
    ) -> Result<Arc<Persona>, PhaseError> {
        if let Some(kept) = kept(&self.personas, hash) {
            return Ok(kept);
        }
        let body = personas::personas_get_body(conn, hash).await?;
        parse_and_keep(&self.personas, hash, body, "persona")
    }
}

fn kept<T>(map: &Mutex<HashMap<String, Arc<T>>>, hash: &str) -> Option<Arc<T>> {
    map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(hash)
        .cloned()
}

fn parse_and_keep<T: DeserializeOwned>(
    map: &Mutex<HashMap<String, Arc<T>>>,
    hash: &str,
    body: serde_json::Value,
    what: &str,
) -> Result<Arc<T>, PhaseError> {
    let parsed: T = serde_json::from_value(body)
        .map_err(|e| PhaseError::Permanent(format!("stored {what} does not parse: {e}")))?;
    let parsed = Arc::new(parsed);
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= KEPT {
        map.clear();
    }
    map.insert(hash.to_owned(), parsed.clone());
    Ok(parsed)
}
