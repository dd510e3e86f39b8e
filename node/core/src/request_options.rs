//! The options a client request runs with: its `r`, `w`, `pr`, `pw` and, for a write, when
//! the value expires.
//!
//! Owns: the one rule every client front (HTTP, RESP) applies, so that a bucket's
//! properties mean the same through each: a request's own options win, else the bucket's
//! properties ([`BucketProps`]), else the front's defaults; and `pr` may not exceed `r`,
//! nor `pw` `w`. A bucket property that no longer resolves (N changed under it) falls back
//! to the default, as a property is validated against N only when it is set.
//!
//! Must not: parse a front's syntax (query strings, headers, RESP options: the fronts turn
//! those into [`Requested`]), or read a clock (the caller passes the time of day).
//! `max_siblings` is not here: the coordinator applies it to every write
//! (`Coordinator::put`), whichever front it came through.

use std::time::Duration;

use crate::bucket_props::BucketProps;
use crate::coordinator::Quorum;

/// What a request asked for itself; `None` leaves it to the bucket, then the defaults.
/// Counts are already resolved against N (1..=N, or 0..=N for `pr`/`pw`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub r: Option<usize>,
    pub w: Option<usize>,
    pub pr: Option<usize>,
    pub pw: Option<usize>,
    /// A write's expiry in Unix ms (`Some(None)`: explicitly none, over the bucket's `ttl`).
    pub expires_at_ms: Option<Option<u64>>,
}

/// A front's own defaults, for what neither the request nor the bucket sets (`pr` and
/// `pw` default to 0, and a value to no expiry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub r: usize,
    pub w: usize,
}

impl Defaults {
    /// Majority reads and writes: the HTTP API's defaults (`r=quorum`, `w=quorum`).
    pub fn majority(n: usize) -> Defaults {
        Defaults {
            r: n / 2 + 1,
            w: n / 2 + 1,
        }
    }
}

/// The options a request runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub r: usize,
    pub w: usize,
    pub pr: usize,
    pub pw: usize,
    /// When a value written by this request expires (Unix ms), if ever.
    pub expires_at_ms: Option<u64>,
}

/// Why a request's options cannot run: a primary count over its total.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("pr ({pr}) cannot exceed r ({r})")]
    PrOverR { pr: usize, r: usize },
    #[error("pw ({pw}) cannot exceed w ({w})")]
    PwOverW { pw: usize, w: usize },
}

/// The options a request runs with, for replication factor `n`, its bucket's `props`
/// and the front's `defaults`, at `now_ms` (the time of day a bucket `ttl` counts from).
pub fn resolve(
    n: usize,
    defaults: Defaults,
    props: Option<&BucketProps>,
    requested: &Requested,
    now_ms: u64,
) -> Result<Effective, OptionsError> {
    let empty = BucketProps::default();
    let props = props.unwrap_or(&empty);
    let prop = |value: &Option<String>, default: usize, allow_zero| {
        value
            .as_deref()
            .and_then(|text| Quorum::parse(text).ok()?.resolve(n, allow_zero).ok())
            .unwrap_or(default)
    };
    let bucket_expiry = props
        .ttl
        .map(|ttl| now_ms.saturating_add(Duration::from_secs(ttl).as_millis() as u64));
    let effective = Effective {
        r: requested
            .r
            .unwrap_or_else(|| prop(&props.r, defaults.r, false)),
        w: requested
            .w
            .unwrap_or_else(|| prop(&props.w, defaults.w, false)),
        pr: requested.pr.unwrap_or_else(|| prop(&props.pr, 0, true)),
        pw: requested.pw.unwrap_or_else(|| prop(&props.pw, 0, true)),
        expires_at_ms: requested.expires_at_ms.unwrap_or(bucket_expiry),
    };
    if effective.pr > effective.r {
        return Err(OptionsError::PrOverR {
            pr: effective.pr,
            r: effective.r,
        });
    }
    if effective.pw > effective.w {
        return Err(OptionsError::PwOverW {
            pw: effective.pw,
            w: effective.w,
        });
    }
    Ok(effective)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn props() -> BucketProps {
        BucketProps {
            r: Some("all".into()),
            w: Some("one".into()),
            pw: Some("1".into()),
            ttl: Some(5),
            ..Default::default()
        }
    }

    #[test]
    fn without_props_the_defaults_apply() {
        let e = resolve(3, Defaults::majority(3), None, &Requested::default(), NOW).unwrap();
        assert_eq!((e.r, e.w, e.pr, e.pw, e.expires_at_ms), (2, 2, 0, 0, None));
        let front = Defaults { r: 1, w: 3 };
        let e = resolve(3, front, None, &Requested::default(), NOW).unwrap();
        assert_eq!((e.r, e.w), (1, 3));
    }

    #[test]
    fn the_bucket_props_replace_the_defaults() {
        let props = props();
        let e = resolve(
            3,
            Defaults { r: 1, w: 3 },
            Some(&props),
            &Requested::default(),
            NOW,
        );
        let e = e.unwrap();
        assert_eq!((e.r, e.w, e.pr, e.pw), (3, 1, 0, 1));
        assert_eq!(e.expires_at_ms, Some(NOW + 5_000));
    }

    #[test]
    fn the_requests_own_options_win_over_the_bucket() {
        let props = props();
        let requested = Requested {
            r: Some(1),
            w: Some(2),
            pr: Some(1),
            pw: None,
            expires_at_ms: Some(Some(NOW + 60_000)),
        };
        let e = resolve(3, Defaults::majority(3), Some(&props), &requested, NOW).unwrap();
        assert_eq!((e.r, e.w, e.pr, e.pw), (1, 2, 1, 1));
        assert_eq!(e.expires_at_ms, Some(NOW + 60_000));
        // `none` over the bucket's ttl: no expiry at all.
        let never = Requested {
            expires_at_ms: Some(None),
            ..Default::default()
        };
        let e = resolve(3, Defaults::majority(3), Some(&props), &never, NOW).unwrap();
        assert_eq!(e.expires_at_ms, None);
    }

    #[test]
    fn primaries_over_the_total_are_refused_wherever_they_come_from() {
        let props = BucketProps {
            pr: Some("2".into()),
            ..Default::default()
        };
        let r1 = Requested {
            r: Some(1),
            ..Default::default()
        };
        let err = resolve(3, Defaults::majority(3), Some(&props), &r1, NOW).unwrap_err();
        assert_eq!(err.to_string(), "pr (2) cannot exceed r (1)");
        let pw = Requested {
            w: Some(1),
            pw: Some(2),
            ..Default::default()
        };
        assert!(resolve(3, Defaults::majority(3), None, &pw, NOW).is_err());
    }

    #[test]
    fn a_bucket_value_that_no_longer_resolves_falls_back_to_the_default() {
        let props = BucketProps {
            w: Some("3".into()),
            ..Default::default()
        };
        let e = resolve(
            1,
            Defaults::majority(1),
            Some(&props),
            &Requested::default(),
            NOW,
        );
        assert_eq!(e.unwrap().w, 1);
    }
}
