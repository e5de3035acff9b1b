//! Reading the body of a request the gateway handles itself (a plugin endpoint under
//! `/_portcullis/auth/`): bounded in size and in time, refused with a page that closes the
//! connection.

use crate::pages::{error_page, Body};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// Largest body of a request to a plugin's endpoints.
const MAX_PLUGIN_BODY: usize = 1024 * 1024;

/// Why the body of a request the gateway reads itself was refused.
pub enum BodyRefusal {
    TooLarge,
    Malformed,
    TimedOut,
}

impl BodyRefusal {
    /// The page for the client; the connection closes after it (the rest of the body is not
    /// waited for).
    pub fn page(self, request_id: &str) -> Response<Body> {
        let (status, title, detail) = match self {
            BodyRefusal::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request too large",
                "The sign-in request was larger than the gateway accepts.",
            ),
            BodyRefusal::Malformed => (
                StatusCode::BAD_REQUEST,
                "Bad request",
                "The sign-in request's body was malformed or incomplete.",
            ),
            BodyRefusal::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "Request timed out",
                "The sign-in request's body did not arrive in time.",
            ),
        };
        let mut page = error_page(status, title, detail, request_id);
        page.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        page
    }
}

/// Reads a body the gateway handles itself: at most [`MAX_PLUGIN_BODY`] bytes, all of them
/// within `timeout` (a client that announces a body and never sends it holds nothing open).
pub async fn read_body(body: Incoming, timeout: std::time::Duration) -> Result<Bytes, BodyRefusal> {
    use hyper::body::Body as _;
    // A body announced larger than the cap is refused before any of it is waited for.
    if body.size_hint().lower() > MAX_PLUGIN_BODY as u64 {
        return Err(BodyRefusal::TooLarge);
    }
    match tokio::time::timeout(timeout, Limited::new(body, MAX_PLUGIN_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRefusal::TooLarge),
        Ok(Err(_)) => Err(BodyRefusal::Malformed),
        Err(_) => Err(BodyRefusal::TimedOut),
    }
}
