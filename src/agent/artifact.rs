//! The artifact a phase expects, as the agent sees it: where it goes, the schema it
//! must satisfy, and a check run the moment the model writes or submits it, so the
//! model hears "accepted" (and the attempt ends) or the full list of errors (and can
//! fix them in the same attempt).

use super::openai::ToolDef;
use crate::validate::{Issue, SchemaRegistry, Validation};
use serde_json::{Value, json};

/// The name of the tool whose parameters are the artifact's schema.
pub const SUBMIT_TOOL: &str = "submit_artifact";

/// The expected artifact of one phase and its validator.
#[derive(Debug, Clone)]
pub struct ArtifactCheck {
    /// Workspace-relative path the artifact is written to.
    pub path: String,
    pub schema_id: String,
    /// The registry's copy, shared: a phase holds a pointer, not the schema.
    pub schema: std::sync::Arc<Value>,
    schemas: SchemaRegistry,
}

/// What the check found, worded for the model.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub validation: Validation,
}

impl Verdict {
    #[must_use]
    pub fn accepted(&self) -> bool {
        self.validation.valid
    }

    /// The tool result (or follow-up message) the model reads.
    #[must_use]
    pub fn message(&self, path: &str) -> String {
        if self.accepted() {
            return format!(
                "accepted: {path} is valid against the schema. Reply with one sentence and stop."
            );
        }
        let mut text = format!(
            "{path} does NOT validate against the schema ({} error(s)). Fix every error and submit the whole artifact again:",
            self.validation.issues.len()
        );
        for issue in &self.validation.issues {
            text.push_str(&format!("\n- at {}: {}", issue.at(), issue.message));
        }
        text
    }
}

impl ArtifactCheck {
    /// # Errors
    /// When `schema_id` is not in the registry.
    pub fn new(
        schemas: &SchemaRegistry,
        path: &str,
        schema_id: &str,
    ) -> Result<Self, crate::validate::SchemaError> {
        Ok(Self {
            path: path.to_owned(),
            schema_id: schema_id.to_owned(),
            schema: schemas.schema_shared(schema_id)?,
            schemas: schemas.clone(),
        })
    }

    /// Validate artifact text (CPU work: call it off the async threads).
    #[must_use]
    pub fn check_text(&self, content: &str) -> Verdict {
        Verdict {
            validation: self
                .schemas
                .validate(&self.schema_id, content)
                .unwrap_or_else(|e| unknown_schema(&e)),
        }
    }

    /// Validate an artifact already parsed.
    #[must_use]
    pub fn check_value(&self, value: &Value) -> Verdict {
        Verdict {
            validation: self
                .schemas
                .validate_json(&self.schema_id, value)
                .unwrap_or_else(|e| unknown_schema(&e)),
        }
    }

    /// The schema object holding the keyword of `issue`, for a repair prompt.
    #[must_use]
    pub fn fragment(&self, issue: &Issue) -> Option<Value> {
        self.schemas.fragment(&self.schema_id, &issue.schema_path)
    }

    /// `submit_artifact`: its parameters are the artifact's schema itself, so a server
    /// that constrains tool arguments to their schema constrains the artifact.
    /// `strict` asks the provider to enforce it (where the provider supports it).
    #[must_use]
    pub fn submit_tool(&self, strict: bool) -> ToolDef {
        let mut function = json!({
            "name": SUBMIT_TOOL,
            "description": format!(
                "Submit the finished artifact ({}). The arguments ARE the artifact: a JSON object satisfying its schema. It is validated at once; you get either 'accepted' or the list of errors to fix.",
                self.path
            ),
            "parameters": self.parameters(),
        });
        if strict && strict_compatible(&self.schema) {
            function["strict"] = Value::Bool(true);
        }
        ToolDef {
            kind: "function",
            function,
        }
    }

    /// `response_format` asking for the artifact itself as the reply.
    #[must_use]
    pub fn response_format(&self, strict: bool) -> Value {
        json!({
            "type": "json_schema",
            "json_schema": { "name": "artifact", "schema": self.parameters(),
                             "strict": strict && strict_compatible(&self.schema) },
        })
    }

    /// The schema as tool parameters: without `$schema`/`$id`, which some servers refuse.
    fn parameters(&self) -> Value {
        let mut params = Value::clone(&self.schema);
        if let Value::Object(map) = &mut params {
            map.remove("$schema");
            map.remove("$id");
        }
        params
    }
}

/// Whether providers' strict mode can enforce `schema`: every object closes with
/// `additionalProperties: false` and requires all its properties.
fn strict_compatible(schema: &Value) -> bool {
    let Value::Object(map) = schema else {
        return true;
    };
    if let Some(Value::Object(props)) = map.get("properties") {
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
        if !closed || props.keys().any(|k| !required.contains(&k.as_str())) {
            return false;
        }
    }
    map.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "enum" | "const" | "default" | "examples"))
        .all(|(_, v)| match v {
            Value::Array(items) => items.iter().all(strict_compatible),
            other => strict_compatible(other),
        })
}

fn unknown_schema(e: &crate::validate::SchemaError) -> Validation {
    Validation {
        valid: false,
        issues: vec![Issue::whole(e.to_string())],
    }
}

/// A reply that is itself the artifact: bare JSON, or exactly one fenced JSON block
/// (models add fences even when told not to). `None` for prose.
#[must_use]
pub fn artifact_in_reply(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        return serde_json::from_str::<Value>(trimmed)
            .ok()
            .filter(Value::is_object);
    }
    let mut blocks = fenced_blocks(trimmed);
    let block = blocks.next()?;
    if blocks.next().is_some() {
        return None;
    }
    serde_json::from_str::<Value>(block.trim())
        .ok()
        .filter(Value::is_object)
}

/// The bodies of ```` ``` ```` fenced blocks (any info string, e.g. `json`).
fn fenced_blocks(text: &str) -> impl Iterator<Item = &str> {
    text.split("```").skip(1).step_by(2).map(|block| {
        // Drop the info string on the opening line.
        match block.split_once('\n') {
            Some((info, body)) if !info.trim_start().starts_with('{') => body,
            _ => block,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_mode_only_for_closed_schemas() {
        let closed = json!({ "type": "object", "required": ["a"], "additionalProperties": false,
            "properties": { "a": { "type": "array", "items": { "type": "object", "required": ["b"],
                "additionalProperties": false, "properties": { "b": { "enum": ["x", "y"] } } } } } });
        assert!(strict_compatible(&closed));
        let mut open = closed.clone();
        open["properties"]["a"]["items"]["properties"]["c"] = json!({ "type": "string" });
        assert!(!strict_compatible(&open), "an optional property");
        let mut unclosed = closed;
        unclosed["additionalProperties"] = json!(true);
        assert!(!strict_compatible(&unclosed));
    }

    #[test]
    fn replies_that_are_the_artifact() {
        assert_eq!(artifact_in_reply(r#" {"a": 1} "#), Some(json!({"a": 1})));
        assert_eq!(
            artifact_in_reply("Here it is:\n```json\n{\"a\": 1}\n```\nDone."),
            Some(json!({"a": 1}))
        );
        assert_eq!(
            artifact_in_reply("```\n{\"a\": 2}\n```"),
            Some(json!({"a": 2}))
        );
        assert_eq!(artifact_in_reply("The file is written."), None);
        assert_eq!(artifact_in_reply("[1, 2]"), None);
        assert_eq!(
            artifact_in_reply("```json\n{\"a\": 1}\n```\n```json\n{\"b\": 1}\n```"),
            None,
            "two blocks are ambiguous"
        );
        assert_eq!(artifact_in_reply("```json\n{not json\n```"), None);
    }
}
