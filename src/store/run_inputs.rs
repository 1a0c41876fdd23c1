//! `run_inputs` and `run_bindings`: what a run was given (requirements, objective,
//! extra) and which persona plays each role; and everything an attempt reads before
//! the agent starts, in one statement.

use crate::ids::RunId;
use serde::Deserialize;
use sqlx::PgConnection;

/// What an attempt of a phase starts from.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptContext {
    /// The hash the run's template is stored under.
    pub template_hash: String,
    /// The hash of the persona bound to the phase's role.
    pub persona_hash: String,
    pub requirements: String,
    pub objective: serde_json::Value,
    pub extra: serde_json::Value,
    /// The accepted artifacts of completed phases (not of fan-out items: their fan-out
    /// phase's artifact gathers them).
    pub prior: sqlx::types::Json<Vec<PriorArtifact>>,
    /// The latest artifact of this phase before this attempt (the previous attempt of
    /// this round, or the last of an earlier round), if any.
    pub previous: Option<sqlx::types::Json<PreviousArtifact>>,
    /// This attempt's artifact is stored already (a duplicate delivery).
    pub recorded: bool,
    /// The run holds files (inputs, or earlier phases' outputs).
    pub has_files: bool,
    /// For an item of a fan-out: its element.
    pub item: Option<serde_json::Value>,
}

/// An earlier phase's accepted artifact.
#[derive(Debug, Clone, Deserialize)]
pub struct PriorArtifact {
    pub phase_key: String,
    pub path: String,
    pub content: String,
}

/// What an earlier attempt of the same phase produced.
#[derive(Debug, Clone, Deserialize)]
pub struct PreviousArtifact {
    pub round: i32,
    pub attempt: i32,
    /// `None` when the attempt wrote nothing.
    pub content: Option<String>,
    pub valid: bool,
    pub validation_errors: serde_json::Value,
}

/// Read what attempt `attempt` of `round` of `phase` starts from; `completed` are the
/// run's completed phases as the caller's transaction sees them (it may hold their rows'
/// changes back until its events are written).
///
/// # Errors
/// Database errors (a run without template, binding or inputs is one).
pub async fn run_inputs_attempt_context(
    conn: &mut PgConnection,
    run: RunId,
    phase: &str,
    round: i32,
    attempt: i32,
    completed: &[String],
) -> Result<AttemptContext, sqlx::Error> {
    sqlx::query_as::<_, AttemptContext>(
        "SELECT r.template_hash, b.persona_hash, i.requirements, i.objective, i.extra,
                (SELECT COALESCE(jsonb_agg(jsonb_build_object('phase_key', a.phase_key, 'path', a.path,
                         'content', COALESCE(a.content, '')) ORDER BY ph.position), '[]'::jsonb)
                   FROM run_phases ph
                   JOIN LATERAL (SELECT phase_key, path, content FROM artifacts x
                                  WHERE x.run_id = ph.run_id AND x.phase_key = ph.phase_key AND x.valid AND x.path IS NOT NULL
                                  ORDER BY x.round DESC, x.attempt DESC LIMIT 1) a ON true
                  WHERE ph.run_id = r.id AND ph.phase_key = ANY($5) AND ph.parent IS NULL) AS prior,
                (SELECT jsonb_build_object('round', v.round, 'attempt', v.attempt, 'content', v.content,
                        'valid', v.valid, 'validation_errors', v.validation_errors)
                   FROM artifacts v
                  WHERE v.run_id = r.id AND v.phase_key = $2 AND (v.round, v.attempt) < ($3, $4)
                  ORDER BY v.round DESC, v.attempt DESC LIMIT 1) AS previous,
                EXISTS (SELECT 1 FROM artifacts d
                         WHERE d.run_id = r.id AND d.phase_key = $2 AND d.round = $3 AND d.attempt = $4)
                  AS recorded,
                EXISTS (SELECT 1 FROM run_files f WHERE f.run_id = r.id) AS has_files,
                p.item
           FROM runs r
           JOIN run_phases p ON p.run_id = r.id AND p.phase_key = $2
           JOIN run_bindings b ON b.run_id = r.id AND b.role = p.role
           JOIN run_inputs i ON i.run_id = r.id
          WHERE r.id = $1",
    )
    .bind(run)
    .bind(phase)
    .bind(round)
    .bind(attempt)
    .bind(completed)
    .fetch_one(&mut *conn)
    .await
}

/// The run's inputs and bindings as the run detail shows them.
///
/// # Errors
/// Database errors.
pub async fn run_inputs_detail(
    conn: &mut PgConnection,
    run: RunId,
) -> Result<(serde_json::Value, serde_json::Value), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT jsonb_build_object('requirements', requirements, 'objective', objective, 'extra', extra)
                   FROM run_inputs WHERE run_id = $1),
                (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                    'role', b.role, 'persona', p.name, 'persona_version', p.version, 'model', p.body->'model',
                    'backend', p.body->'backend', 'provider', p.body->'provider', 'persona_hash', b.persona_hash,
                    'binding_hash', b.binding_hash, 'overridden', b.overridden) ORDER BY b.role), '[]'::jsonb)
                   FROM run_bindings b JOIN personas p ON p.hash = b.persona_hash WHERE b.run_id = $1)",
    )
    .bind(run)
    .fetch_one(&mut *conn)
    .await
}
