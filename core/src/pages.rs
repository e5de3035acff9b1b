//! Pages a browser sees when the gateway itself answers: readable, self-contained HTML that
//! carries the request id an operator can find in the logs.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// The body type of every response the gateway produces or relays.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A body from bytes held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An HTML error page.
pub fn error_page(status: StatusCode, title: &str, detail: &str, request_id: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
code{{background:#f3f3f3;padding:.1rem .3rem}}</style></head>\n<body><h1>{title}</h1><p>{detail}</p>\
<p><small>Portcullis · HTTP {code} · request id <code>{id}</code></small></p></body></html>\n",
        code = status.as_u16(),
        title = escape(title),
        detail = escape(detail),
        id = escape(request_id),
    );
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

pub use portcullis_plugin_sdk::escape;
