//! Names of things outside LabLink that requests carry: an EC2 instance id (enrollment)
//! and the deployment's name (tags, hostnames, the destroy confirmation).

use std::fmt;

/// An EC2 instance id as a VM presents it at enrollment (`i-0123456789abcdef0`; the local
/// runner's are `local-…`): 1 to 64 letters, digits and dashes. Looked up, never trusted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let id = raw.trim();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("instance_id must be an instance id like i-0123456789abcdef0");
        }
        Ok(Self(id.to_owned()))
    }
}

impl AsRef<str> for InstanceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A deployment's name: 1 to 40 letters, digits and dashes, not starting or ending with
/// a dash (it goes into EC2 tags, VM hostnames and the destroy confirmation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeploymentName(String);

impl DeploymentName {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let ok = !raw.is_empty()
            && raw.len() <= 40
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err("not a deployment name (1 to 40 letters, digits and dashes)")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DeploymentName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeploymentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_short_plain_names() {
        assert_eq!(
            InstanceId::parse(" i-0123456789abcdef0 ").unwrap().as_ref(),
            "i-0123456789abcdef0"
        );
        assert!(InstanceId::parse("local-3").is_ok());
        for bad in ["", " ", "i-01;rm", "../x", &"i".repeat(65)] {
            assert!(InstanceId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deployment_names_are_dns_like() {
        for ok in ["local", "lab-2026", "A1"] {
            assert_eq!(DeploymentName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "-lab", "lab-", "lab_1", "lab 1", &"a".repeat(41)] {
            assert!(DeploymentName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
