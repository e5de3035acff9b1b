//! A built-in demo upstream that answers every request with what it received (method, request
//! target, path, query, headers) as JSON. It lets the shipped config show a working route, and
//! the identity headers the gateway sends, with no application installed.

use crate::pages::{full, Body};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

/// Answers one request. Each header name maps to the list of its values, one per header line
/// received and in that order, so a repeated header (two `Accept` lines, an identity header
/// sent by the client and again by the gateway) shows as separate values, never merged.
pub async fn handle(req: Request<Incoming>) -> Response<Body> {
    let mut headers = Map::new();
    for name in req.headers().keys() {
        let values = req
            .headers()
            .get_all(name)
            .iter()
            .map(|value| Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_string(), Value::Array(values));
    }
    let body = json!({
        "service": "portcullis echo upstream",
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    let mut response = Response::new(full(text + "\n"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
