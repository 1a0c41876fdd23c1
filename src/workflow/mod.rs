//! Workflow definitions: templates (phases and roles), personas, and the canonical
//! hashing that stores each distinct definition once.

mod canonical;
pub mod document;
mod graph;
mod inputs;
mod persona;
mod template;

pub use canonical::{canonical_json, sha256_hex};
pub use graph::{Condition, FanOut, MAX_FAN_OUT_ITEMS};
pub use inputs::{Budget, RunInputs};
pub use persona::{ArtifactVia, Backend, Persona};
pub use template::{ExpectedArtifact, OnTimeout, Phase, RoleDefault, WorkflowTemplate};

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parse YAML or JSON (chosen by extension; `.json` is JSON, anything else YAML, which
/// also accepts JSON). Unknown fields are errors, reported with the path to the field;
/// what the document may expand to is bounded (see [`document`]).
pub(crate) fn parse<T: serde::de::DeserializeOwned + serde::Serialize>(
    file: &str,
    text: &str,
) -> Result<T, DefinitionError> {
    let is_json = Path::new(file)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    document::parse_value(text, is_json)
        .and_then(|v| document::from_value(v).map_err(String::from))
        .map_err(|message| DefinitionError::Parse {
            file: file.to_owned(),
            message,
        })
}

/// A problem with a definition: the field and what is wrong.
pub type Problem = (String, String);

/// A definition read from YAML or JSON text: a workflow template or a persona. One
/// loader for both: parse (bounded, strict about fields and shapes), then check what
/// serde cannot; and one canonical hash.
pub trait Definition: Sized + serde::de::DeserializeOwned + serde::Serialize {
    /// The first problem serde cannot catch, as (field, message).
    ///
    /// # Errors
    /// The problem.
    fn problems(&self) -> Result<(), Problem>;

    /// Load from a YAML or JSON file and check it.
    ///
    /// # Errors
    /// [`DefinitionError`] naming the file and the field.
    fn load(path: &Path) -> Result<Self, DefinitionError> {
        Self::from_str_named(&path.display().to_string(), &read(path)?)
    }

    /// Parse and check text; `file` names it in errors and picks the format.
    ///
    /// # Errors
    /// [`DefinitionError`] naming the file and the field.
    fn from_str_named(file: &str, text: &str) -> Result<Self, DefinitionError> {
        let d: Self = parse(file, text)?;
        d.check(file)?;
        Ok(d)
    }

    /// # Errors
    /// [`DefinitionError::Invalid`] naming the field.
    fn check(&self, file: &str) -> Result<(), DefinitionError> {
        self.problems()
            .map_err(|(field, message)| DefinitionError::Invalid {
                file: file.to_owned(),
                field,
                message,
            })
    }

    /// The canonical JSON body and its sha256.
    fn canonical(&self) -> (serde_json::Value, String) {
        let body = serde_json::to_value(self).unwrap_or_default();
        let hash = sha256_hex(canonical_json(&body));
        (body, hash)
    }
}

pub(crate) fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    (field.into(), message.into())
}

/// `text` holds at most `max` bytes.
pub(crate) fn at_most(field: &str, text: &str, max: usize) -> Result<(), Problem> {
    if text.len() > max {
        return Err(problem(
            field,
            format!("at most {max} bytes, got {}", text.len()),
        ));
    }
    Ok(())
}

pub(crate) fn read(path: &Path) -> Result<String, DefinitionError> {
    std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        file: path.display().to_string(),
        source,
    })
}
