//! Files: `POST /v1/uploads` (a tar archive becomes content the team may name in a
//! submit), a run's file manifest and downloads, and a phase's artifact.

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::routes::runs::visible_run;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use phasefleet::RunId;
use phasefleet::input_files;
use phasefleet::store::files::{self, Blob, RunFile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Largest upload: a run's input files at most, with the archive's own overhead.
pub const UPLOAD_BODY_LIMIT: usize = input_files::MAX_INPUT_BYTES + 8 * 1024 * 1024;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The team the content is for (a fleet-wide token only; a team's token uploads
    /// for its own team).
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub team: Option<String>,
}

/// Bytes as sent: a tar archive, or a file's content.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Bytes(Vec<u8>);

/// One uploaded file.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedFile {
    pub sha256: String,
    #[schema(value_type = i64, minimum = 0)]
    pub size: usize,
    pub binary: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    pub team: String,
    /// path -> content; submit with `"files": {path: {"sha256": ...}}`.
    pub files: BTreeMap<String, UploadedFile>,
}

/// Upload input files as a tar archive (`tar cf - DIR`): regular files and directories
/// only, each at most 1 MiB, 16 MiB and 1000 files in all. Needs the `submit` role.
#[utoipa::path(post, operation_id = "upload_files", path = "/v1/uploads", tag = "files", params(UploadQuery),
    request_body(content((Bytes = "application/x-tar"), (Bytes = "application/octet-stream")),
        description = "a tar archive (`tar cf - DIR`), sent as application/x-tar or application/octet-stream"),
    responses((status = 201, body = UploadResponse),
              (status = 415, body = ErrorBody, description = "the Content-Type is not application/x-tar or application/octet-stream"),
              (status = 422, body = ErrorBody, description = "the body is not a tar archive of regular files and directories within the bounds")),
    security(("bearer" = ["submit"])))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<UploadQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Submit)?;
    if q.team
        .as_deref()
        .is_some_and(|t| !phasefleet::config::is_name(t))
    {
        return Err(ApiError {
            field: Some("team".into()),
            ..ApiError::bad_request("team names use letters, digits, '_', '-', '.' (at most 64)")
        });
    }
    let team = caller.submit_team(q.team.as_deref())?;
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(
        kind,
        "application/x-tar" | "application/tar" | "application/octet-stream"
    ) {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send a tar archive with Content-Type: application/x-tar (or application/octet-stream)",
        ));
    }
    // Parsing and hashing are CPU work.
    let (blobs, files) = tokio::task::spawn_blocking(move || read_upload(&body))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let mut tx = state.pool.begin().await?;
    files::file_blobs_put(&mut tx, &blobs.iter().collect::<Vec<_>>()).await?;
    let shas: Vec<&str> = blobs.iter().map(|b| b.sha256.as_str()).collect();
    files::team_uploads_insert(&mut tx, &team, &shas).await?;
    tx.commit().await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(UploadResponse { team, files }),
    )
        .into_response())
}

/// The archive's files, checked and digested once: the blobs to store and what the
/// answer lists per path.
fn read_upload(body: &[u8]) -> Result<(Vec<Blob>, BTreeMap<String, UploadedFile>), ApiError> {
    let files =
        input_files::read_tar(body).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    let (blobs, manifest) =
        input_files::digest(&files).map_err(|m| ApiError::invalid("body", m))?;
    let listed = manifest
        .into_iter()
        .filter_map(|(path, sha)| {
            let blob = blobs.iter().find(|b| b.sha256 == sha)?;
            let file = UploadedFile {
                size: blob.content.len(),
                binary: blob.is_binary,
                sha256: sha,
            };
            Some((path, file))
        })
        .collect();
    Ok((blobs, listed))
}

/// A run's files: inputs (`origin` "") and what each accepted phase wrote.
#[utoipa::path(get, operation_id = "list_run_files", path = "/v1/runs/{id}/files", tag = "files", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Vec<RunFile>), (status = 404, body = ErrorBody, description = "no such run in the caller's team")),
    security(("bearer" = ["read"])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<RunId>,
) -> Result<Json<Vec<RunFile>>, ApiError> {
    caller.require(Role::Read)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(files::run_files_list(&mut conn, id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// Which writer's version: a phase key, or "" for the input (default: the latest
    /// phase that wrote the path).
    pub origin: Option<String>,
}

/// One file of a run, as stored, for download.
#[utoipa::path(get, operation_id = "download_run_file", path = "/v1/runs/{id}/files/{path}", tag = "files",
    params(("id" = String, Path, format = Uuid), ("path" = String, Path, description = "workspace path, e.g. src/main.rs"), FileQuery),
    responses((status = 200, description = "the file as stored (text/plain for text, application/octet-stream for binary content); header `X-Phasefleet-Sha256` is its digest",
               content((String = "text/plain"), (Bytes = "application/octet-stream"))),
              (status = 404, body = ErrorBody, description = "no such run in the caller's team, or no such file")),
    security(("bearer" = ["read"])))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(RunId, String)>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    let (file, bytes) = files::run_files_content(&mut conn, id, &path, q.origin.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} has no file {path:?}")))?;
    let kind = if file.is_binary {
        "application/octet-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    let name: String = path
        .rsplit('/')
        .next()
        .unwrap_or("file")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::HeaderName::from_static("x-phasefleet-sha256"),
                HeaderValue::from_str(&file.sha256)
                    .unwrap_or_else(|_| HeaderValue::from_static("")),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// A phase's latest artifact with its content: the one an approval waits on, or the
/// accepted one.
#[utoipa::path(get, operation_id = "get_phase_artifact", path = "/v1/runs/{id}/phases/{phase}/artifact", tag = "runs",
    params(("id" = String, Path, format = Uuid), ("phase" = String, Path)),
    responses((status = 200, body = crate::routes::runs::ArtifactBody),
              (status = 404, body = ErrorBody, description = "no such run in the caller's team, or the phase has no artifact")),
    security(("bearer" = ["read"])))]
pub async fn phase_artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, phase)): Path<(RunId, String)>,
) -> Result<Json<crate::routes::runs::ArtifactBody>, ApiError> {
    caller.require(Role::Read)?;
    visible_run(&state, &caller, id).await?;
    let mut conn = state.pool.acquire().await?;
    let (meta, content) = phasefleet::views::phase_artifact(&mut conn, id, &phase)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("run {id} has no artifact for phase {phase:?}"))
        })?;
    Ok(Json(crate::routes::runs::artifact_body(meta, content)))
}
