//! `/v1/admin/...`: operator actions over HTTP. Needs a fleet-wide admin token.
//! Registering a persona is how a model provider becomes usable by teams: a run binds a
//! registered persona by name; only admins define personas that name a provider.

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Path};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use phasefleet::store::persona_registry::{self, RegisteredPersona};
use phasefleet::teams::Scope;
use phasefleet::workflow::Definition;
use phasefleet::workflow::{Backend, DefinitionError, Persona};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

pub(crate) fn require_fleet_admin(caller: &Caller) -> Result<(), ApiError> {
    caller.require(Role::Admin)?;
    if caller.scope != Scope::Fleet {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this needs a fleet-wide admin token (one without a team)",
        ));
    }
    Ok(())
}

/// Registered personas. Needs a fleet-wide admin token.
#[utoipa::path(get, operation_id = "list_personas", path = "/v1/admin/personas", tag = "admin",
    responses((status = 200, body = Vec<RegisteredPersona>)),
    security(("bearer" = ["admin"])))]
pub async fn list_personas(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<RegisteredPersona>>, ApiError> {
    require_fleet_admin(&caller)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        persona_registry::persona_registry_list(&mut conn).await?,
    ))
}

/// A persona to register: an object, or its YAML/JSON text.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PersonaDocument {
    Object(Box<Persona>),
    Text(String),
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationOutcome {
    Registered,
    Removed,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegistrationResponse {
    pub name: String,
    /// The registered body's hash (absent when removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona_hash: Option<String>,
    pub outcome: RegistrationOutcome,
}

/// Register (or replace) a persona under its name. The body is the persona, as an
/// object or YAML/JSON text; its provider must be configured and allow its model.
/// Needs a fleet-wide admin token.
#[utoipa::path(put, operation_id = "register_persona", path = "/v1/admin/personas/{name}", tag = "admin",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$")), request_body = PersonaDocument,
    responses((status = 200, body = RegistrationResponse),
              (status = 422, body = ErrorBody, description = "not a valid persona, its name is not the path's, or its provider or model is not configured")),
    security(("bearer" = ["admin"])))]
pub async fn register_persona(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<Value>,
) -> Result<Json<RegistrationResponse>, ApiError> {
    require_fleet_admin(&caller)?;
    let (file, text) = match &body {
        Value::String(s) => ("persona.yaml", s.clone()),
        Value::Object(_) => ("persona.json", body.to_string()),
        _ => {
            return Err(ApiError::invalid(
                "body",
                "expected a persona object or YAML/JSON text",
            ));
        }
    };
    let persona = Persona::from_str_named(file, &text).map_err(|e| match e {
        DefinitionError::Invalid { field, message, .. } => ApiError::invalid(field, message),
        other => ApiError::invalid("body", other.to_string()),
    })?;
    if persona.name != name {
        return Err(ApiError::invalid(
            "name",
            format!(
                "the path names {name:?} but the persona is {:?}",
                persona.name
            ),
        ));
    }
    if persona.backend == Backend::Openai {
        state
            .config
            .check_model(
                persona.provider.as_deref().unwrap_or_default(),
                &persona.model,
            )
            .map_err(|m| ApiError::invalid("provider", m))?;
    }
    let mut conn = state.pool.acquire().await?;
    let hash =
        persona_registry::persona_registry_upsert(&mut conn, &persona, Some(&caller.name)).await?;
    Ok(Json(RegistrationResponse {
        name: persona.name,
        persona_hash: Some(hash),
        outcome: RegistrationOutcome::Registered,
    }))
}

/// Remove a registration (runs already bound keep their persona). Needs a fleet-wide
/// admin token.
#[utoipa::path(delete, operation_id = "delete_persona", path = "/v1/admin/personas/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 200, body = RegistrationResponse), (status = 404, body = ErrorBody, description = "no persona of that name is registered")),
    security(("bearer" = ["admin"])))]
pub async fn delete_persona(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<RegistrationResponse>, ApiError> {
    require_fleet_admin(&caller)?;
    let mut conn = state.pool.acquire().await?;
    if persona_registry::persona_registry_delete(&mut conn, &name).await? {
        Ok(Json(RegistrationResponse {
            name,
            persona_hash: None,
            outcome: RegistrationOutcome::Removed,
        }))
    } else {
        Err(ApiError::not_found(format!(
            "no persona {name:?} is registered"
        )))
    }
}
