//! What every resource's handlers share: the [`Answer`] they return (and its three shapes), the
//! JSON pieces of every view (timestamps, list pages with `next_page_uri`), and the two checks
//! every writer applies (labels, records owned by the config file). The request context and its
//! paging parameters are `Ctx`'s, in `mod.rs`; each resource's fields are its own module's.

use super::{ApiError, Ctx};
use crate::model::{self, Source};
use crate::store::Page;
use http::StatusCode;
use serde_json::{json, Value};

pub(super) type Answer = Result<(StatusCode, Option<Value>), ApiError>;

/// How often a read-check-write whose record changed under it (another writer came between)
/// reads again before the API gives up with a conflict.
pub(super) const WRITE_ATTEMPTS: usize = 8;

/// The answer when a record kept changing under a write.
pub(super) fn kept_changing(kind: &str, id: &str) -> ApiError {
    ApiError::conflict(format!("{kind} `{id}` kept changing during the write; try again"))
}

pub(super) fn ok(value: Value) -> Answer {
    Ok((StatusCode::OK, Some(value)))
}
pub(super) fn created(value: Value) -> Answer {
    Ok((StatusCode::CREATED, Some(value)))
}
pub(super) fn no_content() -> Answer {
    Ok((StatusCode::NO_CONTENT, None))
}

pub(super) fn timestamp(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A list response: `{"<property>": [...], "uri": ..., "next_page_uri": ...}`.
pub(super) fn list_json<T>(
    ctx: &Ctx<'_>,
    collection: &str,
    property: &str,
    page: Page<T>,
    limit: usize,
    view: impl Fn(&T) -> Value,
    id: impl Fn(&T) -> &str,
) -> Value {
    let next = match (page.has_more, page.items.last()) {
        (true, Some(last)) => Value::String(format!(
            "{}{collection}?before_id={}&limit={limit}",
            ctx.base_url,
            id(last)
        )),
        _ => Value::Null,
    };
    json!({
        property: page.items.iter().map(view).collect::<Vec<_>>(),
        "uri": format!("{}{collection}", ctx.base_url),
        "next_page_uri": next,
    })
}

pub(super) fn refuse_config_managed(kind: &str, id: &str, source: &Source) -> Result<(), ApiError> {
    match source.config_file() {
        Some(file) => Err(ApiError::config_managed(kind, id, file)),
        None => Ok(()),
    }
}

pub(super) fn labels(description: &str, metadata: &str) -> Result<(), ApiError> {
    model::validate_labels(description, metadata).map_err(|m| {
        let field = match m {
            model::ValidationError::DescriptionTooLong => "description",
            _ => "metadata",
        };
        ApiError::invalid(field, m)
    })
}
