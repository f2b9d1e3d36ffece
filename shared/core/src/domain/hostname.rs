use std::fmt;

/// A VM's hostname: 1 to 63 characters of ASCII letters, digits and `-`, starting and
/// ending with a letter or digit (one DNS label, which is what EC2 tags and
/// CloudWatch stream names carry; classic names look like `lablink-vm-prod-3`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Hostname(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("hostname is empty")]
    Empty,
    #[error("hostname is {0} characters long; at most 63 are allowed")]
    TooLong(usize),
    #[error("hostname may only contain letters, digits and '-' (found {0:?})")]
    BadCharacter(char),
    #[error("hostname must start and end with a letter or digit")]
    BadEdge,
}

impl Hostname {
    pub const MAX_LEN: usize = 63;

    pub fn parse(s: &str) -> Result<Self, HostnameError> {
        if s.is_empty() {
            return Err(HostnameError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(HostnameError::TooLong(s.chars().count()));
        }
        if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(HostnameError::BadCharacter(c));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(HostnameError::BadEdge);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Hostname {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Hostname {
    type Err = HostnameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Hostname {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classic_names_are_accepted() {
        for ok in ["lablink-vm-prod-1", "a", "VM7", &"x".repeat(63)] {
            assert_eq!(Hostname::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        assert_eq!(Hostname::parse(""), Err(HostnameError::Empty));
        assert_eq!(Hostname::parse(&"x".repeat(64)), Err(HostnameError::TooLong(64)));
        assert_eq!(Hostname::parse("vm;rm"), Err(HostnameError::BadCharacter(';')));
        assert_eq!(Hostname::parse("vm 1"), Err(HostnameError::BadCharacter(' ')));
        assert_eq!(Hostname::parse("../etc"), Err(HostnameError::BadCharacter('.')));
        assert_eq!(Hostname::parse("-vm"), Err(HostnameError::BadEdge));
        let msg = Hostname::parse("vm_1").unwrap_err().to_string();
        assert!(msg.contains("letters, digits and '-'"), "{msg}");
    }

    proptest! {
        #[test]
        fn any_accepted_name_is_a_dns_label(s in "\\PC{0,80}") {
            if let Ok(h) = Hostname::parse(&s) {
                prop_assert!(h.as_str().len() <= 63);
                prop_assert!(h.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            }
        }

        #[test]
        fn every_label_round_trips(s in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            let h = Hostname::parse(&s).unwrap();
            prop_assert_eq!(h.as_str(), s.as_str());
        }
    }
}
