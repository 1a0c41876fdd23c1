//! Submit: check the template, personas, bindings, inputs, input files and the team's
//! limits; then, in one transaction, store the run skeleton (and its files) and enqueue
//! its first phase job. A client
//! idempotency key (the team's own) makes a repeated submit return the same run; the
//! same key with a different request is a conflict.

use crate::config::Config;
use crate::events::NewEvent;
use crate::ids::RunId;
use crate::input_files::{self, InputFile};
use crate::phase_job::PhaseJob;
use crate::store::files::{self, Blob};
use crate::store::persona_registry;
use crate::store::runs::{self, NewBinding, NewInputs, NewPersona, NewPhase, NewRun, NewTemplate};
use crate::validate::SchemaRegistry;
use crate::workflow::Definition;
use crate::workflow::{Backend, Persona, WorkflowTemplate, canonical_json, sha256_hex};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;

pub use crate::workflow::{Budget, RunInputs};

#[derive(Debug, Clone)]
pub struct SubmitRequest {
    pub template: WorkflowTemplate,
    /// Personas supplied with the request; roles may also bind registered personas.
    pub personas: Vec<Persona>,
    pub inputs: RunInputs,
    /// Files the agent's workspace starts with, in every phase.
    pub files: Vec<InputFile>,
    /// role -> persona name, overriding the template's default for this run.
    pub bindings: BTreeMap<String, String>,
    pub budget: Budget,
    pub idempotency_key: Option<String>,
    pub submitted_by: Option<String>,
    /// Queue for the run's phase jobs.
    pub queue: String,
    /// The team the run belongs to.
    pub team: String,
    /// The caller is an operator or an admin: personas it supplies may name a provider.
    /// Everyone else binds provider personas an admin registered.
    pub may_define_provider_personas: bool,
    /// Queue the run even when no live worker serves a provider it needs (its jobs wait
    /// until one does).
    pub allow_unserved: bool,
    /// The W3C trace context the run's spans continue (`telemetry`), when traces are on.
    pub traceparent: Option<String>,
}

/// How recent a worker's heartbeat must be for submit to count it as live.
pub const LIVE_WORKER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "run_id", rename_all = "snake_case")]
pub enum Submitted {
    Created(RunId),
    /// The idempotency key was used before, for the same request: this is that run.
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
    /// The idempotency key names an earlier run submitted with a different request.
    #[error(
        "Idempotency-Key was used for run {run} with a different request (template, personas, inputs, files, budget or queue)"
    )]
    KeyReused { run: RunId },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A persona bound to a role, and whether the run overrode the template's default.
struct Bound<'a> {
    persona: &'a Persona,
    overridden: bool,
}

/// Resolve role -> persona for this run (defaults, then overrides), looking in the
/// supplied personas first and in the registry after.
fn bind<'a>(
    req: &SubmitRequest,
    registered: &'a [Persona],
    supplied: &'a [Persona],
) -> Result<BTreeMap<String, Bound<'a>>, SubmitError> {
    let mut by_name: BTreeMap<&str, &Persona> =
        registered.iter().map(|p| (p.name.as_str(), p)).collect();
    by_name.extend(supplied.iter().map(|p| (p.name.as_str(), p)));
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
                    "persona {name:?} was neither supplied nor registered (supplied: {:?})",
                    supplied.iter().map(|p| &p.name).collect::<Vec<_>>()
                ),
            )
        })?;
        out.insert(
            role.clone(),
            Bound {
                persona,
                overridden,
            },
        );
    }
    Ok(out)
}

/// Personas, bindings and sizes the request itself can be judged on.
fn check_personas(req: &SubmitRequest) -> Result<(), SubmitError> {
    if req.personas.len() > 32 {
        return Err(invalid("personas", "at most 32 personas"));
    }
    if req.bindings.len() > 32 {
        return Err(invalid("bindings", "at most 32 bindings"));
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in req.personas.iter().enumerate() {
        p.check(&format!("persona {}", p.name))
            .map_err(|e| invalid(format!("personas[{i}]"), e.to_string()))?;
        if !names.insert(p.name.as_str()) {
            return Err(invalid("personas", "two personas share a name"));
        }
        if p.provider.is_some() && !req.may_define_provider_personas {
            return Err(invalid(
                format!("personas[{i}].provider"),
                "only an admin may define a persona that names a provider; bind a persona an admin registered (by name, under `bindings` or the template's roles)",
            ));
        }
    }
    Ok(())
}

/// Every bound persona that calls a model names a configured provider and a model it allows.
fn check_providers(
    bound: &BTreeMap<String, Bound<'_>>,
    config: &Config,
) -> Result<(), SubmitError> {
    for (role, b) in bound {
        let p = b.persona;
        if p.backend == Backend::Synthetic {
            continue;
        }
        config
            .check_model(p.provider.as_deref().unwrap_or_default(), &p.model)
            .map_err(|m| {
                invalid(
                    format!("bindings.{role}"),
                    format!("persona {:?}: {m}", p.name),
                )
            })?;
    }
    Ok(())
}

fn check_inputs(req: &SubmitRequest) -> Result<(), SubmitError> {
    if !req.inputs.objective.is_object() {
        return Err(invalid("inputs.objective", "must be a JSON object"));
    }
    if !req.inputs.extra.is_object() {
        return Err(invalid("inputs.extra", "must be a JSON object"));
    }
    if req.inputs.requirements.len() > 1_000_000 {
        return Err(invalid("inputs.requirements", "larger than 1 MB"));
    }
    for (field, v) in [
        ("inputs.objective", &req.inputs.objective),
        ("inputs.extra", &req.inputs.extra),
    ] {
        if v.to_string().len() > 256 * 1024 {
            return Err(invalid(field, "larger than 256 KiB"));
        }
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
        if crate::validate::has_nul(v) {
            return Err(invalid(field, NUL));
        }
    }
    for (i, p) in req.personas.iter().enumerate() {
        if crate::validate::has_nul(&p.canonical().0) {
            return Err(invalid(format!("personas[{i}]"), NUL));
        }
    }
    for (field, v) in [
        ("idempotency_key", req.idempotency_key.as_deref()),
        ("submitted_by", req.submitted_by.as_deref()),
    ] {
        if v.is_some_and(|k| k.contains('\0')) {
            return Err(invalid(field, NUL));
        }
    }
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.len() > 200)
    {
        return Err(invalid("idempotency_key", "must be 1..=200 characters"));
    }
    Ok(())
}

/// The team's queues and budget ceiling; a run without a budget gets the ceiling.
fn apply_team_limits(req: &mut SubmitRequest, config: &Config) -> Result<(), SubmitError> {
    if !crate::config::is_name(&req.team) {
        return Err(invalid(
            "team",
            "team names use letters, digits, '_', '-', '.'",
        ));
    }
    if !crate::config::is_name(&req.queue) {
        return Err(invalid(
            "queue",
            "1 to 64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    let team = config.team(&req.team);
    if !team.allows_queue(&req.queue) {
        return Err(invalid(
            "queue",
            format!(
                "team {:?} may not use queue {:?} (allowed: {})",
                req.team,
                req.queue,
                team.queues
                    .as_ref()
                    .map_or_else(|| "default".to_owned(), |q| q.join(", "))
            ),
        ));
    }
    if req.budget.usd.is_some_and(|u| !(u > 0.0 && u.is_finite())) {
        return Err(invalid("budget.usd", "must be a positive number"));
    }
    if req.budget.tokens.is_some_and(|t| t <= 0) {
        return Err(invalid("budget.tokens", "must be positive"));
    }
    if let Some(ceiling) = team.max_budget_usd {
        match req.budget.usd {
            Some(usd) if usd > ceiling => {
                return Err(invalid(
                    "budget.usd",
                    format!("team {:?} allows at most ${ceiling} per run", req.team),
                ));
            }
            Some(_) => {}
            None => req.budget.usd = Some(ceiling),
        }
    }
    if let Some(ceiling) = team.max_budget_tokens {
        match req.budget.tokens {
            Some(t) if t > ceiling => {
                return Err(invalid(
                    "budget.tokens",
                    format!(
                        "team {:?} allows at most {ceiling} tokens per run",
                        req.team
                    ),
                ));
            }
            Some(_) => {}
            None => req.budget.tokens = Some(ceiling),
        }
    }
    Ok(())
}

fn check_template(req: &SubmitRequest, schemas: &SchemaRegistry) -> Result<(), SubmitError> {
    req.template
        .check("template")
        .map_err(|e| invalid("template", e.to_string()))?;
    for (i, p) in req.template.phases.iter().enumerate() {
        let Some(artifact) = &p.expected_artifact else {
            continue;
        };
        if let Err(e) = schemas.schema(&artifact.schema) {
            return Err(invalid(
                format!("template.phases[{i}].expected_artifact.schema"),
                e.to_string(),
            ));
        }
    }
    for (i, p) in req.template.phases.iter().enumerate() {
        check_against_schemas(&req.template, i, p, schemas)?;
    }
    Ok(())
}

/// A condition or a fan-out the upstream phase's schema rules out: a value its schema
/// never allows (the phase could never run), or a fan-out over what is not an array.
fn check_against_schemas(
    template: &crate::workflow::WorkflowTemplate,
    i: usize,
    p: &crate::workflow::Phase,
    schemas: &SchemaRegistry,
) -> Result<(), SubmitError> {
    // The schema of a phase's accepted artifact: a fan-out phase's is the array of its
    // items' artifacts.
    let schema_of = |phase: &str| {
        let (_, ph) = template.phase(phase)?;
        let schema = schemas
            .schema(&ph.expected_artifact.as_ref()?.schema)
            .ok()?;
        Some(if ph.fan_out.is_some() {
            serde_json::json!({ "type": "array", "items": schema })
        } else {
            schema.clone()
        })
    };
    if let Some(c) = &p.when
        && let Some(why) = schema_of(&c.artifact).and_then(|s| c.never_holds_under(&s))
    {
        return Err(invalid(format!("template.phases[{i}].when"), why));
    }
    if let Some(f) = &p.fan_out
        && let Some(why) = f
            .source()
            .and_then(|(phase, _)| schema_of(phase))
            .and_then(|s| f.not_an_array_under(&s))
    {
        return Err(invalid(format!("template.phases[{i}].fan_out.over"), why));
    }
    Ok(())
}

/// The hash that tells a repeated submit from a different one under the same key.
fn request_hash(
    req: &SubmitRequest,
    template_hash: &str,
    bound: &BTreeMap<String, Bound<'_>>,
    manifest: &BTreeMap<String, String>,
) -> String {
    let personas: BTreeMap<&str, String> = bound
        .iter()
        .map(|(role, b)| (role.as_str(), b.persona.canonical().1))
        .collect();
    sha256_hex(canonical_json(&serde_json::json!({
        "template": template_hash,
        "personas": personas,
        "inputs": req.inputs,
        "files": manifest,
        "budget": req.budget,
        "queue": req.queue,
    })))
}

/// Submit a run.
///
/// # Errors
/// [`SubmitError::Invalid`] naming the field; [`SubmitError::KeyReused`]; database
/// errors otherwise. Nothing is stored on error.
pub async fn submit(
    pool: &PgPool,
    schemas: &SchemaRegistry,
    config: &Config,
    mut req: SubmitRequest,
) -> Result<Submitted, SubmitError> {
    // 1. Check what the request can be judged on alone, and the team's limits.
    check_template(&req, schemas)?;
    check_personas(&req)?;
    check_inputs(&req)?;
    apply_team_limits(&mut req, config)?;
    let (blobs, manifest) = input_files::digest(&req.files).map_err(|m| invalid("files", m))?;
    // 2. Bind roles to personas (supplied, or registered) and check their providers;
    //    uploaded files must be the team's own uploads.
    let mut conn = pool.acquire().await?;
    let registered = registered_personas(&mut conn, &req).await?;
    let bound = bind(&req, &registered, &req.personas)?;
    check_providers(&bound, config)?;
    check_prices(&mut conn, &req, &bound, config).await?;
    check_served(&mut conn, &req, &bound).await?;
    check_uploads(&mut conn, &req, &blobs, &manifest).await?;
    // 3. Store the run whole (one statement, and its files in the same transaction);
    //    a used key returns its run or conflicts.
    let (template_body, template_hash) = req.template.canonical();
    let request_hash = request_hash(&req, &template_hash, &bound, &manifest);
    let new = new_run(
        &req,
        &bound,
        (&template_hash, &template_body),
        &request_hash,
    )?;
    let created = if manifest.is_empty() {
        runs::runs_insert_submitted(&mut conn, &new).await?
    } else {
        insert_with_files(&mut conn, &new, &blobs, &manifest).await?
    };
    match created {
        Some(run_id) => {
            tracing::info!(run_id = %run_id, template = %req.template.name, team = %req.team, files = manifest.len(), "run submitted");
            Ok(Submitted::Created(run_id))
        }
        None => existing_run(&mut conn, &req, &request_hash).await,
    }
}

/// A run with a USD budget needs a price for every model it calls (configured, free,
/// or from the provider's price list): an unpriced call would spend without counting.
async fn check_prices(
    conn: &mut PgConnection,
    req: &SubmitRequest,
    bound: &BTreeMap<String, Bound<'_>>,
    config: &Config,
) -> Result<(), SubmitError> {
    if req.budget.usd.is_none() {
        return Ok(());
    }
    for (role, b) in bound {
        let Some(provider) = b.persona.provider.as_deref() else {
            continue;
        };
        let model = &b.persona.model;
        let price = crate::prices::price_of(conn, config, provider, model)
            .await
            .map_err(|e| match e {
                crate::prices::PriceError::Db(d) => SubmitError::Db(d),
                other => invalid(format!("bindings.{role}"), other.to_string()),
            })?;
        if price.is_none() {
            return Err(invalid(
                format!("bindings.{role}"),
                format!(
                    "persona {:?}: model {model:?} on provider {provider:?} has no known price, so a USD budget cannot be enforced; the operator sets its prices (or free = true) under [providers.{provider}.models], or a price_list_url",
                    b.persona.name
                ),
            ));
        }
    }
    Ok(())
}

/// Every provider the run calls is served by a live worker on its queue, unless the
/// caller asked to queue it anyway.
async fn check_served(
    conn: &mut PgConnection,
    req: &SubmitRequest,
    bound: &BTreeMap<String, Bound<'_>>,
) -> Result<(), SubmitError> {
    if req.allow_unserved {
        return Ok(());
    }
    for (role, b) in bound {
        let Some(provider) = b.persona.provider.as_deref() else {
            continue;
        };
        let capability = crate::agent::provider_capability(provider);
        if !crate::queue::workers::workers_serving(
            conn,
            &req.queue,
            &capability,
            LIVE_WORKER_WITHIN,
        )
        .await?
        {
            return Err(invalid(
                format!("bindings.{role}"),
                format!(
                    "persona {:?}: no live worker on queue {:?} serves provider {provider:?} (none holds its key); start one, or submit with allow_unserved to queue the run until one does",
                    b.persona.name, req.queue
                ),
            ));
        }
    }
    Ok(())
}

/// Files named by sha256 must be content this team uploaded.
async fn check_uploads(
    conn: &mut PgConnection,
    req: &SubmitRequest,
    blobs: &[Blob],
    manifest: &BTreeMap<String, String>,
) -> Result<(), SubmitError> {
    let carried: std::collections::HashSet<&str> =
        blobs.iter().map(|b| b.sha256.as_str()).collect();
    let named: Vec<&str> = manifest
        .values()
        .map(String::as_str)
        .filter(|s| !carried.contains(s))
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    let missing = files::team_uploads_missing(conn, &req.team, &named).await?;
    if let Some(sha) = missing.first() {
        let path = manifest
            .iter()
            .find(|(_, s)| *s == sha)
            .map_or("", |(p, _)| p.as_str());
        return Err(invalid(
            format!("files.{path}"),
            format!(
                "sha256 {sha} is not content team {:?} uploaded (POST /v1/uploads first)",
                req.team
            ),
        ));
    }
    // Named content counts against the run's input bound like carried content.
    let sizes = files::file_blobs_describe(conn, &named).await?;
    let size_of = |sha: &str| {
        sizes
            .iter()
            .find(|described| described.sha256 == sha)
            .map_or(0, |described| described.size)
    };
    let total: i64 = manifest
        .values()
        .map(|sha| {
            blobs.iter().find(|b| &b.sha256 == sha).map_or_else(
                || size_of(sha),
                |b| i64::try_from(b.content.len()).unwrap_or(i64::MAX),
            )
        })
        .sum();
    let cap = i64::try_from(input_files::MAX_INPUT_BYTES).unwrap_or(i64::MAX);
    if total > cap {
        return Err(invalid(
            "files",
            format!("the files hold {total} bytes; at most {cap} in all"),
        ));
    }
    Ok(())
}

/// The run and its input files, in one transaction (the first job becomes visible with
/// the files).
async fn insert_with_files(
    conn: &mut PgConnection,
    new: &NewRun<'_>,
    blobs: &[Blob],
    manifest: &BTreeMap<String, String>,
) -> Result<Option<RunId>, SubmitError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let Some(run_id) = runs::runs_insert_submitted(&mut tx, new).await? else {
        return Ok(None);
    };
    files::file_blobs_put(&mut tx, &blobs.iter().collect::<Vec<_>>()).await?;
    let entries: Vec<(&str, &str)> = manifest
        .iter()
        .map(|(p, s)| (p.as_str(), s.as_str()))
        .collect();
    files::run_files_replace(&mut tx, run_id, "", (0, 0), &entries).await?;
    tx.commit().await?;
    Ok(Some(run_id))
}

/// Everything the run starts with, as the store takes it.
fn new_run<'a>(
    req: &'a SubmitRequest,
    bound: &BTreeMap<String, Bound<'_>>,
    template: (&'a str, &'a serde_json::Value),
    request_hash: &'a str,
) -> Result<NewRun<'a>, SubmitError> {
    if req.template.phases.is_empty() {
        return Err(invalid(
            "template.phases",
            "a template needs at least one phase",
        ));
    }
    let run_id = RunId::new();
    let (personas, bindings) = persona_rows(bound);
    let phases = new_phases(req, bound);
    Ok(NewRun {
        id: run_id,
        template: NewTemplate {
            hash: template.0,
            name: &req.template.name,
            version: &req.template.version,
            body: template.1,
        },
        personas,
        idempotency_key: req.idempotency_key.as_deref(),
        submitted_by: req.submitted_by.as_deref(),
        budget_usd: req.budget.usd,
        budget_tokens: req.budget.tokens,
        queue: &req.queue,
        team: &req.team,
        request_hash,
        inputs: NewInputs {
            requirements: &req.inputs.requirements,
            objective: &req.inputs.objective,
            extra: &req.inputs.extra,
        },
        bindings,
        first_jobs: first_jobs(req, &phases, run_id),
        phases,
        event: NewEvent::run_submitted(
            &req.template.name,
            template.0,
            req.template.phases.len(),
            &req.team,
        ),
        traceparent: req.traceparent.as_deref(),
    })
}

/// The bound personas (each once) and which one plays each role.
fn persona_rows(bound: &BTreeMap<String, Bound<'_>>) -> (Vec<NewPersona>, Vec<NewBinding>) {
    let mut personas: Vec<NewPersona> = Vec::new();
    let mut bindings = Vec::new();
    for (role, b) in bound {
        let (body, hash) = b.persona.canonical();
        bindings.push(NewBinding {
            role: role.clone(),
            persona_hash: hash.clone(),
            binding_hash: sha256_hex(format!("{role}\n{hash}")),
            overridden: b.overridden,
        });
        if !personas.iter().any(|p| p.hash == hash) {
            personas.push(NewPersona {
                hash,
                name: b.persona.name.clone(),
                version: b.persona.version.clone(),
                body,
            });
        }
    }
    (personas, bindings)
}

/// The capability a job of `role` requires: its persona's provider, if it names one.
fn required_capability(bound: &BTreeMap<String, Bound<'_>>, role: &str) -> Option<String> {
    bound
        .get(role)
        .and_then(|b| b.persona.provider.as_deref())
        .map(crate::agent::provider_capability)
}

/// The run's phases, positioned along the graph: each after everything it needs.
fn new_phases(req: &SubmitRequest, bound: &BTreeMap<String, Bound<'_>>) -> Vec<NewPhase> {
    let template = &req.template;
    let mut position = vec![0; template.phases.len()];
    for (rank, i) in template.topological_order().into_iter().enumerate() {
        position[i] = i32::try_from(rank).unwrap_or(i32::MAX);
    }
    template
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| NewPhase {
            position: position[i],
            key: p.key.clone(),
            role: p.role.clone(),
            max_attempts: i32::try_from(p.max_attempts).unwrap_or(i32::MAX),
            requires: required_capability(bound, &p.role),
            needs: template
                .needs_of(i)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        })
        .collect()
}

/// The first attempts of the phases that need nothing: they start at once, in parallel.
fn first_jobs(
    req: &SubmitRequest,
    phases: &[NewPhase],
    run_id: RunId,
) -> Vec<crate::queue::NewJob> {
    phases
        .iter()
        .filter(|p| p.needs.is_empty())
        .map(|p| {
            PhaseJob::first_attempt(run_id, &p.key, 1, p.requires.as_deref())
                .traced(req.traceparent.clone())
                .to_job(&req.queue)
        })
        .collect()
}

/// The personas the request binds by name without supplying them.
async fn registered_personas(
    conn: &mut PgConnection,
    req: &SubmitRequest,
) -> Result<Vec<Persona>, sqlx::Error> {
    let supplied: std::collections::HashSet<&str> =
        req.personas.iter().map(|p| p.name.as_str()).collect();
    let wanted: Vec<String> = req
        .template
        .roles
        .iter()
        .map(|(role, d)| req.bindings.get(role).unwrap_or(&d.persona).clone())
        .filter(|n| !supplied.contains(n.as_str()))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    persona_registry::persona_registry_get_many(conn, &wanted).await
}

/// The team's run under the same key: the same request is that run; another is a conflict.
async fn existing_run(
    conn: &mut PgConnection,
    req: &SubmitRequest,
    request_hash: &str,
) -> Result<Submitted, SubmitError> {
    let key = req.idempotency_key.as_deref().unwrap_or_default();
    let (existing, hash) = runs::runs_find_by_key(conn, &req.team, key)
        .await?
        .ok_or_else(|| invalid("idempotency_key", "the run under this key was just deleted"))?;
    if hash.as_deref() == Some(request_hash) {
        Ok(Submitted::Existing(existing))
    } else {
        Err(SubmitError::KeyReused { run: existing })
    }
}
