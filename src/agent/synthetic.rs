//! The offline `synthetic` backend: writes an artifact that satisfies the phase's schema,
//! built from the schema itself. For demos and tests; never chosen when a persona names
//! a real backend.
//!
//! Directives, read from the run's `extra.synthetic` input:
//! - `invalid_attempts: N`: the first N attempts of every phase write an invalid artifact;
//! - `invalid_rounds: N`: every attempt of the first N rounds writes an invalid
//!   artifact (a revise or an operator retry starts a new round);
//! - `invalid_phases: [keys]`: limit those two to these phases;
//! - `never_write: true`: write nothing (the attempt fails for lack of an artifact);
//! - `delay_ms: N`: take N ms per attempt (interruptible); `delay_phases: [keys]`
//!   limits it to these phases;
//! - `hang_after_write: true`: after writing, wait until interrupted (a timeout);
//! - `tokens: N`: report N tokens used per attempt (to exercise budgets);
//! - `array_items: N`: the artifact's top-level arrays get N elements (at most 1000),
//!   an element's `id` numbered `R1`, `R2`, ... (to exercise fan-outs).
//!
//! A phase without an expected artifact gets `synthetic/<phase>.txt`, which lists the
//! workspace's files with their sizes.

use super::ledger::CallRecord;
use super::{Agent, AgentError, AgentOutcome, AgentRequest};
use serde_json::{Map, Value, json};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, Default)]
pub struct SyntheticAgent;

/// The run's `extra.synthetic` directives (see the module's documentation); a value of
/// the wrong type counts as absent.
struct Directives<'a> {
    directives: &'a Value,
    phase_key: &'a str,
}

impl<'a> Directives<'a> {
    fn of(req: &'a AgentRequest) -> Self {
        Self {
            directives: req.extra.get("synthetic").unwrap_or(&Value::Null),
            phase_key: &req.phase_key,
        }
    }

    fn flag(&self, name: &str) -> bool {
        self.directives.get(name).and_then(Value::as_bool) == Some(true)
    }

    fn number(&self, name: &str) -> Option<i64> {
        self.directives.get(name).and_then(Value::as_i64)
    }

    fn count(&self, name: &str) -> Option<u64> {
        self.directives.get(name).and_then(Value::as_u64)
    }

    /// Whether the phase is in the list `name` (true when there is no such list).
    fn names_phase(&self, name: &str) -> bool {
        self.directives
            .get(name)
            .and_then(Value::as_array)
            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == Some(self.phase_key)))
    }

    fn delay(&self) -> Option<Duration> {
        let ms = self.count("delay_ms")?;
        self.names_phase("delay_phases")
            .then(|| Duration::from_millis(ms))
    }

    fn writes_invalid(&self, attempt: i32, round: i32) -> bool {
        let by_attempt = i64::from(attempt) <= self.number("invalid_attempts").unwrap_or(0);
        let by_round = i64::from(round) <= self.number("invalid_rounds").unwrap_or(0);
        (by_attempt || by_round) && self.names_phase("invalid_phases")
    }
}

/// The synthetic agent's one turn, whatever it wrote.
const ONE_TURN: AgentOutcome = AgentOutcome {
    turns: 1,
    accepted: false,
};

impl Agent for SyntheticAgent {
    async fn run(
        &self,
        req: AgentRequest,
        cancel: CancellationToken,
    ) -> Result<AgentOutcome, AgentError> {
        let d = Directives::of(&req);
        // 1. Take the time asked for, and report the tokens asked for.
        if let Some(delay) = d.delay() {
            tokio::select! {
                () = cancel.cancelled() => return Err(AgentError::Cancelled),
                () = tokio::time::sleep(delay) => {}
            }
        }
        if let Some(tokens) = d.number("tokens") {
            record_tokens(&req, tokens).await?;
        }
        // 2. Write the artifact (or nothing, or a listing where none is expected).
        if d.flag("never_write") {
            return Ok(ONE_TURN);
        }
        let Some(artifact) = &req.artifact else {
            write_listing(&req)?;
            return Ok(ONE_TURN);
        };
        let content = if d.writes_invalid(req.attempt, req.round) {
            // Valid JSON that breaks the schema: an object without its required fields.
            json!({ "synthetic_invalid": true }).to_string()
        } else {
            valid_content(&req, &artifact.schema, d.count("array_items"))
        };
        req.workspace
            .lock()
            .write(&artifact.path, content)
            .map_err(AgentError::Fatal)?;
        // 3. Hang, if asked, until interrupted.
        if d.flag("hang_after_write") {
            cancel.cancelled().await;
            return Err(AgentError::Cancelled);
        }
        Ok(ONE_TURN)
    }
}

/// One ledger call of `tokens` input tokens, after the budget check a model call makes.
async fn record_tokens(req: &AgentRequest, tokens: i64) -> Result<(), AgentError> {
    req.ledger.check_budget().await?;
    let record = CallRecord {
        turn: 1,
        model: "synthetic",
        backend: "synthetic",
        status: "ok",
        tokens_in: tokens,
        ..CallRecord::default()
    };
    req.ledger
        .record_call(&record)
        .await
        .map_err(|e| AgentError::Transient(format!("ledger write failed: {e}")))
}

/// `synthetic/<phase>.txt`: the workspace's files with their sizes.
fn write_listing(req: &AgentRequest) -> Result<(), AgentError> {
    let mut ws = req.workspace.lock();
    let listing: Vec<String> = ws
        .files()
        .map(|(p, c)| format!("{p} {}", c.len()))
        .collect();
    ws.write(
        &format!("synthetic/{}.txt", req.phase_key),
        listing.join("\n"),
    )
    .map_err(AgentError::Fatal)
}

/// A valid artifact for `schema`: arrays widened to `array_items` (at most 1000), the
/// workspace's files cited, the phase named where the schema allows.
fn valid_content(req: &AgentRequest, schema: &Value, array_items: Option<u64>) -> String {
    let mut v = instance(schema, schema, 0);
    if let Some(n) = array_items {
        widen_arrays(&mut v, schema, n.min(1000));
    }
    cite_workspace(&mut v, schema, &req.workspace.lock());
    if let Value::Object(m) = &mut v {
        // Give consumers something run-specific to look at, where allowed.
        if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
            m.insert(
                "synthetic_phase".into(),
                Value::String(req.phase_key.clone()),
            );
        }
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Give each top-level array of `artifact` `n` elements, numbering their `id`s.
fn widen_arrays(artifact: &mut Value, schema: &Value, n: u64) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let Value::Object(fields) = artifact else {
        return;
    };
    for (key, value) in fields.iter_mut() {
        let Some(items) = props
            .get(key)
            .filter(|_| value.is_array())
            .and_then(|s| s.get("items"))
        else {
            continue;
        };
        *value = Value::Array(
            (1..=n)
                .map(|i| {
                    let mut element = instance(items, schema, 1);
                    if let Some(Value::String(id)) = element.get_mut("id") {
                        *id = format!("R{i}");
                    }
                    element
                })
                .collect(),
        );
    }
}

/// Where the schema asks for `files: [{path, sha256}]`, list the workspace's text files
/// (at most 20) with the sha256 of their content: the synthetic agent "read" them.
fn cite_workspace(artifact: &mut Value, schema: &Value, ws: &super::Workspace) {
    let wants = schema
        .pointer("/properties/files/items/properties")
        .is_some_and(|p| p.get("path").is_some() && p.get("sha256").is_some());
    if !wants {
        return;
    }
    let files: Vec<Value> = ws
        .files()
        .take(20)
        .map(|(path, content)| json!({ "path": path, "sha256": crate::workflow::sha256_hex(content) }))
        .collect();
    if !files.is_empty() {
        artifact["files"] = Value::Array(files);
    }
}

/// A minimal instance of `schema` (JSON Schema 2020-12 subset: type, properties,
/// required, items, enum, const, minItems, minLength, minimum, formats, local `$ref`).
#[must_use]
pub fn instance(schema: &Value, root: &Value, depth: usize) -> Value {
    if depth > 16 {
        return Value::Null;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str)
        && let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p))
    {
        return instance(target, root, depth + 1);
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return instance(first, root, depth + 1);
        }
    }
    match schema_type(schema) {
        "object" => object_instance(schema, root, depth),
        "array" => {
            let n = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            let item = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array((0..n).map(|_| instance(&item, root, depth + 1)).collect())
        }
        "string" => Value::String(string_instance(schema)),
        "integer" => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1)),
        "number" => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.0)),
        "boolean" => Value::Bool(true),
        _ => Value::Null,
    }
}

/// The type an instance of `schema` takes: its `type` (the first besides `null` of
/// several), `object` where it only has `properties`.
fn schema_type(schema: &Value) -> &str {
    match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "null",
    }
}

/// An object with the required properties of `schema`, each a minimal instance.
fn object_instance(schema: &Value, root: &Value, depth: usize) -> Value {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut m = Map::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, s) in props {
            if required.contains(&k.as_str()) {
                m.insert(k.clone(), instance(s, root, depth + 1));
            }
        }
    }
    Value::Object(m)
}

fn string_instance(schema: &Value) -> String {
    let s = match schema.get("format").and_then(Value::as_str) {
        Some("date-time") => "2026-01-01T00:00:00Z".to_owned(),
        Some("date") => "2026-01-01".to_owned(),
        Some("email") => "synthetic@example.com".to_owned(),
        Some("uri") => "https://example.com/synthetic".to_owned(),
        Some("uuid") => "00000000-0000-4000-8000-000000000000".to_owned(),
        _ => "synthetic content".to_owned(),
    };
    let min =
        usize::try_from(schema.get("minLength").and_then(Value::as_u64).unwrap_or(0)).unwrap_or(0);
    if s.len() < min {
        format!("{s}{}", "x".repeat(min - s.len()))
    } else {
        s
    }
}
