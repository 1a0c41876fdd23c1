//! The schema registry: JSON Schema 2020-12 documents loaded once at start (with
//! format checks on), and artifact validation against them. Validation messages are
//! written for the model that must fix the artifact: every allowed value of an enum,
//! the expected type beside the offending value, the properties an object may have;
//! each issue carries its schema location so a repair prompt can show that fragment.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether any string (or object key) in `v` holds a NUL character, which PostgreSQL
/// cannot store in text or jsonb.
#[must_use]
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

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
    /// JSON pointer into the schema of the keyword that failed (empty when the
    /// artifact did not parse).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schema_path: String,
}

impl Issue {
    /// An issue about the artifact as a whole (missing, not JSON).
    #[must_use]
    pub fn whole(message: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            message: message.into(),
            schema_path: String::new(),
        }
    }

    /// Where, for people: the JSON pointer or `(root)`.
    #[must_use]
    pub fn at(&self) -> &str {
        if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        }
    }
}

/// Most issues reported for one artifact.
pub const MAX_ISSUES: usize = 50;

/// The result of validating one artifact.
#[derive(Debug, Clone)]
pub struct Validation {
    pub valid: bool,
    pub issues: Vec<Issue>,
}

struct Entry {
    /// Shared with every phase that checks an artifact against it.
    schema: Arc<Value>,
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
            entries.insert(
                id,
                Entry {
                    schema: Arc::new(schema),
                    validator,
                },
            );
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
        self.entry(id).map(|e| &*e.schema)
    }

    /// The schema `id`, shared (no copy).
    ///
    /// # Errors
    /// [`SchemaError::Unknown`] when no schema has that id.
    pub fn schema_shared(&self, id: &str) -> Result<Arc<Value>, SchemaError> {
        self.entry(id).map(|e| e.schema.clone())
    }

    fn entry(&self, id: &str) -> Result<&Entry, SchemaError> {
        self.entries.get(id).ok_or_else(|| SchemaError::Unknown {
            id: id.to_owned(),
            known: self.ids(),
        })
    }

    /// Validate artifact text: it must parse as JSON and satisfy schema `id`.
    ///
    /// # Errors
    /// [`SchemaError::Unknown`] when `id` is not registered.
    pub fn validate(&self, id: &str, content: &str) -> Result<Validation, SchemaError> {
        let entry = self.entry(id)?;
        let value: Value = match serde_json::from_str(content) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Validation {
                    valid: false,
                    issues: vec![Issue::whole(format!("not valid JSON: {e}"))],
                });
            }
        };
        Ok(Self::validate_value(entry, &value))
    }

    /// Validate an artifact that is already a JSON value.
    ///
    /// # Errors
    /// [`SchemaError::Unknown`] when `id` is not registered.
    pub fn validate_json(&self, id: &str, value: &Value) -> Result<Validation, SchemaError> {
        let entry = self.entry(id)?;
        Ok(Self::validate_value(entry, value))
    }

    fn validate_value(entry: &Entry, value: &Value) -> Validation {
        let issues: Vec<Issue> = entry
            .validator
            .iter_errors(value)
            .take(MAX_ISSUES)
            .map(|e| {
                let schema_path = e.schema_path().to_string();
                Issue {
                    path: e.instance_path().to_string(),
                    message: explain(&e, &entry.schema, &schema_path),
                    schema_path,
                }
            })
            .collect();
        Validation {
            valid: issues.is_empty(),
            issues,
        }
    }

    /// The schema object that holds the keyword at `schema_path` (e.g. for
    /// `/properties/a/enum`, the schema of `a`), following local `$ref`s; `None` when
    /// the path does not resolve.
    #[must_use]
    pub fn fragment(&self, id: &str, schema_path: &str) -> Option<Value> {
        let entry = self.entries.get(id)?;
        let (parent, _keyword) = schema_path.rsplit_once('/')?;
        resolve(&entry.schema, parent).cloned()
    }
}

/// Follow a keyword location through `schema`, resolving `$ref` segments to local
/// (`#/...`) targets.
fn resolve<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut node = root;
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        if segment == "$ref" {
            let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
            node = root.pointer(target)?;
            continue;
        }
        node = match node {
            Value::Object(map) => map.get(&segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// A value as it may be quoted in a message: compact JSON, at most 200 characters.
#[must_use]
pub fn quote(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 200 {
        let cut: String = text.chars().take(200).collect();
        format!("{cut}…")
    } else {
        text
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One validation error as a message a model can act on.
fn explain(e: &jsonschema::ValidationError<'_>, schema: &Value, schema_path: &str) -> String {
    use jsonschema::error::{TypeKind, ValidationErrorKind as K};
    let got = e.instance();
    let got = format!("{} {}", type_name(got), quote(got));
    match e.kind() {
        K::Enum { options } => {
            let allowed: Vec<String> = options
                .as_array()
                .map(|a| a.iter().map(quote).collect())
                .unwrap_or_default();
            format!(
                "{got} is not allowed; the value must be exactly one of: {}",
                allowed.join(", ")
            )
        }
        K::Constant { expected_value } => {
            format!(
                "{got} is not allowed; the value must be exactly {}",
                quote(expected_value)
            )
        }
        K::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            format!("expected {expected}, got {got}")
        }
        K::Required { property } => format!("missing required property {property}"),
        K::AdditionalProperties { unexpected } => {
            let allowed = schema_path
                .rsplit_once('/')
                .and_then(|(parent, _)| resolve(schema, parent))
                .and_then(|p| p.get("properties"))
                .and_then(Value::as_object)
                .map(|props| props.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>());
            let names: Vec<String> = unexpected.iter().map(|u| format!("{u:?}")).collect();
            match allowed {
                Some(allowed) => format!(
                    "properties not allowed here: {}; this object may only have: {}",
                    names.join(", "),
                    allowed.join(", ")
                ),
                None => format!("properties not allowed here: {}", names.join(", ")),
            }
        }
        K::Format { format } => format!("{got} is not a valid {format}"),
        _ => format!("{e} (got {got})"),
    }
}
