//! What handlers check on the way in: bodies, names, query flags.

use std::error::Error as _;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use banger_api::ErrorCode;
use banger_api::name::validate_name;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::error::ErrorResponse;

/// An empty (or all-whitespace) body is the request's defaults.
pub(crate) fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, ErrorResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(body)
}

/// Every request body is a JSON object: serde would also take an array
/// for a struct, field by field in order, which no client means.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ErrorResponse> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ErrorResponse::new(
            ErrorCode::MalformedRequest,
            "request body is not valid: it must be a JSON object ({...})",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ErrorResponse::new(
            ErrorCode::MalformedRequest,
            format!("request body is not valid: {e}"),
        )
    })
}

pub(crate) fn vm_ref(raw: &str) -> Result<String, ErrorResponse> {
    checked_name("vm reference", raw)
}

pub(crate) fn snapshot_ref(raw: &str) -> Result<String, ErrorResponse> {
    checked_name("snapshot reference", raw)
}

pub(crate) fn asset_name(raw: &str) -> Result<String, ErrorResponse> {
    checked_name("asset name", raw)
}

fn checked_name(what: &str, raw: &str) -> Result<String, ErrorResponse> {
    validate_name(raw)
        .map_err(|e| ErrorResponse::new(ErrorCode::InvalidArgument, format!("{what}: {e}")))?;
    Ok(raw.to_owned())
}

/// A boolean query flag such as `?force=true`: `true`/`1`, `false`/`0`,
/// or bare (`?force`) for true; absent is false.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueryFlag(pub(crate) bool);

impl<'de> Deserialize<'de> for QueryFlag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        match v.as_str() {
            // A bare `?force` arrives as an empty value.
            "" | "true" | "1" => Ok(Self(true)),
            "false" | "0" => Ok(Self(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{v:?}: use true or false"
            ))),
        }
    }
}

/// `?force=`: delete even what something still uses.
#[derive(Debug, Deserialize)]
pub(crate) struct ForceQuery {
    #[serde(default)]
    pub(crate) force: QueryFlag,
}

/// `?verify=`: re-hash an asset's files.
#[derive(Debug, Deserialize)]
pub(crate) struct VerifyQuery {
    #[serde(default)]
    pub(crate) verify: QueryFlag,
}

/// `?lines=N`: the last N lines of a log (1 to 1,000,000).
#[derive(Debug, Deserialize)]
pub(crate) struct LinesQuery {
    #[serde(default)]
    pub(crate) lines: Option<usize>,
}

impl LinesQuery {
    pub(crate) fn checked(self) -> Result<Option<usize>, ErrorResponse> {
        match self.lines {
            Some(0) | None => Ok(None),
            Some(n) if n <= 1_000_000 => Ok(Some(n)),
            Some(n) => Err(ErrorResponse::new(
                ErrorCode::InvalidArgument,
                format!(
                    "query parameter lines: {n} is more than 1000000; ask for fewer, or leave it out for the whole log"
                ),
            )),
        }
    }
}

/// A query that did not deserialise; axum's message names the field
/// (`force: "maybe": use true or false`).
pub(crate) fn bad_query(rejection: QueryRejection) -> ErrorResponse {
    let detail = rejection
        .source()
        .map_or_else(|| rejection.body_text(), ToString::to_string);
    ErrorResponse::new(
        ErrorCode::InvalidArgument,
        format!("query parameter {detail}"),
    )
}
