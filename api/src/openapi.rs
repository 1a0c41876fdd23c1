//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types
//! they send and receive. What every route shares (the error statuses of
//! authentication, malformed input and an unavailable database) is added here, once,
//! so no route can forget one.

use crate::error::ErrorBody;
use crate::routes::{admin, approvals, files, fleet, runs, stream, system};
use serde_json::{Value, json};
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(title = "phasefleet", description = "Durable runner for multi-phase LLM-agent workflows.

Every error has the shape `{\"error\": {\"status\", \"code\", \"message\", \"field\"?}}`.
Authenticate with `Authorization: Bearer <token>`; a token has a role (`read` < `submit`
< `approve` < `admin`, each granting the ones before it) and a team, and sees its
team's runs only (404 for others). Each operation's security requirement names the
least role it needs; the persona routes need a fleet-wide admin token (one without a
team).
Strings are stored in PostgreSQL, which cannot hold the NUL character (U+0000): a
string containing it is refused with 422 naming the field."),
    paths(
        runs::submit, runs::list, runs::show, runs::events, runs::tool_calls, runs::report, runs::artifact, runs::cancel, runs::budget,
        stream::stream, approvals::pending, approvals::decide,
        files::upload, files::list, files::download, files::phase_artifact,
        admin::list_personas, admin::register_persona, admin::delete_persona,
        fleet::workers, fleet::queues, fleet::jobs, fleet::act, fleet::audit, fleet::webhook_deliveries,
        system::healthz, system::readyz, system::metrics, system::example,
    ),
    components(schemas(
        ErrorBody, crate::error::ErrorDetail,
        phasefleet::workflow::WorkflowTemplate, phasefleet::workflow::Persona,
        crate::routes::runs::ReportFormat, crate::routes::stream::StreamEvent,
    )),
    modifiers(&Bearer, &SharedResponses),
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

/// The statuses any route of a kind can answer, added where a route does not declare
/// them itself.
struct SharedResponses;

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .into()
}

fn add_missing(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| error_response(description));
}

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                shared_responses(op);
            }
        }
    }
}

fn shared_responses(op: &mut Operation) {
    let authenticated = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_input =
        op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    if has_input {
        add_missing(
            op,
            "400",
            "malformed request: a path id, query parameter or header that does not parse, an unknown query parameter",
        );
    }
    if op.request_body.is_some() {
        add_missing(op, "413", "the body is larger than the route accepts");
        add_missing(
            op,
            "415",
            "the body's Content-Type is not the one the route accepts",
        );
        add_missing(
            op,
            "422",
            "the body is not valid: `field` names what is wrong",
        );
    }
    if authenticated {
        add_missing(op, "401", "no bearer token, or an unknown one");
        add_missing(op, "403", "the token's role or team does not allow this");
        add_missing(op, "503", "the database is unavailable; retry");
        add_missing(op, "500", "internal error (details in the server log only)");
    }
}

/// The document as served: utoipa's, with the links from a submitted run to the routes
/// that take its id, so a client (or a stateful fuzzer) can follow `run_id` without
/// knowing the paths. (utoipa 5 writes a link's `operationId` as `operation_id`, so
/// links are added to the JSON.)
#[must_use]
pub fn document() -> &'static Value {
    static DOCUMENT: std::sync::LazyLock<Value> = std::sync::LazyLock::new(build_document);
    &DOCUMENT
}

fn build_document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document does not serialize");
        Value::Null
    });
    let links: serde_json::Map<String, Value> = RUN_ROUTES
        .iter()
        .map(|operation| {
            let link = json!({
                "operationId": operation,
                "parameters": { "id": "$response.body#/run_id" },
                "description": "the submitted run",
            });
            ((*operation).to_owned(), link)
        })
        .collect();
    if let Some(stream) = doc.pointer_mut(
        "/paths/~1v1~1runs~1{id}~1events~1stream/get/responses/200/content/text~1event-stream",
    ) {
        stream["schema"] = sse_message_schema();
    }
    for status in ["200", "201"] {
        if let Some(response) =
            doc.pointer_mut(&format!("/paths/~1v1~1runs/post/responses/{status}"))
            && let Some(response) = response.as_object_mut()
        {
            response.insert("links".to_owned(), Value::Object(links.clone()));
        }
    }
    doc
}

/// One message of the event stream, as OpenAPI 3.1 describes a stream's items: a run
/// event (`id` its seq, `data` a `StreamEvent` as JSON), or the closing `end` message.
fn sse_message_schema() -> Value {
    json!({
        "anyOf": [
            {
                "type": "object",
                "required": ["id", "event", "data"],
                "properties": {
                    "id": { "type": "string", "pattern": "^-?[0-9]+$" },
                    "event": { "type": "string" },
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": { "$ref": "#/components/schemas/StreamEvent" }
                    }
                }
            },
            {
                "type": "object",
                "required": ["event", "data"],
                "properties": { "event": { "const": "end" }, "data": { "const": "{}" } }
            }
        ]
    })
}

const RUN_ROUTES: [&str; 7] = [
    "get_run",
    "list_run_events",
    "get_run_report",
    "list_run_files",
    "get_phase_artifact",
    "cancel_run",
    "decide_run_budget",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Patterns written as literals in the annotations are the ones the server checks.
    #[test]
    fn documented_patterns_are_the_servers() {
        let doc = document();
        let cursor = doc
            .pointer("/paths/~1v1~1runs/get/parameters")
            .and_then(Value::as_array)
            .and_then(|ps| ps.iter().find(|p| p["name"] == "cursor"))
            .and_then(|p| p.pointer("/schema/pattern"))
            .and_then(Value::as_str);
        assert_eq!(cursor, Some(phasefleet::views::CURSOR_PATTERN));
        let queue = doc
            .pointer("/components/schemas/SubmitBody/properties/queue/pattern")
            .and_then(Value::as_str);
        assert_eq!(queue, Some(crate::routes::runs::NAME_PATTERN));
        let links = doc
            .pointer("/paths/~1v1~1runs/post/responses/201/links/get_run/operationId")
            .and_then(Value::as_str);
        assert_eq!(links, Some("get_run"));
    }
}
