//! Extractors whose rejections use the API's error shape: a malformed body, path or
//! query is a 4xx that says what is wrong, never axum's plain-text default.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use phasefleet::workflow::document;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `axum::Json`, with JSON errors: a body that is not JSON is 400 (415 without the
/// JSON content type); one of the wrong shape is 422 naming the field, and an array is
/// never read where an object is declared.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned + Serialize, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => typed(v).map(Self),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

/// `value` read as `T` by the document reader (`phasefleet::workflow::document`).
///
/// # Errors
/// 422 naming the field at fault.
pub fn typed<T: DeserializeOwned + Serialize>(value: Value) -> Result<T, ApiError> {
    document::from_value(value)
        .map_err(|e| ApiError::invalid(e.path.as_deref().unwrap_or("body"), e.message))
}

/// `axum::extract::Path`, with JSON errors.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            // An id that does not parse names nothing that exists.
            Err(r) => Err(ApiError::bad_request(r.body_text())),
        }
    }
}

/// `axum::extract::Query`, with JSON errors.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::bad_request(r.body_text())),
        }
    }
}
