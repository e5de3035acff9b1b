//! A built-in demo upstream that answers every request with what it received (method, path,
//! headers) as JSON. It lets the shipped config show a working route, and the identity headers
//! the gateway sends, with no application installed.

use crate::pages::{full, Body};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

/// Answers one request.
pub async fn handle(req: Request<Incoming>) -> Response<Body> {
    let mut headers = Map::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    let body = json!({
        "service": "portcullis echo upstream",
        "method": req.method().as_str(),
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
