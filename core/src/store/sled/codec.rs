//! The one place records are turned into bytes and back (bincode 2, standard config).
//!
//! bincode is no longer developed (RUSTSEC-2025-0141); keeping every encode and decode here
//! means the on-disk format can be swapped by changing this file and bumping the schema.

use serde::{de::DeserializeOwned, Serialize};

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encoding failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
}

/// Encodes a value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(value, bincode::config::standard())?)
}

/// Decodes a value, refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    if used != bytes.len() {
        return Err(CodecError::Decode(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes",
            bytes.len() - used
        ))));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Edge, MatchType, Route, RouteBackend, Source};

    #[test]
    fn records_round_trip_and_trailing_bytes_are_refused() {
        let edge = Edge {
            id: "edghts_x".into(),
            description: "d".into(),
            metadata: String::new(),
            created_at: 7,
            hostports: vec!["a.example:443".into()],
            routes: vec![Route {
                id: "edghtsrt_y".into(),
                created_at: 8,
                match_type: MatchType::PathPrefix,
                path: "/".into(),
                description: String::new(),
                metadata: String::new(),
                auth: None,
                backend: Some(RouteBackend {
                    enabled: true,
                    backend_id: "bkdst_z".into(),
                }),
            }],
            source: Source::Config {
                file: "config.toml".into(),
                name: "demo".into(),
            },
        };
        let mut bytes = encode(&edge).unwrap();
        assert_eq!(decode::<Edge>(&bytes).unwrap(), edge);
        bytes.push(0);
        assert!(decode::<Edge>(&bytes).is_err());
    }
}
