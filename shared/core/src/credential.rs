//! Per-VM credentials: 256 random bits handed to the VM once; only their SHA-256 is
//! stored. A fast hash is right here (unlike passwords): the secret has full entropy,
//! so there is nothing to brute-force.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A secret as handed to its holder (hex, 64 characters).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// Wrap a presented secret (from a header). Shape is not checked: a wrong secret
    /// simply fails to match.
    pub fn presented(s: &str) -> Self {
        Self(s.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What we store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison with a presented secret.
    pub fn matches(&self, presented: &Secret) -> bool {
        let other = presented.hash();
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The token of an `Authorization` header value `Bearer <token>` (scheme in any case).
/// The API and the holder both read VM credentials through this.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether a VM whose stored credential hash is `stored` (`None`: it has none, a
/// classic client's row) is the one presenting `token`.
pub fn vm_admits(stored: Option<&SecretHash>, token: &str) -> bool {
    stored.is_some_and(|h| h.matches(&Secret::presented(token)))
}

/// The admin secret's fingerprint: a session records the one it was issued under and
/// is not honoured once the password hash or the session key changed. (Not a secret:
/// a truncated SHA-256 of values that are themselves hashes or random keys.)
pub fn admin_epoch(password_hash: &str, session_key_hex: &str) -> String {
    let mut h = Sha256::new();
    h.update(password_hash.as_bytes());
    h.update([0]);
    h.update(session_key_hex.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Equality whose time depends on the lengths only, not on where the bytes differ (the
/// access code, CSRF tokens, user names).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header_value() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn a_vm_admits_only_its_own_credential() {
        let own = Secret::generate();
        let hash = own.hash();
        assert!(vm_admits(Some(&hash), own.expose()));
        assert!(!vm_admits(Some(&hash), Secret::generate().expose()));
        assert!(!vm_admits(None, own.expose()));
    }

    #[test]
    fn secrets_are_random_and_only_their_own_hash_matches() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(a.hash().matches(&a));
        assert!(!a.hash().matches(&b));
        assert!(!a.hash().matches(&Secret::presented("")));
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
