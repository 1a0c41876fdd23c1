//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use crate::routes::{admin, approvals, files, runs, stream, system};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "phasefleet", description = "Durable runner for multi-phase LLM-agent workflows"),
    paths(
        runs::submit, runs::list, runs::show, runs::events, runs::report, runs::artifact, runs::cancel, runs::budget,
        stream::stream, approvals::pending, approvals::decide,
        files::upload, files::list, files::download, files::phase_artifact,
        admin::list_personas, admin::register_persona, admin::delete_persona,
        system::healthz, system::readyz, system::metrics, system::example,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&Bearer),
    tags((name = "runs"), (name = "files"), (name = "approvals"), (name = "admin"), (name = "system"))
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
