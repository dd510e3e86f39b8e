//! A per-request replica count (`r`, `w`, `pr`, `pw`) as a client or a bucket's
//! properties give it, and what it means for a replication factor.
//!
//! Must not: decide which replicas answer (the coordinator does).

/// A per-request replica count as the client gave it: `one`, `quorum`, `all` or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quorum {
    One,
    Majority,
    All,
    Exactly(usize),
}

impl Quorum {
    pub fn parse(text: &str) -> Result<Quorum, String> {
        match text {
            "one" => Ok(Quorum::One),
            "quorum" => Ok(Quorum::Majority),
            "all" => Ok(Quorum::All),
            other => match other.parse::<usize>() {
                Ok(n) => Ok(Quorum::Exactly(n)),
                Err(_) => Err(format!(
                    "'{other}' is not a replica count: use a number, one, quorum or all"
                )),
            },
        }
    }

    /// The number of replicas for a replication factor `n`; `allow_zero` for pr/pw.
    pub fn resolve(self, n: usize, allow_zero: bool) -> Result<usize, String> {
        let count = match self {
            Quorum::One => 1,
            Quorum::Majority => n / 2 + 1,
            Quorum::All => n,
            Quorum::Exactly(k) => k,
        };
        if count > n {
            return Err(format!(
                "{count} replicas asked for, but the replication factor is {n}"
            ));
        }
        if count == 0 && !allow_zero {
            return Err("at least 1 replica must answer".into());
        }
        Ok(count)
    }
}
