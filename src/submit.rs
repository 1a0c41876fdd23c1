//! Flow 1, submit: check the template, personas, bindings and inputs; then, in one
//! transaction, store the run skeleton and enqueue its first phase job. A client
//! idempotency key makes a repeated submit return the same run.

use crate::events;
use crate::ids::RunId;
use crate::phase::enqueue_first_attempt;
use crate::queue::QueueError;
use crate::validate::SchemaRegistry;
use crate::workflow::{Persona, WorkflowTemplate, sha256_hex};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// The run's inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInputs {
    /// Requirements, as markdown.
    #[serde(default)]
    pub requirements: String,
    #[serde(default = "empty_object")]
    pub objective: serde_json::Value,
    #[serde(default = "empty_object")]
    pub extra: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub usd: Option<f64>,
    pub tokens: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SubmitRequest {
    pub template: WorkflowTemplate,
    pub personas: Vec<Persona>,
    pub inputs: RunInputs,
    /// role -> persona name, overriding the template's default for this run.
    pub bindings: BTreeMap<String, String>,
    pub budget: Budget,
    pub idempotency_key: Option<String>,
    pub submitted_by: Option<String>,
    /// Queue for the run's phase jobs.
    pub queue: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "run_id", rename_all = "snake_case")]
pub enum Submitted {
    Created(RunId),
    /// The idempotency key was used before: this is that run.
    Existing(RunId),
}

impl Submitted {
    #[must_use]
    pub fn run_id(self) -> RunId {
        match self {
            Self::Created(r) | Self::Existing(r) => r,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether any string (or object key) in `v` holds a NUL character.
#[must_use]
pub fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Resolve role -> persona for this run (defaults, then overrides).
fn bind(req: &SubmitRequest) -> Result<BTreeMap<String, (&Persona, bool)>, SubmitError> {
    let by_name: BTreeMap<&str, &Persona> =
        req.personas.iter().map(|p| (p.name.as_str(), p)).collect();
    if by_name.len() != req.personas.len() {
        return Err(invalid("personas", "two personas share a name"));
    }
    for role in req.bindings.keys() {
        if !req.template.roles.contains_key(role) {
            return Err(invalid(
                format!("bindings.{role}"),
                format!("the template has no role {role:?}"),
            ));
        }
    }
    let mut out = BTreeMap::new();
    for (role, default) in &req.template.roles {
        let (name, overridden) = match req.bindings.get(role) {
            Some(n) => (n.as_str(), true),
            None => (default.persona.as_str(), false),
        };
        let persona = by_name.get(name).ok_or_else(|| {
            invalid(
                if overridden {
                    format!("bindings.{role}")
                } else {
                    format!("template.roles.{role}.persona")
                },
                format!(
                    "persona {name:?} was not supplied (supplied: {:?})",
                    by_name.keys().collect::<Vec<_>>()
                ),
            )
        })?;
        out.insert(role.clone(), (*persona, overridden));
    }
    Ok(out)
}

fn check(req: &SubmitRequest, schemas: &SchemaRegistry) -> Result<(), SubmitError> {
    req.template
        .check("template")
        .map_err(|e| invalid("template", e.to_string()))?;
    for p in &req.personas {
        p.check(&format!("persona {}", p.name))
            .map_err(|e| invalid("personas", e.to_string()))?;
    }
    for (i, p) in req.template.phases.iter().enumerate() {
        if let Err(e) = schemas.schema(&p.expected_artifact.schema) {
            return Err(invalid(
                format!("template.phases[{i}].expected_artifact.schema"),
                e.to_string(),
            ));
        }
    }
    if !req.inputs.objective.is_object() {
        return Err(invalid("inputs.objective", "must be a JSON object"));
    }
    if !req.inputs.extra.is_object() {
        return Err(invalid("inputs.extra", "must be a JSON object"));
    }
    if req.inputs.requirements.len() > 1_000_000 {
        return Err(invalid("inputs.requirements", "larger than 1 MB"));
    }
    // PostgreSQL stores no NUL character in text or jsonb: refuse it up front, naming
    // the field, instead of failing the insert.
    const NUL: &str = "contains a NUL character (\\u0000), which cannot be stored";
    if req.inputs.requirements.contains('\0') {
        return Err(invalid("inputs.requirements", NUL));
    }
    for (field, v) in [
        ("inputs.objective", &req.inputs.objective),
        ("inputs.extra", &req.inputs.extra),
        ("template", &req.template.canonical().0),
    ] {
        if has_nul(v) {
            return Err(invalid(field, NUL));
        }
    }
    for (i, p) in req.personas.iter().enumerate() {
        if has_nul(&p.canonical().0) {
            return Err(invalid(format!("personas[{i}]"), NUL));
        }
    }
    if req
        .idempotency_key
        .as_deref()
        .is_some_and(|k| k.contains('\0'))
        || req
            .submitted_by
            .as_deref()
            .is_some_and(|k| k.contains('\0'))
    {
        return Err(invalid("idempotency_key", NUL));
    }
    let queue_ok = !req.queue.is_empty()
        && req.queue.len() <= 64
        && req
            .queue
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !queue_ok {
        return Err(invalid(
            "queue",
            "1 to 64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    if req.budget.usd.is_some_and(|u| !(u > 0.0 && u.is_finite())) {
        return Err(invalid("budget.usd", "must be a positive number"));
    }
    if req.budget.tokens.is_some_and(|t| t <= 0) {
        return Err(invalid("budget.tokens", "must be positive"));
    }
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.len() > 200)
    {
        return Err(invalid("idempotency_key", "must be 1..=200 characters"));
    }
    Ok(())
}

/// Submit a run.
///
/// # Errors
/// [`SubmitError::Invalid`] naming the field; database errors otherwise. Nothing is
/// stored on error.
pub async fn submit(
    pool: &PgPool,
    schemas: &SchemaRegistry,
    req: SubmitRequest,
) -> Result<Submitted, SubmitError> {
    check(&req, schemas)?;
    let bound = bind(&req)?;
    let (template_body, template_hash) = req.template.canonical();
    let run_id = RunId::new();
    let mut tx = pool.begin().await?;

    sqlx::query("INSERT INTO templates (hash, name, version, body) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING")
        .bind(&template_hash)
        .bind(&req.template.name)
        .bind(&req.template.version)
        .bind(&template_body)
        .execute(&mut *tx)
        .await?;

    let inserted: Option<(RunId,)> = sqlx::query_as(
        "INSERT INTO runs (id, template_hash, idempotency_key, submitted_by, budget_usd, budget_tokens, queue)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(run_id)
    .bind(&template_hash)
    .bind(&req.idempotency_key)
    .bind(&req.submitted_by)
    .bind(req.budget.usd)
    .bind(req.budget.tokens)
    .bind(&req.queue)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        tx.rollback().await?;
        let (existing,): (RunId,) =
            sqlx::query_as("SELECT id FROM runs WHERE idempotency_key = $1")
                .bind(&req.idempotency_key)
                .fetch_one(pool)
                .await?;
        return Ok(Submitted::Existing(existing));
    }

    sqlx::query(
        "INSERT INTO run_inputs (run_id, requirements, objective, extra) VALUES ($1, $2, $3, $4)",
    )
    .bind(run_id)
    .bind(&req.inputs.requirements)
    .bind(&req.inputs.objective)
    .bind(&req.inputs.extra)
    .execute(&mut *tx)
    .await?;

    for (role, (persona, overridden)) in &bound {
        let (body, persona_hash) = persona.canonical();
        sqlx::query("INSERT INTO personas (hash, name, version, body) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING")
            .bind(&persona_hash)
            .bind(&persona.name)
            .bind(&persona.version)
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        let binding_hash = sha256_hex(format!("{role}\n{persona_hash}"));
        sqlx::query(
            "INSERT INTO run_bindings (run_id, role, persona_hash, binding_hash, overridden) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run_id)
        .bind(role)
        .bind(&persona_hash)
        .bind(&binding_hash)
        .bind(overridden)
        .execute(&mut *tx)
        .await?;
    }

    for (i, p) in req.template.phases.iter().enumerate() {
        sqlx::query(
            "INSERT INTO run_phases (run_id, position, phase_key, role, max_attempts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run_id)
        .bind(i32::try_from(i).unwrap_or(i32::MAX))
        .bind(&p.key)
        .bind(&p.role)
        .bind(i32::try_from(p.max_attempts).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    }

    events::append(
        &mut tx,
        run_id,
        "run.submitted",
        None,
        "run.submitted",
        serde_json::json!({ "template": req.template.name, "template_hash": template_hash, "phases": req.template.phases.len() }),
    )
    .await?;
    let first = req
        .template
        .phases
        .first()
        .ok_or_else(|| invalid("template.phases", "a template needs at least one phase"))?;
    enqueue_first_attempt(&mut tx, run_id, &first.key, 1, &req.queue).await?;
    tx.commit().await?;
    tracing::info!(run_id = %run_id, template = %req.template.name, "run submitted");
    Ok(Submitted::Created(run_id))
}
