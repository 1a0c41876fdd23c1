//! Workflow templates: roles and an ordered list of phases.

use super::{DefinitionError, canonical_json, parse, read, sha256_hex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTemplate {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: Option<String>,
    /// role -> default persona (by name).
    pub roles: BTreeMap<String, RoleDefault>,
    pub phases: Vec<Phase>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDefault {
    pub persona: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub key: String,
    pub role: String,
    pub instructions: String,
    pub expected_artifact: ExpectedArtifact,
    /// Named gates; any gate parks the run on a human approval after a valid artifact.
    #[serde(default)]
    pub gates: Vec<String>,
    /// Seconds the agent may take for one attempt.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Attempts including repairs (2 = one repair).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedArtifact {
    /// Workspace-relative path the agent must write.
    pub path: String,
    /// Id of a schema in the registry (`schemas/<id>.json`).
    pub schema: String,
}

fn default_timeout() -> u64 {
    600
}
fn default_max_attempts() -> u32 {
    2
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl WorkflowTemplate {
    /// Load from a YAML or JSON file and check it.
    ///
    /// # Errors
    /// [`DefinitionError`] naming the file and the field.
    pub fn load(path: &Path) -> Result<Self, DefinitionError> {
        Self::from_str_named(&path.display().to_string(), &read(path)?)
    }

    /// Parse and check text; `file` names it in errors and picks the format.
    ///
    /// # Errors
    /// [`DefinitionError`] naming the file and the field.
    pub fn from_str_named(file: &str, text: &str) -> Result<Self, DefinitionError> {
        let t: Self = parse(file, text)?;
        t.check(file)?;
        Ok(t)
    }

    /// Structural checks serde cannot express.
    ///
    /// # Errors
    /// [`DefinitionError::Invalid`] naming the field.
    pub fn check(&self, file: &str) -> Result<(), DefinitionError> {
        let bad = |field: String, message: String| DefinitionError::Invalid {
            file: file.to_owned(),
            field,
            message,
        };
        if self.name.trim().is_empty() {
            return Err(bad("name".into(), "must not be empty".into()));
        }
        if self.version.trim().is_empty() {
            return Err(bad("version".into(), "must not be empty".into()));
        }
        if self.phases.is_empty() {
            return Err(bad(
                "phases".into(),
                "a template needs at least one phase".into(),
            ));
        }
        if self.phases.len() > 100 {
            return Err(bad(
                "phases".into(),
                format!("at most 100 phases, found {}", self.phases.len()),
            ));
        }
        if self.roles.len() > 32 {
            return Err(bad(
                "roles".into(),
                format!("at most 32 roles, found {}", self.roles.len()),
            ));
        }
        for (field, text, max) in [
            ("name", self.name.as_str(), 128),
            ("version", self.version.as_str(), 64),
            (
                "description",
                self.description.as_deref().unwrap_or(""),
                4096,
            ),
        ] {
            if text.len() > max {
                return Err(bad(
                    field.into(),
                    format!("at most {max} bytes, got {}", text.len()),
                ));
            }
        }
        for (role, d) in &self.roles {
            if !is_identifier(role) {
                return Err(bad(
                    format!("roles.{role}"),
                    "role names use letters, digits, '_', '-', '.'".into(),
                ));
            }
            if !is_identifier(&d.persona) {
                return Err(bad(
                    format!("roles.{role}.persona"),
                    "persona names use letters, digits, '_', '-', '.' (at most 64)".into(),
                ));
            }
        }
        let mut seen = HashSet::new();
        let mut paths = HashSet::new();
        for (i, p) in self.phases.iter().enumerate() {
            let at = |f: &str| format!("phases[{i}].{f}");
            if !is_identifier(&p.key) {
                return Err(bad(
                    at("key"),
                    format!(
                        "{:?} is not a valid key (letters, digits, '_', '-', '.'; at most 64)",
                        p.key
                    ),
                ));
            }
            if !seen.insert(p.key.as_str()) {
                return Err(bad(at("key"), format!("duplicate phase key {:?}", p.key)));
            }
            if !self.roles.contains_key(&p.role) {
                return Err(bad(
                    at("role"),
                    format!(
                        "role {:?} is not declared under `roles` (declared: {:?})",
                        p.role,
                        self.roles.keys().collect::<Vec<_>>()
                    ),
                ));
            }
            if p.instructions.trim().is_empty() {
                return Err(bad(at("instructions"), "must not be empty".into()));
            }
            if p.instructions.len() > 64 * 1024 {
                return Err(bad(
                    at("instructions"),
                    format!("at most 65536 bytes, got {}", p.instructions.len()),
                ));
            }
            if p.gates.len() > 16 {
                return Err(bad(
                    at("gates"),
                    format!("at most 16 gates, found {}", p.gates.len()),
                ));
            }
            if let Some(g) = p.gates.iter().find(|g| !is_identifier(g)) {
                return Err(bad(
                    at("gates"),
                    format!(
                        "{g:?} is not a gate name (letters, digits, '_', '-', '.'; at most 64)"
                    ),
                ));
            }
            if let Err(msg) =
                crate::agent::workspace::check_relative_path(&p.expected_artifact.path)
            {
                return Err(bad(at("expected_artifact.path"), msg));
            }
            if !paths.insert(p.expected_artifact.path.as_str()) {
                return Err(bad(
                    at("expected_artifact.path"),
                    "two phases write the same artifact path".into(),
                ));
            }
            if !is_identifier(&p.expected_artifact.schema) {
                return Err(bad(
                    at("expected_artifact.schema"),
                    "schema ids use letters, digits, '_', '-', '.'".into(),
                ));
            }
            if p.timeout == 0 || p.timeout > 86_400 {
                return Err(bad(
                    at("timeout"),
                    format!("must be 1..=86400 seconds, got {}", p.timeout),
                ));
            }
            if p.max_attempts == 0 || p.max_attempts > 10 {
                return Err(bad(
                    at("max_attempts"),
                    format!("must be 1..=10, got {}", p.max_attempts),
                ));
            }
        }
        Ok(())
    }

    /// The canonical JSON body and its sha256.
    #[must_use]
    pub fn canonical(&self) -> (serde_json::Value, String) {
        let body = serde_json::to_value(self).unwrap_or_default();
        let hash = sha256_hex(canonical_json(&body));
        (body, hash)
    }

    #[must_use]
    pub fn phase(&self, key: &str) -> Option<(usize, &Phase)> {
        self.phases.iter().enumerate().find(|(_, p)| p.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "
name: t
version: '1'
roles: { author: { persona: p } }
phases:
  - key: spec
    role: author
    instructions: write it
    expected_artifact: { path: spec.json, schema: spec.v1 }
";

    #[test]
    fn yaml_and_json_forms_hash_the_same() {
        let y = WorkflowTemplate::from_str_named("t.yaml", YAML).unwrap();
        let j = serde_json::to_string(&y).unwrap();
        let j = WorkflowTemplate::from_str_named("t.json", &j).unwrap();
        assert_eq!(y.canonical().1, j.canonical().1);
        assert_eq!(y.phases[0].max_attempts, 2, "default is one repair");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let err = WorkflowTemplate::from_str_named(
            "t.yaml",
            &YAML.replace("role: author", "role: author\n    colour: red"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.yaml") && err.contains("colour"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                YAML.replace("role: author", "role: ghost"),
                "phases[0].role",
            ),
            (
                YAML.replace("path: spec.json", "path: ../x.json"),
                "phases[0].expected_artifact.path",
            ),
            (
                YAML.replace("path: spec.json", "path: /etc/passwd"),
                "phases[0].expected_artifact.path",
            ),
            (YAML.replace("key: spec", "key: 'a b'"), "phases[0].key"),
            (
                YAML.replace("instructions: write it", "instructions: ' '"),
                "phases[0].instructions",
            ),
        ];
        for (text, field) in cases {
            let err = WorkflowTemplate::from_str_named("t.yaml", &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
        let err = WorkflowTemplate::from_str_named("t.yaml", "name: [")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.yaml:"), "{err}");
    }
}
