use std::str::FromStr;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use lablink_core::config::Settings;

/// The connection future of one client; whoever connects with [`DbConfig::connect_raw`]
/// must poll it (the holder does, to read notifications).
pub type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(String),
    #[error("cannot make an RDS IAM auth token: {0}")]
    Token(String),
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("database setup refused: {0}")]
    Setup(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl DbError {
    /// True when the error is a unique-constraint violation on `constraint`.
    pub fn is_unique_violation(&self, constraint: &str) -> bool {
        match self {
            DbError::Query(e) => e.as_db_error().is_some_and(|d| {
                d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    && d.constraint() == Some(constraint)
            }),
            _ => false,
        }
    }
}

/// How the password is obtained.
#[derive(Clone)]
pub enum DbAuth {
    /// From the URL or `PGPASSWORD` (or none: trust/peer auth).
    Password,
    /// A fresh RDS IAM auth token per connection (valid 15 minutes, used only to log in),
    /// signed with the environment's credentials unless a process gave its own source
    /// ([`DbConfig::with_iam_credentials`]).
    IamToken {
        region: String,
        #[cfg(feature = "rds-iam")]
        credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    },
}

/// Where and how to connect.
#[derive(Clone)]
pub struct DbConfig {
    pg: tokio_postgres::Config,
    auth: DbAuth,
    /// Extra trusted CA certificates (PEM), e.g. RDS's global bundle for direct
    /// connections to an RDS instance.
    root_cert: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("DbConfig")
            .field("host", &self.pg.get_hosts())
            .field("port", &self.pg.get_ports())
            .field("user", &self.pg.get_user())
            .field("dbname", &self.pg.get_dbname())
            .field("iam", &matches!(self.auth, DbAuth::IamToken { .. }))
            .finish()
    }
}

impl DbConfig {
    /// `DATABASE_URL`, or `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE` with `PGPASSWORD` or
    /// `LABLINK_DB_IAM_AUTH=true` (then `AWS_REGION` is required and TLS is required).
    /// `PGSSLMODE` is `disable`, `prefer` (default) or `require`.
    pub fn read(s: &mut Settings) -> Option<Self> {
        if s.raw("DATABASE_URL").is_some() {
            let pg = s.required_with("DATABASE_URL", "a postgres:// URL", |v| {
                tokio_postgres::Config::from_str(v).map_err(|e| e.to_string())
            })?;
            let root_cert = read_root_cert(s);
            return Some(Self {
                pg,
                auth: DbAuth::Password,
                root_cert,
            });
        }
        let iam = s.flag("LABLINK_DB_IAM_AUTH", false);
        let host: Option<String> = s.required("PGHOST", "the database host name (or set DATABASE_URL)");
        let port = s.ranged::<u16>("PGPORT", 5432, 1, 65535);
        let user: Option<String> = s.required("PGUSER", "the database user name");
        let dbname: String = s
            .optional("PGDATABASE", "a database name")
            .unwrap_or_else(|| "lablink".into());
        let ssl_default = if iam { SslMode::Require } else { SslMode::Prefer };
        let ssl = s
            .optional_with("PGSSLMODE", "disable, prefer or require", |v| match v {
                "disable" => Ok(SslMode::Disable),
                "prefer" => Ok(SslMode::Prefer),
                "require" | "verify-full" | "verify-ca" => Ok(SslMode::Require),
                _ => Err("unknown mode"),
            })
            .unwrap_or(ssl_default);
        if iam && ssl == SslMode::Disable {
            s.report(
                "PGSSLMODE",
                "is disable",
                "require when LABLINK_DB_IAM_AUTH is on (RDS refuses IAM logins without TLS)",
            );
        }
        let region: Option<String> = if iam {
            s.required("AWS_REGION", "the AWS region of the RDS instance")
        } else {
            None
        };
        if iam && !cfg!(feature = "rds-iam") {
            s.report(
                "LABLINK_DB_IAM_AUTH",
                "is on, but this program was built without RDS IAM support",
                "a build with lablink-db's `rds-iam` feature, or a password",
            );
        }
        let root_cert = read_root_cert(s);
        let auth = if iam {
            DbAuth::IamToken {
                region: region?,
                #[cfg(feature = "rds-iam")]
                credentials: None,
            }
        } else {
            DbAuth::Password
        };
        let mut pg = tokio_postgres::Config::new();
        pg.host(&host?)
            .port(port)
            .user(&user?)
            .dbname(&dbname)
            .ssl_mode(ssl);
        if let (DbAuth::Password, Some(pw)) = (&auth, s.raw("PGPASSWORD")) {
            pg.password(pw);
        }
        pg.application_name("lablink");
        Some(Self { pg, auth, root_cert })
    }

    pub fn from_url(url: &str) -> Result<Self, DbError> {
        let pg = tokio_postgres::Config::from_str(url).map_err(|e| DbError::Connect(e.to_string()))?;
        Ok(Self {
            pg,
            auth: DbAuth::Password,
            root_cert: None,
        })
    }

    /// Name this process's sessions in `pg_stat_activity` (unless the URL named them).
    /// Sign IAM auth tokens with credentials from `provider` instead of the environment
    /// (the holder passes AWS's default chain: on Fargate its role comes from ECS's
    /// credentials endpoint). No effect without IAM auth.
    #[cfg(feature = "rds-iam")]
    pub fn with_iam_credentials(
        mut self,
        provider: aws_credential_types::provider::SharedCredentialsProvider,
    ) -> Self {
        if let DbAuth::IamToken { credentials, .. } = &mut self.auth {
            *credentials = Some(provider);
        }
        self
    }

    /// Whether this configuration logs in with IAM auth tokens.
    pub fn uses_iam(&self) -> bool {
        matches!(self.auth, DbAuth::IamToken { .. })
    }

    pub fn with_application_name(mut self, name: &str) -> Self {
        if self.pg.get_application_name().is_none() {
            self.pg.application_name(name);
        }
        self
    }

    pub fn dbname(&self) -> Option<&str> {
        self.pg.get_dbname()
    }

    /// Connect and hand back the connection future for the caller to poll.
    pub async fn connect_raw(&self) -> Result<(tokio_postgres::Client, PgConnection), DbError> {
        let mut pg = self.pg.clone();
        if let DbAuth::IamToken { .. } = &self.auth {
            pg.password(iam_token(&pg, &self.auth).await?);
        }
        pg.connect_timeout(std::time::Duration::from_secs(10));
        let extra = self
            .root_cert
            .as_deref()
            .filter(|_| pg.get_ssl_mode() != SslMode::Disable);
        pg.connect(tls(extra)?)
            .await
            .map_err(|e| DbError::Connect(e.to_string()))
    }

    /// Connect, driving the connection on its own task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let (client, conn) = self.connect_raw().await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "postgres connection closed");
            }
        });
        Ok(client)
    }
}

fn read_root_cert(s: &mut Settings) -> Option<std::path::PathBuf> {
    s.optional_with(
        "PGSSLROOTCERT",
        "the path of a readable PEM file of CA certificates",
        |v| {
            let p = std::path::PathBuf::from(v);
            if p.is_file() { Ok(p) } else { Err("no such file") }
        },
    )
}

/// The TLS connector: Mozilla's roots plus the configured extra CA file.
fn tls(extra: Option<&std::path::Path>) -> Result<MakeRustlsConnect, DbError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| DbError::Connect(format!("cannot read PGSSLROOTCERT {}: {e}", path.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| DbError::Connect(format!("bad certificate in {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| DbError::Connect(format!("bad certificate in {}: {e}", path.display())))?;
        }
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| DbError::Connect(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(not(feature = "rds-iam"))]
async fn iam_token(_pg: &tokio_postgres::Config, _auth: &DbAuth) -> Result<String, DbError> {
    Err(DbError::Token(
        "this program was built without RDS IAM support (lablink-db's rds-iam feature)".into(),
    ))
}

/// An RDS IAM auth token (a SigV4-presigned URL, valid 15 minutes). Signed with the
/// environment's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`), which is how Lambda hands a function its role: no credential
/// chain, no network, so a Lambda links no STS or SSO client for its database login. A
/// process whose role comes from elsewhere (the holder: ECS's credentials endpoint)
/// passes its own provider.
#[cfg(feature = "rds-iam")]
async fn iam_token(pg: &tokio_postgres::Config, auth: &DbAuth) -> Result<String, DbError> {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::ProvideCredentials;
    let DbAuth::IamToken { region, credentials } = auth else {
        return Err(DbError::Token("not configured for IAM auth".into()));
    };
    let credentials = match credentials {
        Some(provider) => provider
            .provide_credentials()
            .await
            .map_err(|e| DbError::Token(format!("no AWS credentials: {e}")))?,
        None => {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) else {
                return Err(DbError::Token(
                    "IAM auth signs with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (Lambda sets them); \
                     they are not set"
                        .into(),
                ));
            };
            Credentials::new(key, secret, var("AWS_SESSION_TOKEN"), None, "environment")
        }
    };
    sign_token(pg, region, credentials).await
}

#[cfg(feature = "rds-iam")]
async fn sign_token(
    pg: &tokio_postgres::Config,
    region: &str,
    credentials: aws_credential_types::Credentials,
) -> Result<String, DbError> {
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_sdk_rds::auth_token::{AuthTokenGenerator, Config};
    let sdk = aws_types::SdkConfig::builder()
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .time_source(aws_smithy_async::time::SystemTimeSource::new())
        .build();
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => return Err(DbError::Token("IAM auth needs a TCP host name".into())),
    };
    let user = pg
        .get_user()
        .ok_or_else(|| DbError::Token("IAM auth needs a user name".into()))?;
    let cfg = Config::builder()
        .hostname(host)
        .port(u64::from(pg.get_ports().first().copied().unwrap_or(5432)))
        .username(user)
        .region(aws_types::region::Region::new(region.to_owned()))
        .build()
        .map_err(|e| DbError::Token(e.to_string()))?;
    let token = AuthTokenGenerator::new(cfg)
        .auth_token(&sdk)
        .await
        .map_err(|e| DbError::Token(e.to_string()))?;
    Ok(token.as_str().to_owned())
}

/// A lazily made, shared connection. Cloning the returned client handle is cheap and
/// tokio-postgres pipelines concurrent queries over it.
pub struct Db {
    config: DbConfig,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Db {
    /// No network work: the first query connects.
    pub fn new(config: DbConfig) -> Self {
        Self {
            config,
            client: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// The live client, connecting (again) if there is none or the last one broke.
    pub async fn client(&self) -> Result<Arc<tokio_postgres::Client>, DbError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.config.connect().await?);
        *slot = Some(c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn missing_database_settings_are_all_named() {
        let mut s = settings(&[
            ("LABLINK_DB_IAM_AUTH", "true"),
            ("PGSSLMODE", "disable"),
            ("PGSSLROOTCERT", "/nope.pem"),
        ]);
        assert!(DbConfig::read(&mut s).is_none());
        let msg = s.finish(|| ()).unwrap_err().to_string();
        for name in [
            "PGHOST is not set",
            "PGUSER is not set",
            "AWS_REGION is not set",
            "PGSSLMODE is disable",
            "PGSSLROOTCERT is invalid",
        ] {
            assert!(msg.contains(name), "{name:?} missing from {msg}");
        }
    }

    #[test]
    fn a_url_or_pg_variables_configure_the_connection() {
        let mut s = settings(&[("DATABASE_URL", "postgres://u:secret@db.example:6543/lab")]);
        let cfg = DbConfig::read(&mut s).unwrap();
        assert_eq!(cfg.dbname(), Some("lab"));
        assert!(
            !format!("{cfg:?}").contains("secret"),
            "the password is never printed"
        );
        let mut s = settings(&[
            ("PGHOST", "h"),
            ("PGUSER", "u"),
            ("LABLINK_DB_IAM_AUTH", "1"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let cfg = DbConfig::read(&mut s).unwrap();
        assert!(matches!(cfg.auth, DbAuth::IamToken { .. }));
        assert_eq!(cfg.pg.get_ssl_mode(), SslMode::Require);
        assert_eq!(cfg.dbname(), Some("lablink"));
        let mut s = settings(&[("DATABASE_URL", "mysql:/nonsense")]);
        assert!(DbConfig::read(&mut s).is_none());
        assert!(
            s.finish(|| ())
                .unwrap_err()
                .to_string()
                .contains("DATABASE_URL is invalid")
        );
    }

    #[cfg(feature = "rds-iam")]
    #[tokio::test]
    async fn a_process_may_sign_iam_tokens_with_its_own_credentials() {
        let mut s = settings(&[
            ("LABLINK_DB_IAM_AUTH", "1"),
            ("PGHOST", "db.example"),
            ("PGUSER", "lablink_app"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let cfg = DbConfig::read(&mut s).unwrap();
        assert!(cfg.uses_iam());
        let own = aws_credential_types::Credentials::new("AKIDOWNSOURCE", "secret", None, None, "test");
        let cfg = cfg.with_iam_credentials(aws_credential_types::provider::SharedCredentialsProvider::new(
            own,
        ));
        let token = iam_token(&cfg.pg, &cfg.auth).await.unwrap();
        assert!(
            token.starts_with("db.example:5432/?Action=connect&DBUser=lablink_app&"),
            "{token}"
        );
        assert!(token.contains("X-Amz-Credential=AKIDOWNSOURCE%2F"), "{token}");
        assert!(!token.contains("X-Amz-Security-Token"), "{token}");
    }

    #[cfg(feature = "rds-iam")]
    #[tokio::test]
    async fn iam_tokens_are_presigned_connect_urls_for_the_host_and_user() {
        let pg =
            tokio_postgres::Config::from_str("postgres://lablink_app@proxy.example:5432/lablink").unwrap();
        let creds = aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            Some("session".into()),
            None,
            "test",
        );
        let token = sign_token(&pg, "eu-west-1", creds).await.unwrap();
        assert!(
            token.starts_with("proxy.example:5432/?Action=connect&DBUser=lablink_app&"),
            "{token}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F",
            "%2Feu-west-1%2Frds-db%2Faws4_request",
            "X-Amz-Security-Token=session",
            "X-Amz-Signature=",
        ] {
            assert!(token.contains(part), "{part} not in {token}");
        }
        let unix = tokio_postgres::Config::from_str("host=/run/pg user=u").unwrap();
        assert!(matches!(
            sign_token(
                &unix,
                "eu-west-1",
                aws_credential_types::Credentials::new("a", "b", None, None, "t")
            )
            .await,
            Err(DbError::Token(_))
        ));
    }
}
