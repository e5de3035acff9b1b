//! The management API's one error type, answered in ngrok's JSON shape:
//! `{"error_code","status_code","msg","details":{"operation_id"}}`.
//!
//! Every code is listed in [`CODES`], which the table in `README.md` mirrors (a test checks it).

use crate::pages::{full, Body};
use http::{header, HeaderValue, Response, StatusCode};

/// An API failure: a stable code, the HTTP status and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub status: StatusCode,
    pub msg: String,
}

/// Every error code: number, status, meaning.
pub const CODES: &[(u16, u16, &str)] = &[
    (100, 400, "The `Ngrok-Version` header is missing or is not `2`."),
    (
        101,
        401,
        "The `Authorization` header is missing or is not `Bearer <api key>`.",
    ),
    (102, 401, "The API key is not valid (unknown or deleted)."),
    (103, 413, "The request body is larger than `api.max_body_bytes`."),
    (
        104,
        400,
        "The request body is not a JSON object of the expected shape (bad JSON, wrong type, unknown field).",
    ),
    (
        105,
        400,
        "A field has a value that is not allowed; the message names the field.",
    ),
    (106, 404, "No resource has this id."),
    (107, 404, "No API operation lives at this path."),
    (108, 405, "The path exists but does not take this method."),
    (
        109,
        409,
        "The resource is declared in the config file; change it there and reload.",
    ),
    (
        110,
        409,
        "The change conflicts with another resource (a host:port or route match in use, a backend still referenced).",
    ),
    (111, 400, "A paging parameter (`limit`, `before_id`) is invalid."),
    (
        112,
        403,
        "The client's address is not in `api.allow_cidrs`: the API does not answer it.",
    ),
    (
        113,
        408,
        "The request body did not arrive whole within `api.body_read_timeout_secs`.",
    ),
    (
        500,
        500,
        "An internal error; the message and the log line with the operation id say more.",
    ),
];

impl ApiError {
    fn new(code: u16, status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status,
            msg: msg.into(),
        }
    }
    pub fn version_header() -> ApiError {
        Self::new(
            100,
            StatusCode::BAD_REQUEST,
            "the Ngrok-Version header must be set to 2",
        )
    }
    pub fn missing_auth() -> ApiError {
        Self::new(
            101,
            StatusCode::UNAUTHORIZED,
            "the Authorization header must be `Bearer <api key>`",
        )
    }
    pub fn bad_key() -> ApiError {
        Self::new(102, StatusCode::UNAUTHORIZED, "the API key is not valid")
    }
    pub fn too_large(limit: usize) -> ApiError {
        Self::new(
            103,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }
    pub fn bad_body(detail: impl std::fmt::Display) -> ApiError {
        Self::new(
            104,
            StatusCode::BAD_REQUEST,
            format!("the request body is invalid: {detail}"),
        )
    }
    pub fn invalid(field: &str, detail: impl std::fmt::Display) -> ApiError {
        Self::new(105, StatusCode::BAD_REQUEST, format!("invalid `{field}`: {detail}"))
    }
    pub fn not_found(kind: &str, id: &str) -> ApiError {
        Self::new(106, StatusCode::NOT_FOUND, format!("{kind} `{id}` was not found"))
    }
    pub fn no_such_path(path: &str) -> ApiError {
        Self::new(107, StatusCode::NOT_FOUND, format!("no API operation at `{path}`"))
    }
    pub fn method_not_allowed(method: &http::Method, path: &str) -> ApiError {
        Self::new(
            108,
            StatusCode::METHOD_NOT_ALLOWED,
            format!("`{path}` does not take {method}"),
        )
    }
    pub fn config_managed(kind: &str, id: &str, file: &str) -> ApiError {
        Self::new(
            109,
            StatusCode::CONFLICT,
            format!("{kind} `{id}` is declared in the config file {file}; change it there and reload (SIGHUP)"),
        )
    }
    pub fn conflict(msg: impl Into<String>) -> ApiError {
        Self::new(110, StatusCode::CONFLICT, msg)
    }
    pub fn paging(msg: impl Into<String>) -> ApiError {
        Self::new(111, StatusCode::BAD_REQUEST, msg)
    }
    pub fn address_not_allowed(ip: std::net::IpAddr) -> ApiError {
        Self::new(
            112,
            StatusCode::FORBIDDEN,
            format!("the API does not answer {ip}: it is not in api.allow_cidrs"),
        )
    }
    pub fn body_timed_out(timeout: std::time::Duration) -> ApiError {
        Self::new(
            113,
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive whole within {} s (api.body_read_timeout_secs)",
                timeout.as_secs()
            ),
        )
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        Self::new(500, StatusCode::INTERNAL_SERVER_ERROR, msg)
    }

    /// The `error_code` string, e.g. `ERR_PORTCULLIS_100`.
    pub fn error_code(&self) -> String {
        format!("ERR_PORTCULLIS_{}", self.code)
    }

    /// The JSON response.
    pub fn into_response(self, operation_id: &str) -> Response<Body> {
        let body = serde_json::json!({
            "error_code": self.error_code(),
            "status_code": self.status.as_u16(),
            "msg": self.msg,
            "details": { "operation_id": operation_id },
        });
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::{Conflict, StoreError};
        match e {
            StoreError::Conflict(
                c @ (Conflict::HostportTaken { .. }
                | Conflict::BackendInUse { .. }
                | Conflict::EmailTaken { .. }
                | Conflict::LinkTaken { .. }),
            ) => ApiError::conflict(c.to_string()),
            e => {
                tracing::error!("store error: {e}");
                ApiError::internal(format!("storage failed: {e}"))
            }
        }
    }
}

impl From<crate::derived::FollowerStopped> for ApiError {
    fn from(e: crate::derived::FollowerStopped) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl From<crate::accounts::AccountsError> for ApiError {
    fn from(e: crate::accounts::AccountsError) -> ApiError {
        use crate::accounts::AccountsError;
        match e {
            AccountsError::Store(e) => e.into(),
            AccountsError::NotFound { id } => ApiError::not_found("application user", &id),
            AccountsError::Invalid { field, message } => ApiError::invalid(field, message),
            e @ (AccountsError::EmailTaken { .. } | AccountsError::Disabled) => ApiError::conflict(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constructor_uses_a_listed_code() {
        let made = [
            ApiError::version_header(),
            ApiError::missing_auth(),
            ApiError::bad_key(),
            ApiError::too_large(1),
            ApiError::bad_body("x"),
            ApiError::invalid("f", "x"),
            ApiError::not_found("k", "i"),
            ApiError::no_such_path("/"),
            ApiError::method_not_allowed(&http::Method::GET, "/"),
            ApiError::config_managed("k", "i", "f"),
            ApiError::conflict("x"),
            ApiError::paging("x"),
            ApiError::body_timed_out(std::time::Duration::from_secs(1)),
            ApiError::internal("x"),
        ];
        for e in made {
            let listed = CODES.iter().find(|(code, _, _)| *code == e.code).expect("listed");
            assert_eq!(listed.1, e.status.as_u16(), "{e:?}");
        }
    }
}
