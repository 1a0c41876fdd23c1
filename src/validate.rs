//! The schema registry: JSON Schema 2020-12 documents loaded once at start (with
//! format checks on), and artifact validation against them.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("schema {file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("unknown schema id {id:?}; known: {known:?}")]
    Unknown { id: String, known: Vec<String> },
}

/// One problem with an artifact: where (JSON pointer) and what.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

/// The result of validating one artifact.
#[derive(Debug, Clone)]
pub struct Validation {
    pub valid: bool,
    pub issues: Vec<Issue>,
}

struct Entry {
    schema: Value,
    validator: jsonschema::Validator,
}

/// Schemas by id (the file stem, e.g. `spec.v1` for `schemas/spec.v1.json`).
#[derive(Clone, Default)]
pub struct SchemaRegistry {
    entries: Arc<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("ids", &self.ids())
            .finish()
    }
}

impl SchemaRegistry {
    /// Load every `*.json` in `dir`.
    ///
    /// # Errors
    /// [`SchemaError`] naming the file that does not parse or is not a valid schema.
    pub fn load_dir(dir: &Path) -> Result<Self, SchemaError> {
        let read_dir = |source| SchemaError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir)? {
            let path = entry.map_err(read_dir)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let invalid = |message: String| SchemaError::Invalid {
                file: path.clone(),
                message,
            };
            let text = std::fs::read_to_string(&path).map_err(|e| invalid(e.to_string()))?;
            let schema: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            let validator = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| invalid(e.to_string()))?;
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            entries.insert(id, Entry { schema, validator });
        }
        Ok(Self {
            entries: Arc::new(entries),
        })
    }

    /// `$PHASEFLEET_SCHEMAS_DIR`, else `./schemas`, else the repository's `schemas/`.
    ///
    /// # Errors
    /// As [`SchemaRegistry::load_dir`].
    pub fn from_env() -> Result<Self, SchemaError> {
        let dir = std::env::var_os("PHASEFLEET_SCHEMAS_DIR")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("schemas")).filter(|p| p.is_dir()))
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"));
        Self::load_dir(&dir)
    }

    #[must_use]
    pub fn ids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// # Errors
    /// [`SchemaError::Unknown`].
    pub fn schema(&self, id: &str) -> Result<&Value, SchemaError> {
        self.entries
            .get(id)
            .map(|e| &e.schema)
            .ok_or_else(|| self.unknown(id))
    }

    fn unknown(&self, id: &str) -> SchemaError {
        SchemaError::Unknown {
            id: id.to_owned(),
            known: self.ids(),
        }
    }

    /// Validate artifact text: it must parse as JSON and satisfy schema `id`.
    ///
    /// # Errors
    /// [`SchemaError::Unknown`] when `id` is not registered.
    pub fn validate(&self, id: &str, content: &str) -> Result<Validation, SchemaError> {
        let entry = self.entries.get(id).ok_or_else(|| self.unknown(id))?;
        let value: Value = match serde_json::from_str(content) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Validation {
                    valid: false,
                    issues: vec![Issue {
                        path: String::new(),
                        message: format!("not valid JSON: {e}"),
                    }],
                });
            }
        };
        let issues: Vec<Issue> = entry
            .validator
            .iter_errors(&value)
            .take(50)
            .map(|e| Issue {
                path: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect();
        Ok(Validation {
            valid: issues.is_empty(),
            issues,
        })
    }
}
