//! The bodies of `GET|PUT /buckets/{bucket}/props`: the properties a client sends
//! ([`PropsBody`]) and a node's answer ([`PropsAnswer`]).
//!
//! Owns the wire form: `r`, `w`, `pr` and `pw` are read as a JSON number (`3`) or a string
//! (`"3"`, `"one"`, `"quorum"`, `"all"`) and always written as a string, as nodes have
//! always shown them. Fields are declared in alphabetical order, so a body serializes
//! byte for byte as the `json!` maps it replaced.
//! Must not: judge the values (whether N can satisfy them is the node's check).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Every property a bucket has, as a `PUT` body names them.
pub const PROPS_FIELDS: &[&str] = &["r", "w", "pr", "pw", "max_siblings", "ttl"];

/// A bucket's properties; `None` leaves the node's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PropsBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Siblings a key of the bucket may hold at most.
    pub max_siblings: Option<usize>,
    #[serde(
        default,
        deserialize_with = "replica_count",
        skip_serializing_if = "Option::is_none"
    )]
    /// Primaries that must answer a read (`pr`).
    pub pr: Option<String>,
    #[serde(
        default,
        deserialize_with = "replica_count",
        skip_serializing_if = "Option::is_none"
    )]
    /// Primaries that must acknowledge a write (`pw`).
    pub pw: Option<String>,
    #[serde(
        default,
        deserialize_with = "replica_count",
        skip_serializing_if = "Option::is_none"
    )]
    /// Replicas that must answer a read (`r`).
    pub r: Option<String>,
    /// Seconds a value written to the bucket lives unless the write gives its own TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(
        default,
        deserialize_with = "replica_count",
        skip_serializing_if = "Option::is_none"
    )]
    /// Replicas that must acknowledge a write (`w`).
    pub w: Option<String>,
    /// Fields this version does not know. A node refuses a body with any
    /// ([`PropsBody::check_fields`]); a client keeps them, so that reading, changing one
    /// property and writing back does not drop a property a newer node has.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

impl PropsBody {
    /// Refuses fields other than [`PROPS_FIELDS`].
    pub fn check_fields(&self) -> Result<(), String> {
        match self.unknown.keys().next() {
            None => Ok(()),
            Some(name) => Err(format!(
                "unknown field `{name}`, expected one of {}",
                PROPS_FIELDS.join(", ")
            )),
        }
    }

    /// Sets one property from text, as `chorus bucket props --set key=value` gives it
    /// (`None` clears it). `max_siblings` and `ttl` (whole seconds) must be numbers; an
    /// unknown name is kept for the node to refuse.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{key} is a whole number, not '{v}'"))
        };
        match key {
            "r" => self.r = value.map(str::to_string),
            "w" => self.w = value.map(str::to_string),
            "pr" => self.pr = value.map(str::to_string),
            "pw" => self.pw = value.map(str::to_string),
            "max_siblings" => {
                self.max_siblings = value.map(number).transpose()?.map(|n| n as usize)
            }
            "ttl" => self.ttl = value.map(number).transpose()?,
            other => match value {
                Some(v) => {
                    self.unknown.insert(other.to_string(), v.into());
                }
                None => {
                    self.unknown.remove(other);
                }
            },
        }
        Ok(())
    }
}

/// A replica count as a body gives it: a non-negative JSON number or a string (the node
/// parses the string); `null` is no value.
fn replica_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Count;
    impl Visitor<'_> for Count {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a replica count: a number, \"one\", \"quorum\" or \"all\"")
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            u64::try_from(n)
                .map(|n| Some(n.to_string()))
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(text.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Count)
}

/// The node's defaults for what a bucket leaves unset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropsDefaults {
    /// Primaries a read needs by default.
    pub pr: usize,
    /// Primaries a write needs by default.
    pub pw: usize,
    /// Replicas a read needs by default.
    pub r: usize,
    /// Replicas a write needs by default.
    pub w: usize,
}

/// One change of a bucket's properties that lost to a concurrent one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PropsVersion {
    /// The properties this version sets.
    pub props: PropsBody,
    /// The node that wrote this version.
    pub set_by: String,
    /// The version's stamp (the highest `(stamp, set_by)` wins).
    pub stamp: u64,
}

/// A node's answer to `GET` and `PUT /buckets/{bucket}/props`: the winning properties,
/// the change that set them (`null` before any), the node defaults they leave, and any
/// concurrent change that lost (until a change is written over it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PropsAnswer {
    /// The bucket the properties belong to.
    pub bucket: String,
    /// Concurrent versions not yet written over, besides the winner.
    pub conflicts: Vec<PropsVersion>,
    /// The node's defaults the properties override.
    pub defaults: PropsDefaults,
    /// The properties in force.
    pub props: PropsBody,
    /// The node that wrote the winning version, if any.
    pub set_by: Option<String>,
    /// The winning version's stamp, if any.
    pub stamp: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PropsBody, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn counts_are_numbers_or_strings_and_are_shown_as_strings() {
        let body = parse(r#"{"w": 3, "r": "quorum", "pr": "1", "pw": null, "ttl": 5}"#).unwrap();
        assert_eq!(body.w.as_deref(), Some("3"));
        assert_eq!(body.r.as_deref(), Some("quorum"));
        assert_eq!(body.pr.as_deref(), Some("1"));
        assert_eq!((body.pw.as_deref(), body.ttl), (None, Some(5)));
        assert!(body.check_fields().is_ok());
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"pr":"1","r":"quorum","ttl":5,"w":"3"}"#
        );
        for bad in [
            r#"{"w": -1}"#,
            r#"{"w": 2.5}"#,
            r#"{"w": true}"#,
            r#"{"ttl": "5"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_kept_and_named() {
        let body = parse(r#"{"expiry": 5, "w": "all"}"#).unwrap();
        let e = body.check_fields().unwrap_err();
        assert!(e.contains("`expiry`"), "{e}");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"w":"all","expiry":5}"#
        );
    }

    #[test]
    fn set_changes_one_property_from_text() {
        let mut body = parse(r#"{"w": "all", "ttl": 60}"#).unwrap();
        body.set("r", Some("2")).unwrap();
        body.set("w", None).unwrap();
        body.set("max_siblings", Some("5")).unwrap();
        assert!(body.set("ttl", Some("1h")).is_err());
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"max_siblings":5,"r":"2","ttl":60}"#
        );
        body.set("colour", Some("red")).unwrap();
        assert!(body.check_fields().is_err());
    }

    #[test]
    fn an_answer_keeps_the_shape_nodes_have_always_sent() {
        let answer = PropsAnswer {
            bucket: "b".into(),
            conflicts: vec![],
            defaults: PropsDefaults {
                pr: 0,
                pw: 0,
                r: 2,
                w: 2,
            },
            props: PropsBody::default(),
            set_by: None,
            stamp: None,
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"bucket":"b","conflicts":[],"defaults":{"pr":0,"pw":0,"r":2,"w":2},"props":{},"set_by":null,"stamp":null}"#
        );
    }
}
