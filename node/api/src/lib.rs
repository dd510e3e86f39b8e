//! chorus-api: the client HTTP contract written once. The server (`chorus` binary's
//! `server::http`), the command-line client, `chorus bench`, the chaos workload and
//! checker, and the tests in `tests/` all take header names, paths and JSON bodies from
//! here, so the contract cannot drift between them.
//!
//! Must not: know how a node works inside (no causality, storage or replication); a
//! context is an opaque token here.

pub mod client;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub use client::{kv_path, ring_path, BaseUrl, HttpClient, HttpError, Response};

/// The causal context of a key, as an opaque token: sent by a node with every answer that
/// has one, and by a client with a write that should supersede what it saw.
pub const CONTEXT_HEADER: &str = "x-chorus-context";

/// One version of a value in a JSON answer (`GET` with `Accept: application/json`, a
/// `300`, `/local/kv`). The value travels as standard base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingBody {
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Whether this version is a tombstone; only `/local/kv` shows tombstones (and says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
}

/// The JSON answer of a read: the context and every live sibling. `/local/kv` adds
/// whether the replica holds only a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingsBody {
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub siblings: Vec<SiblingBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone: Option<bool>,
}

impl SiblingsBody {
    /// Parses a JSON read answer; a body without a `siblings` list (a 404's error body)
    /// has no values.
    pub fn parse(body: &[u8]) -> Result<SiblingsBody, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a chorus read answer: {e}"))
    }

    /// The sibling values as text (lossy UTF-8): what the bench and chaos tools write.
    pub fn text_values(&self) -> Vec<String> {
        self.siblings
            .iter()
            .map(|s| String::from_utf8_lossy(&s.value).into_owned())
            .collect()
    }
}

/// The JSON shape of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    /// For `quorum_unavailable`: replicas needed and replicas that answered in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replied: Option<usize>,
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64
            .decode(text)
            .map_err(|e| serde::de::Error::custom(format!("a sibling value is not base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_answer_round_trips_and_refuses_bad_base64() {
        let body = br#"{"context":"x","siblings":[{"value":"czEtMQ==","content_type":"a"},{"value":"czItNQ=="}]}"#;
        let parsed = SiblingsBody::parse(body).unwrap();
        assert_eq!(parsed.text_values(), vec!["s1-1", "s2-5"]);
        assert_eq!(parsed.siblings[0].content_type.as_deref(), Some("a"));
        let again = SiblingsBody::parse(&serde_json::to_vec(&parsed).unwrap()).unwrap();
        assert_eq!(again, parsed);
        assert!(SiblingsBody::parse(br#"{"siblings":[{"value":"!!"}]}"#).is_err());
        let error = br#"{"error":"not_found","message":"no such key"}"#;
        assert!(SiblingsBody::parse(error).unwrap().siblings.is_empty());
    }
}
