//! Workflow definitions: templates (phases and roles), personas, and the canonical
//! hashing that stores each distinct definition once.

mod canonical;
pub mod document;
mod persona;
mod template;

pub use canonical::{canonical_json, sha256_hex};
pub use persona::{Backend, Persona};
pub use template::{ExpectedArtifact, Phase, RoleDefault, WorkflowTemplate};

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

pub(crate) fn read(path: &Path) -> Result<String, DefinitionError> {
    std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        file: path.display().to_string(),
        source,
    })
}
