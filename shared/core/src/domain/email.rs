use std::fmt;

/// A participant's email address, trimmed and lower-cased so that one person holds one
/// seat however they type it. Checked for shape only (one `@`, a dotted domain, no
/// spaces or control characters, at most 254 characters); we never send mail to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email is longer than 254 characters")]
    TooLong,
    #[error("email must contain exactly one '@' with text on both sides, like name@example.org")]
    BadShape,
    #[error("email must not contain spaces, quotes, angle brackets or control characters")]
    BadCharacter,
    #[error("the part after '@' must be a domain like example.org")]
    BadDomain,
}

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(s: &str) -> Result<Self, EmailError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(EmailError::TooLong);
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'<>(),;:\\[]".contains(c))
        {
            return Err(EmailError::BadCharacter);
        }
        let (local, domain) = match s.split_once('@') {
            Some((l, d)) if !l.is_empty() && !d.is_empty() && !d.contains('@') => (l, d),
            _ => return Err(EmailError::BadShape),
        };
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels
                .iter()
                .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-'))
        {
            return Err(EmailError::BadDomain);
        }
        // Lower-casing can lengthen it (`İ` becomes two characters): the stored form is
        // what must fit the limit (the database's column check would otherwise refuse it
        // with a 500).
        let normalized = format!("{local}@{domain}").to_lowercase();
        if normalized.chars().count() > Self::MAX_LEN {
            return Err(EmailError::TooLong);
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn addresses_are_trimmed_and_lowercased() {
        assert_eq!(
            Email::parse("  Ada@Example.ORG ").unwrap().as_str(),
            "ada@example.org"
        );
        assert_eq!(
            Email::parse("a.b+tag@uni.edu").unwrap().as_str(),
            "a.b+tag@uni.edu"
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_a_reason() {
        assert_eq!(Email::parse(" "), Err(EmailError::Empty));
        assert_eq!(Email::parse("no-at-sign"), Err(EmailError::BadShape));
        assert_eq!(Email::parse("a@b@c.org"), Err(EmailError::BadShape));
        assert_eq!(Email::parse("@example.org"), Err(EmailError::BadShape));
        assert_eq!(Email::parse("a@localhost"), Err(EmailError::BadDomain));
        assert_eq!(Email::parse("a@.org"), Err(EmailError::BadDomain));
        assert_eq!(Email::parse("a b@c.org"), Err(EmailError::BadCharacter));
        assert_eq!(Email::parse("<script>@c.org"), Err(EmailError::BadCharacter));
        let long = format!("{}@example.org", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
        // Within the limit as typed, over it once lower-cased (`İ` → `i̇`, 2 chars): the
        // stored form is what counts.
        let grows = format!("{}@example.org", "İ".repeat(130));
        assert!(grows.chars().count() <= Email::MAX_LEN);
        assert_eq!(Email::parse(&grows), Err(EmailError::TooLong));
        assert!(Email::parse(&format!("{}@example.org", "İ".repeat(100))).is_ok());
    }

    proptest! {
        #[test]
        fn accepted_addresses_are_normalized(s in "\\PC{0,60}") {
            if let Ok(e) = Email::parse(&s) {
                prop_assert_eq!(e.as_str(), e.as_str().to_lowercase());
                prop_assert_eq!(e.as_str().matches('@').count(), 1);
                prop_assert!(!e.as_str().chars().any(char::is_whitespace));
            }
        }
    }
}
