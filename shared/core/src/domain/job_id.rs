//! Job ids: the admin's jobs (launch, destroy, export) and the forms' idempotency key.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// A job id: `YYYYMMDDTHHMMSSZ-<8 hex>`, so ids sort by creation time. The admin pages
/// put a fresh one in each form as its idempotency key: a double-submitted form names
/// the same job twice and makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    pub fn generate(now: DateTime<Utc>) -> Self {
        let mut r = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut r);
        Self(format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), hex::encode(r)))
    }

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let b = s.as_bytes();
        let ok = b.len() == 25
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'Z'
            && b[16] == b'-'
            && b[17..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err("a job id looks like 20261123T101500Z-0a1b2c3d")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<JobId> for String {
    fn from(j: JobId) -> String {
        j.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_parse_their_own_shape_only() {
        let id = JobId::generate(Utc::now());
        assert_eq!(JobId::parse(id.as_str()), Ok(id.clone()));
        for bad in [
            "",
            "x",
            "20261123T101500Z-0a1b2c3",
            "20261123T101500Z-0A1B2C3D",
            "2026112aT101500Z-0a1b2c3d",
            "../../etc/passwd",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad}");
        }
    }
}
