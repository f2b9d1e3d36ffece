//! The identity the provisioner uses: its own role, or credentials an admin stored with
//! `POST /api/admin/set-aws-credentials` (validated with STS before they are kept, and
//! kept with an expiry).

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{JobStore, StoreError};

pub const CREDENTIALS_SETTING: &str = "aws-credentials";

/// Who AWS says we are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub arn: String,
    pub account: String,
}

/// Credentials an admin stored for the provisioner.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
    pub identity: Identity,
    pub stored_by: String,
    pub stored_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("identity", &self.identity)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// `base` with these static credentials instead of its own provider.
pub fn with_credentials(
    base: &SdkConfig,
    access_key_id: &str,
    secret: &str,
    token: Option<&str>,
) -> SdkConfig {
    let creds = Credentials::new(
        access_key_id,
        secret,
        token.map(str::to_owned),
        None,
        "lablink-stored",
    );
    base.to_builder()
        .credentials_provider(SharedCredentialsProvider::new(creds))
        .build()
}

/// STS `GetCallerIdentity` with `config`'s credentials: proves they work.
pub async fn caller_identity(config: &SdkConfig) -> Result<Identity, String> {
    let out = aws_sdk_sts::Client::new(config)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| aws_sdk_sts::error::DisplayErrorContext(e).to_string())?;
    Ok(Identity {
        arn: out.arn().unwrap_or_default().to_owned(),
        account: out.account().unwrap_or_default().to_owned(),
    })
}

/// The stored credentials, unless absent or expired.
pub async fn stored(
    store: &dyn JobStore,
    now: DateTime<Utc>,
) -> Result<Option<StoredCredentials>, StoreError> {
    match store.get_setting(CREDENTIALS_SETTING, now).await? {
        None => Ok(None),
        Some(v) => {
            let c: StoredCredentials = serde_json::from_value(v)
                .map_err(|e| StoreError::Corrupt(format!("stored credentials: {e}")))?;
            Ok((c.expires_at > now).then_some(c))
        }
    }
}

/// The configuration the provisioner should use, and where its identity comes from.
pub async fn provisioner_config(
    base: &SdkConfig,
    store: &dyn JobStore,
    now: DateTime<Utc>,
) -> Result<(SdkConfig, Option<StoredCredentials>), StoreError> {
    Ok(match stored(store, now).await? {
        Some(c) => (
            with_credentials(
                base,
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.as_deref(),
            ),
            Some(c),
        ),
        None => (base.clone(), None),
    })
}
