//! What every route's Lambda builds once at start-up and borrows per request.

use lablink_core::config::{ConfigError, Settings};
use lablink_core::credential::SecretHash;
use lablink_core::db::{Db, DbConfig};

use crate::auth::SessionKey;

/// Settings of the HTTP functions (all read from the environment).
#[derive(Clone)]
pub struct AppConfig {
    pub db: DbConfig,
    /// `LABLINK_LEGACY_VM_AUTH`: accept the classic unauthenticated VM calls so an
    /// unmodified classic client image works. Off by default; logged loudly when on.
    pub legacy_vm_auth: bool,
    /// `LABLINK_SESSION_KEY`: key (hex, at least 32 bytes) that signs admin session
    /// cookies. Without it no admin session is accepted.
    pub session_key: Option<SessionKey>,
    /// `LABLINK_LOG_FORWARDER_TOKEN_SHA256`: SHA-256 (hex) of the token log forwarders
    /// present to `POST /api/vm-logs`.
    pub forwarder_token_hash: Option<SecretHash>,
}

impl AppConfig {
    pub fn read(s: &mut Settings) -> Option<Self> {
        let db = DbConfig::read(s);
        let legacy_vm_auth = s.flag("LABLINK_LEGACY_VM_AUTH", false);
        let session_key = s.optional_with(
            "LABLINK_SESSION_KEY",
            "at least 64 hex characters (32 bytes)",
            SessionKey::from_hex,
        );
        let forwarder_token_hash = s.optional_with(
            "LABLINK_LOG_FORWARDER_TOKEN_SHA256",
            "64 hex characters (a SHA-256)",
            |v| {
                hex::decode(v)
                    .ok()
                    .and_then(|b| SecretHash::from_slice(&b))
                    .ok_or("not a hex SHA-256")
            },
        );
        Some(Self {
            db: db?,
            legacy_vm_auth,
            session_key,
            forwarder_token_hash,
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let mut s = Settings::from_env();
        let cfg = Self::read(&mut s);
        s.finish(|| cfg.expect("settings without errors build"))
    }
}

/// Built once per process: configuration and the lazily connected database.
pub struct AppState {
    pub config: AppConfig,
    pub db: Db,
}

impl AppState {
    /// No network work: the database connects on the first query.
    pub fn new(config: AppConfig) -> Self {
        if config.legacy_vm_auth {
            tracing::warn!(
                "LEGACY VM AUTH IS ON: VM routes accept calls without a credential; any caller can act \
                 as any VM. Use only to run unmodified classic client images."
            );
        }
        Self {
            db: Db::new(config.db.clone()),
            config,
        }
    }
}
