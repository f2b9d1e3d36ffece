//! What every route's Lambda builds once at start-up and borrows per request. Nothing
//! here touches the network at start-up: the database, the AWS clients and the admin
//! secret are made on first use and kept for the life of the process.

#[cfg(feature = "admin")]
use std::sync::Arc;

use lablink_core::config::{ConfigError, Settings};
use lablink_core::credential::SecretHash;
use lablink_core::domain::DeploymentName;
use lablink_db::{Db, DbConfig};
#[cfg(feature = "export")]
use lablink_export::ExportStorage;
#[cfg(feature = "jobs")]
use lablink_ops::JobStore;
#[cfg(feature = "admin")]
use tokio::sync::OnceCell;

#[cfg(feature = "admin")]
use crate::ApiError;
#[cfg(feature = "admin")]
use crate::auth::SessionKey;

#[cfg(feature = "admin")]
/// Where the admin's user, password hash and session key come from.
#[derive(Clone)]
pub enum AdminSource {
    /// `LABLINK_ADMIN_USER`, `LABLINK_ADMIN_PASSWORD_HASH` (argon2 PHC string) and
    /// `LABLINK_SESSION_KEY` (local runs, tests).
    Env(Arc<AdminAuth>),
    /// `LABLINK_ADMIN_SECRET_ID`: a Secrets Manager secret holding
    /// `{"user","password_hash","session_key"}`, read on first use.
    SecretsManager(String),
    /// No admin configured: admin routes answer 503.
    None,
}

#[cfg(feature = "admin")]
/// The admin's identity and the key that signs sessions.
pub struct AdminAuth {
    pub user: String,
    /// argon2 PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
    pub session_key: SessionKey,
}

#[cfg(feature = "admin")]
impl AdminAuth {
    /// A fingerprint of the password hash and the session key: a session records the
    /// one it was issued under, and is not honoured once either changed.
    pub fn epoch(&self) -> String {
        lablink_core::credential::admin_epoch(&self.password_hash, &self.session_key.to_hex())
    }

    pub fn new(user: &str, password_hash: &str, session_key: SessionKey) -> Result<Self, String> {
        if user.is_empty() || user.len() > 64 {
            return Err("the admin user name must be 1 to 64 characters".into());
        }
        argon2::PasswordHash::new(password_hash).map_err(|e| format!("not an argon2 PHC string: {e}"))?;
        Ok(Self {
            user: user.to_owned(),
            password_hash: password_hash.to_owned(),
            session_key,
        })
    }
}

/// Settings of the HTTP functions (all read from the environment).
#[derive(Clone)]
pub struct AppConfig {
    pub db: DbConfig,
    /// `LABLINK_LEGACY_VM_AUTH`: accept the classic unauthenticated VM calls so an
    /// unmodified classic client image works. Off by default; logged loudly when on.
    pub legacy_vm_auth: bool,
    /// `LABLINK_PAUSED`: the deployment is paused between workshops (no database proxy,
    /// no holder): every route answers 503 without touching anything
    /// ([`crate::routes::Route::handle`]).
    pub paused: bool,
    #[cfg(feature = "admin")]
    pub admin: AdminSource,
    /// `LABLINK_LOG_FORWARDER_TOKEN_SHA256`: SHA-256 (hex) of the token log forwarders
    /// present to `POST /api/vm-logs`.
    pub forwarder_token_hash: Option<SecretHash>,
    /// `LABLINK_JOBS_TABLE`: the DynamoDB jobs table (unset: the local runner supplies
    /// an embedded store, or job routes answer 503).
    pub jobs_table: Option<String>,
    /// `LABLINK_MAX_VMS`: the most VMs the fleet may hold (default 50).
    pub max_vms: u32,
    /// `LABLINK_DEPLOYMENT`: this deployment's name (tags, hostnames, the destroy
    /// confirmation). Default `local`.
    pub deployment: DeploymentName,
    /// `LABLINK_EXPORT_BUCKET`: the data-export bucket (unset: the local runner supplies
    /// a folder, or export downloads answer 503).
    pub export_bucket: Option<String>,
    /// The deployment's VM settings (`LABLINK_INSTANCE_TYPE`, `LABLINK_CLIENT_IMAGE`, ...;
    /// the provisioner's): the launch form shows them.
    pub vm: lablink_core::vm_settings::VmSettings,
    /// The workshop gate's defaults (`LABLINK_WORKSHOP_ACCESS_CODE`,
    /// `LABLINK_WORKSHOP_PARTICIPANTS`, `LABLINK_SEATS_PER_ADDRESS`,
    /// `LABLINK_SEATS_WINDOW_MINUTES`) until the admin sets them on the dashboard.
    pub gate: lablink_core::workshop::Gate,
    /// `LABLINK_FLEET_HOURS` (1..168, default 12): a launch's fleet is destroyed this
    /// long after it, unless the launch or the admin says otherwise.
    pub fleet_hours: u32,
    /// `LABLINK_FLEET_NOTICE_SECONDS` (default 900): how long before the fleet's end the
    /// participants' pages announce it.
    pub fleet_notice: chrono::Duration,
    /// `LABLINK_ADMIN_ALLOWED_CIDRS`: the networks the admin console and the admin API
    /// answer (403 elsewhere). Unset: everywhere.
    #[cfg(feature = "admin")]
    pub admin_cidrs: Option<lablink_core::cidr::CidrList>,
    /// `LABLINK_ADMIN_SECRET_TTL_SECONDS` (default 60): how long a process keeps the
    /// admin secret before reading it again, so a rotated password or session key takes
    /// effect on every warm function within that time.
    #[cfg(feature = "admin")]
    pub admin_secret_ttl: std::time::Duration,
}

impl AppConfig {
    pub fn read(s: &mut Settings) -> Option<Self> {
        let db = DbConfig::read(s);
        let legacy_vm_auth = s.flag("LABLINK_LEGACY_VM_AUTH", false);
        let paused = s.flag("LABLINK_PAUSED", false);
        #[cfg(feature = "admin")]
        let admin = read_admin(s);
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
        let jobs_table = s
            .raw("LABLINK_JOBS_TABLE")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let max_vms = s.ranged("LABLINK_MAX_VMS", 50u32, 1, 10_000);
        let deployment = s
            .optional_with(
                "LABLINK_DEPLOYMENT",
                "1 to 40 letters, digits and dashes",
                DeploymentName::parse,
            )
            .unwrap_or_else(|| DeploymentName::parse("local").expect("a valid name"));
        let vm = lablink_core::vm_settings::VmSettings::read(s);
        let gate = lablink_core::workshop::Gate::read(s);
        let fleet_hours = s.ranged("LABLINK_FLEET_HOURS", 12u32, 1, 168);
        let fleet_notice =
            chrono::Duration::seconds(s.ranged("LABLINK_FLEET_NOTICE_SECONDS", 900i64, 1, 86_400));
        #[cfg(feature = "admin")]
        let admin_cidrs = s.optional_with(
            "LABLINK_ADMIN_ALLOWED_CIDRS",
            "comma-separated address ranges, e.g. 192.0.2.0/24,2001:db8::/32 (0.0.0.0/0,::/0: everywhere)",
            lablink_core::cidr::CidrList::parse,
        );
        #[cfg(feature = "admin")]
        let admin_secret_ttl =
            std::time::Duration::from_secs(s.ranged("LABLINK_ADMIN_SECRET_TTL_SECONDS", 60u64, 0, 3600));
        Some(Self {
            gate,
            fleet_hours,
            fleet_notice,
            #[cfg(feature = "admin")]
            admin_cidrs,
            #[cfg(feature = "admin")]
            admin_secret_ttl,
            vm: vm?,
            db: db?,
            legacy_vm_auth,
            paused,
            #[cfg(feature = "admin")]
            admin,
            forwarder_token_hash,
            jobs_table,
            max_vms,
            deployment,
            export_bucket: s
                .raw("LABLINK_EXPORT_BUCKET")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let mut s = Settings::from_env();
        let cfg = Self::read(&mut s);
        s.finish(|| cfg.expect("settings without errors build"))
    }
}

/// Built once per process: configuration and the lazily made connections.
pub struct AppState {
    pub config: AppConfig,
    pub db: Db,
    /// The admin secret and when it was read (re-read after `admin_secret_ttl`).
    #[cfg(feature = "admin")]
    admin: tokio::sync::Mutex<Option<(std::time::Instant, Arc<AdminAuth>)>>,
    #[cfg(feature = "admin")]
    aws: OnceCell<aws_config::SdkConfig>,
    #[cfg(feature = "jobs")]
    jobs: OnceCell<Arc<dyn JobStore>>,
    #[cfg(feature = "export")]
    exports: OnceCell<Arc<dyn ExportStorage>>,
    /// Set by the local runner: what launches VMs when there is no AWS (shown on /admin).
    pub local_compute: Option<String>,
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
            #[cfg(feature = "admin")]
            admin: tokio::sync::Mutex::new(None),
            #[cfg(feature = "admin")]
            aws: OnceCell::new(),
            #[cfg(feature = "jobs")]
            jobs: OnceCell::new(),
            #[cfg(feature = "export")]
            exports: OnceCell::new(),
            local_compute: None,
        }
    }

    #[cfg(feature = "jobs")]
    /// Use this job store instead of DynamoDB (the local runner's embedded store), and
    /// say what computes.
    pub fn with_local_jobs(self, store: Arc<dyn JobStore>, compute: &str) -> Self {
        let jobs = OnceCell::new();
        let _ = jobs.set(store);
        Self {
            jobs,
            local_compute: Some(compute.to_owned()),
            ..self
        }
    }

    #[cfg(feature = "export")]
    /// Keep data exports here instead of the export bucket (the local runner's folder).
    pub fn with_export_storage(self, storage: Arc<dyn ExportStorage>) -> Self {
        let exports = OnceCell::new();
        let _ = exports.set(storage);
        Self { exports, ..self }
    }

    #[cfg(feature = "export")]
    /// Where data exports are, made on first use.
    pub async fn exports(&self) -> Result<&Arc<dyn ExportStorage>, ApiError> {
        self.exports
            .get_or_try_init(|| async {
                let bucket = self.config.export_bucket.as_deref().ok_or_else(|| {
                    ApiError::Unavailable("data export is not configured (LABLINK_EXPORT_BUCKET)".into())
                })?;
                Ok::<Arc<dyn ExportStorage>, ApiError>(Arc::new(lablink_export::S3Storage::new(
                    self.aws().await,
                    bucket,
                )))
            })
            .await
    }

    #[cfg(feature = "admin")]
    /// Use this AWS configuration instead of the environment's (tests against moto).
    pub fn with_aws(self, sdk: aws_config::SdkConfig) -> Self {
        let aws = OnceCell::new();
        let _ = aws.set(sdk);
        Self { aws, ..self }
    }

    #[cfg(feature = "admin")]
    /// The AWS configuration (region, credentials chain; `AWS_ENDPOINT_URL` honoured).
    pub async fn aws(&self) -> &aws_config::SdkConfig {
        self.aws
            .get_or_init(|| aws_config::load_defaults(aws_config::BehaviorVersion::latest()))
            .await
    }

    #[cfg(feature = "jobs")]
    /// The job store, made on first use.
    pub async fn jobs(&self) -> Result<&Arc<dyn JobStore>, ApiError> {
        self.jobs
            .get_or_try_init(|| async {
                let table = self.config.jobs_table.clone().ok_or_else(|| {
                    ApiError::Unavailable("no job store is configured (LABLINK_JOBS_TABLE)".into())
                })?;
                let client = aws_sdk_dynamodb_client(self.aws().await);
                Ok::<Arc<dyn JobStore>, ApiError>(Arc::new(lablink_ops::dynamo::DynamoJobStore::new(
                    client, table,
                )))
            })
            .await
    }

    #[cfg(feature = "admin")]
    /// The admin's identity and session key. From Secrets Manager it is read on first
    /// use and again once it is older than `admin_secret_ttl`, so a rotated password or
    /// session key reaches every warm function within that time. If a re-read fails, the
    /// copy in hand is used (logged) rather than locking the admin out.
    pub async fn admin(&self) -> Result<Arc<AdminAuth>, ApiError> {
        let id = match &self.config.admin {
            AdminSource::Env(a) => return Ok(Arc::clone(a)),
            AdminSource::None => {
                return Err(ApiError::Unavailable(
                    "no admin is configured for this deployment".into(),
                ));
            }
            AdminSource::SecretsManager(id) => id,
        };
        let mut slot = self.admin.lock().await;
        if let Some((read_at, a)) = slot.as_ref()
            && read_at.elapsed() < self.config.admin_secret_ttl
        {
            return Ok(Arc::clone(a));
        }
        match read_admin_secret(self.aws().await, id).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *slot = Some((std::time::Instant::now(), Arc::clone(&fresh)));
                Ok(fresh)
            }
            Err(e) => match slot.take() {
                Some((_, old)) => {
                    tracing::error!(error = %e, "re-reading the admin secret failed; using the copy in hand");
                    // Tried again after another TTL, not on every request meanwhile.
                    *slot = Some((std::time::Instant::now(), Arc::clone(&old)));
                    Ok(old)
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(feature = "admin")]
async fn read_admin_secret(sdk: &aws_config::SdkConfig, id: &str) -> Result<AdminAuth, ApiError> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let out = client.get_secret_value().secret_id(id).send().await.map_err(|e| {
        tracing::error!(error = %aws_sdk_secretsmanager::error::DisplayErrorContext(&e), "reading the admin secret");
        ApiError::Unavailable("the admin secret cannot be read".into())
    })?;
    let v: serde_json::Value = serde_json::from_str(out.secret_string().unwrap_or_default())
        .map_err(|_| ApiError::Unavailable("the admin secret is not JSON".into()))?;
    let key = SessionKey::from_hex(v["session_key"].as_str().unwrap_or_default())
        .map_err(|e| ApiError::Unavailable(format!("the admin secret's session_key: {e}")))?;
    AdminAuth::new(
        v["user"].as_str().unwrap_or_default(),
        v["password_hash"].as_str().unwrap_or_default(),
        key,
    )
    .map_err(|e| ApiError::Unavailable(format!("the admin secret: {e}")))
}

#[cfg(feature = "jobs")]
fn aws_sdk_dynamodb_client(cfg: &aws_config::SdkConfig) -> lablink_ops::dynamo::Client {
    lablink_ops::dynamo::Client::new(cfg)
}

/// The admin's source: a Secrets Manager secret, or user, hash and key from the
/// environment, or none.
#[cfg(feature = "admin")]
fn read_admin(s: &mut Settings) -> AdminSource {
    let session_key = s.optional_with(
        "LABLINK_SESSION_KEY",
        "at least 64 hex characters (32 bytes)",
        SessionKey::from_hex,
    );
    let user = s.raw("LABLINK_ADMIN_USER").map(str::to_owned);
    let hash = s.raw("LABLINK_ADMIN_PASSWORD_HASH").map(str::to_owned);
    let secret_id = s
        .raw("LABLINK_ADMIN_SECRET_ID")
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    match (user, hash, session_key, secret_id) {
        (_, _, _, Some(id)) => AdminSource::SecretsManager(id),
        (Some(u), Some(h), Some(k), None) => match AdminAuth::new(&u, &h, k) {
            Ok(a) => AdminSource::Env(Arc::new(a)),
            Err(e) => {
                s.report(
                    "LABLINK_ADMIN_PASSWORD_HASH",
                    e,
                    "the output of `lablink-local hash-password`",
                );
                AdminSource::None
            }
        },
        (None, None, _, None) => AdminSource::None,
        _ => {
            s.report(
                "LABLINK_ADMIN_USER",
                "LABLINK_ADMIN_USER, LABLINK_ADMIN_PASSWORD_HASH and LABLINK_SESSION_KEY go together",
                "all three, or LABLINK_ADMIN_SECRET_ID",
            );
            AdminSource::None
        }
    }
}
