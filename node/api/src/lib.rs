//! chorus-api: the client HTTP contract written once. The server (`chorus` binary's
//! `server::http`), the command-line client, `chorus bench`, the chaos workload and
//! checker, and the tests in `tests/` all take header names, paths and JSON bodies from
//! here, so the contract cannot drift between them.
//!
//! Must not: know how a node works inside (no causality, storage or replication); a
//! context is an opaque token here.

#![deny(missing_docs)]

pub mod client;
pub mod placement;
pub mod props;
pub mod status;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub use client::{kv_path, ring_path, BaseUrl, HttpClient, HttpError, Response};
pub use props::{PropsAnswer, PropsBody, PropsDefaults, PropsVersion};
pub use status::{MemberStatus, StatusBody};

/// The causal context of a key, as an opaque token: sent by a node with every answer that
/// has one, and by a client with a write that should supersede what it saw.
pub const CONTEXT_HEADER: &str = "x-chorus-context";

/// A write's time to live (`X-Chorus-TTL`, or `?ttl=`): see [`parse_ttl`].
pub const TTL_HEADER: &str = "x-chorus-ttl";
/// Sent with a read of one value that has a TTL: when it expires, in Unix milliseconds.
pub const EXPIRES_AT_HEADER: &str = "x-chorus-expires-at";

/// A TTL as a client writes it: whole seconds (`60`), or a number with a unit (`1500ms`,
/// `60s`, `5m`, `2h`, `7d`), at least 1 ms and at most `max` (the node's limit,
/// `chorus_core::object::MAX_TTL`); `none` asks for no expiry (over a bucket's default).
/// `Ok(None)` is `none`.
pub fn parse_ttl(
    text: &str,
    max: std::time::Duration,
) -> Result<Option<std::time::Duration>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_ms: u64 = match unit {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    let ms = number
        .parse::<u64>()
        .ok()
        .filter(|_| unit_ms > 0)
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(|| {
            format!("ttl: {text:?} is not a duration (seconds, or a number with ms, s, m, h or d; or none)")
        })?;
    if ms == 0 || u128::from(ms) > max.as_millis() {
        return Err(format!(
            "ttl: {text:?} is outside 1 ms ..= {} s",
            max.as_secs()
        ));
    }
    Ok(Some(std::time::Duration::from_millis(ms)))
}

/// Separates a context's causal token from the tag binding it to its key.
const BINDING_SEPARATOR: char = '.';

/// A context as a node hands it out for `bucket`/`key`: the causal token, then a tag
/// derived from the key. A context only means something for the key it was read from:
/// used on another key, its version vector (actors are shared across keys) would
/// supersede versions there the client never saw, so a node refuses it.
pub fn bind_context(token: &str, bucket: &[u8], key: &[u8]) -> String {
    format!(
        "{token}{BINDING_SEPARATOR}{}",
        binding_tag(token, bucket, key)
    )
}

/// Why a context was refused for the key it came with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The context carries no key tag at all.
    #[error(
        "the context has no key binding: send the context a read or write of this key returned"
    )]
    Unbound,
    /// The context's tag names another key.
    #[error("the context was handed out for another key: send the context a read or write of this key returned")]
    OtherKey,
}

/// The causal token of a context sent with a request on `bucket`/`key`, once its tag
/// shows it was handed out for that key.
pub fn bound_token<'a>(text: &'a str, bucket: &[u8], key: &[u8]) -> Result<&'a str, BindingError> {
    let (token, tag) = text
        .rsplit_once(BINDING_SEPARATOR)
        .ok_or(BindingError::Unbound)?;
    if tag != binding_tag(token, bucket, key) {
        return Err(BindingError::OtherKey);
    }
    Ok(token)
}

/// The causal token of a bound context, not checked against any key: for tools that only
/// read contexts (the history checker).
pub fn context_token(text: &str) -> &str {
    text.rsplit_once(BINDING_SEPARATOR)
        .map_or(text, |(token, _)| token)
}

/// 72 bits of blake3 over the key and the token, base64url: a mistake detector, not a
/// secret (a client can forge any context for any key anyway).
fn binding_tag(token: &str, bucket: &[u8], key: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"chorus context binding v1\0");
    for part in [bucket, key, token.as_bytes()] {
        hasher.update(&(part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hasher.finalize().as_bytes()[..9])
}

/// One version of a value in a JSON answer (`GET` with `Accept: application/json`, a
/// `300`, `/local/kv`). The value travels as standard base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingBody {
    /// The value's bytes (standard base64 in the JSON).
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    /// The content type it was written with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Whether this version is a tombstone; only `/local/kv` shows tombstones (and says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// When this version expires (Unix ms), for a value written with a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// The JSON answer of a read: the context and every live sibling. `/local/kv` adds
/// whether the replica holds only a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiblingsBody {
    /// The context to write with next (also in [`CONTEXT_HEADER`]).
    #[serde(default)]
    pub context: String,
    /// Every live version, in the node's deterministic order.
    #[serde(default)]
    pub siblings: Vec<SiblingBody>,
    /// `/local/kv` only: whether the replica holds nothing but tombstones.
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

/// One key in a listing page: the key itself when it is UTF-8 (every key written over
/// HTTP is), else `{"base64": ...}` (URL-safe, no padding) for a key RESP wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ListedKey {
    /// A UTF-8 key, as it is.
    Text(String),
    /// A key that is not UTF-8.
    Binary {
        /// The key's bytes, base64url without padding.
        base64: String,
    },
}

impl ListedKey {
    /// The listing form of `key`: text when it is UTF-8, else base64.
    pub fn new(key: &[u8]) -> ListedKey {
        match std::str::from_utf8(key) {
            Ok(text) => ListedKey::Text(text.to_string()),
            Err(_) => ListedKey::Binary {
                base64: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
            },
        }
    }

    /// The key's bytes (`None` for a malformed base64 form).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            ListedKey::Text(text) => Some(text.as_bytes().to_vec()),
            ListedKey::Binary { base64 } => base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(base64)
                .ok(),
        }
    }
}

/// One page of `GET /kv/{bucket}?keys=true`: live keys in listing order, the cursor of
/// the next page (`None` after the last), and the partitions of this page no replica
/// answered for (`complete` is false when there are any: their keys are missing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPageBody {
    /// The page's live keys, in listing order.
    pub keys: Vec<ListedKey>,
    /// The cursor to pass for the next page; `None` after the last page.
    pub next: Option<String>,
    /// False when some partition of this page had no replica answer.
    pub complete: bool,
    /// The partitions of this page no replica answered for.
    #[serde(default)]
    pub uncovered_partitions: Vec<u32>,
}

/// The JSON shape of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `quorum_unavailable`.
    pub error: String,
    /// A sentence for a human.
    pub message: String,
    /// For `quorum_unavailable`: replicas needed and replicas that answered in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed: Option<usize>,
    /// For `quorum_unavailable`: replicas that answered in time.
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

    #[test]
    fn ttls_parse_with_units_and_bounds_and_bad_ones_say_why() {
        use std::time::Duration;
        let max = Duration::from_secs(3650 * 86_400);
        let ok = |t| parse_ttl(t, max).unwrap();
        assert_eq!(ok("60"), Some(Duration::from_secs(60)));
        assert_eq!(ok("60s"), Some(Duration::from_secs(60)));
        assert_eq!(ok("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(ok("5m"), Some(Duration::from_secs(300)));
        assert_eq!(ok("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(ok("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(ok("none"), None);
        assert_eq!(ok("3650d"), Some(max));
        for bad in [
            "",
            "0",
            "0s",
            "-1",
            "1.5",
            "1w",
            "s",
            "99999999999999999999",
            "3651d",
        ] {
            let e = parse_ttl(bad, max).unwrap_err();
            assert!(e.starts_with("ttl:"), "{bad:?}: {e}");
        }
    }
}

#[test]
fn listed_keys_are_text_or_base64_and_round_trip() {
    assert_eq!(
        serde_json::to_string(&ListedKey::new(b"k1")).unwrap(),
        r#""k1""#
    );
    let binary = ListedKey::new(&[0xff, 0]);
    assert_eq!(
        serde_json::to_string(&binary).unwrap(),
        r#"{"base64":"_wA"}"#
    );
    let back: ListedKey = serde_json::from_str(r#"{"base64":"_wA"}"#).unwrap();
    assert_eq!(back.bytes(), Some(vec![0xff, 0]));
}

#[cfg(test)]
mod binding_tests {
    use super::*;

    #[test]
    fn a_context_is_accepted_for_its_own_key_only() {
        let bound = bind_context("AQID", b"b", b"k");
        assert_eq!(bound_token(&bound, b"b", b"k"), Ok("AQID"));
        assert_eq!(
            bound_token(&bound, b"b", b"k2"),
            Err(BindingError::OtherKey)
        );
        assert_eq!(bound_token(&bound, b"bk", b""), Err(BindingError::OtherKey));
        assert_eq!(bound_token("AQID", b"b", b"k"), Err(BindingError::Unbound));
        let tampered = bind_context("AQIE", b"b", b"k").replace("AQIE", "AQID");
        assert_eq!(
            bound_token(&tampered, b"b", b"k"),
            Err(BindingError::OtherKey)
        );
        assert_eq!(context_token(&bound), "AQID");
        assert_eq!(context_token("AQID"), "AQID");
    }
}
