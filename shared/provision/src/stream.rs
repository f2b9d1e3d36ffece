//! The provisioner Lambda's side: its settings, and one DynamoDB stream batch → the
//! jobs it names. A record is only a nudge: the job's stored state decides what runs,
//! so duplicates, progress updates (MODIFY records) and non-job items are harmless.

use std::sync::Arc;

use lablink_core::config::Settings;
use lablink_db::{Db, DbConfig};
use lablink_ops::JobId;
use lablink_ops::dynamo::DynamoJobStore;
use serde_json::Value;

use crate::bootstrap::{DaemonArtifact, VmSettings};
use crate::ec2::{AmiSource, Ec2Compute, Ec2Settings};
use crate::{ExportSettings, Exporter, Processed, ProvisionError, Provisioner};

/// Everything the provisioner Lambda reads from its environment.
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    pub db: DbConfig,
    pub jobs_table: String,
    pub ec2: Ec2Settings,
    /// `LABLINK_EXPORT_BUCKET`: the data-export bucket (unset: exports fail saying so).
    pub export_bucket: Option<String>,
    pub export: ExportSettings,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ProvisionerConfig {
    pub fn read(s: &mut Settings) -> Option<Self> {
        let db = DbConfig::read(s);
        let jobs_table = s.required_with(
            "LABLINK_JOBS_TABLE",
            "the DynamoDB jobs table's name",
            |v: &str| {
                if v.is_empty() {
                    Err("empty")
                } else {
                    Ok(v.to_owned())
                }
            },
        );
        // Checked as the API checks it: it goes into EC2 tags and every VM's hostname.
        let deployment = s.required_with("LABLINK_DEPLOYMENT", "the deployment's name", |v: &str| {
            lablink_core::domain::DeploymentName::parse(v).map(|d| d.as_str().to_owned())
        });
        let ami_id = s.optional_with(
            "LABLINK_AMI_ID",
            "an AMI id like ami-0123… (or empty)",
            |v: &str| {
                if v.starts_with("ami-") {
                    Ok(v.to_owned())
                } else {
                    Err("not an AMI id")
                }
            },
        );
        let ami = match ami_id {
            Some(id) => AmiSource::Id(id),
            None => AmiSource::SsmParameter(
                s.raw("LABLINK_AMI_SSM_PARAMETER")
                    .map_or(crate::bootstrap::DEFAULT_AMI_PARAMETER, str::trim)
                    .to_owned(),
            ),
        };
        let vm = VmSettings::read(s);
        let daemon = daemon_artifact(s);
        let api_url = s.required_with("LABLINK_API_URL", "the API's https URL", |v: &str| {
            if v.starts_with("https://") || v.starts_with("http://") {
                Ok(v.trim_end_matches('/').to_owned())
            } else {
                Err("not a URL")
            }
        });
        let subnet_ids = s.raw("LABLINK_SUBNET_IDS").map(list).unwrap_or_default();
        let security_group_ids = s.raw("LABLINK_SECURITY_GROUP_IDS").map(list).unwrap_or_default();
        let instance_profile_arn = s
            .raw("LABLINK_INSTANCE_PROFILE_ARN")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let log_group = s
            .raw("LABLINK_VM_LOG_GROUP")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let export_bucket = s
            .raw("LABLINK_EXPORT_BUCKET")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let export = ExportSettings::read(s);
        let deployment = deployment?;
        Some(Self {
            export_bucket,
            export,
            db: db?,
            jobs_table: jobs_table?,
            ec2: Ec2Settings {
                log_group: log_group.unwrap_or_else(|| format!("lablink-cloud-init-{deployment}")),
                deployment,
                ami,
                subnet_ids,
                security_group_ids,
                instance_profile_arn,
                api_url: api_url?,
                daemon: daemon?,
                vm: vm?,
            },
        })
    }
}

/// The client daemon the deployment uploaded: `LABLINK_DAEMON_BUCKET`, `_KEY`, `_SHA256`
/// (and the region VMs fetch it from, `AWS_REGION`).
pub fn daemon_artifact(s: &mut Settings) -> Option<DaemonArtifact> {
    let bucket = s.required_with(
        "LABLINK_DAEMON_BUCKET",
        "the bucket of the client daemon asset",
        |v: &str| Ok::<_, String>(v.to_owned()),
    );
    let key = s.required_with(
        "LABLINK_DAEMON_KEY",
        "the key of the client daemon asset",
        |v: &str| Ok::<_, String>(v.to_owned()),
    );
    let sha256 = s.required_with(
        "LABLINK_DAEMON_SHA256",
        "the daemon's SHA-256, 64 hex digits",
        |v: &str| {
            if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(v.to_ascii_lowercase())
            } else {
                Err("not 64 hex digits")
            }
        },
    );
    let region = s
        .raw("AWS_REGION")
        .or(s.raw("AWS_DEFAULT_REGION"))
        .unwrap_or("us-east-1")
        .to_owned();
    Some(DaemonArtifact {
        bucket: bucket?,
        key: key?,
        sha256: sha256?,
        region,
    })
}

/// The job ids a stream batch names (job items only; every event name).
pub fn job_ids(event: &Value) -> Vec<JobId> {
    let mut ids: Vec<JobId> = event["Records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let keys = &r["dynamodb"]["Keys"];
            (keys["pk"]["S"].as_str() == Some("job"))
                .then(|| keys["sk"]["S"].as_str())
                .flatten()
                .and_then(|sk| JobId::parse(sk).ok())
        })
        .collect();
    ids.dedup();
    ids
}

/// Everything one Lambda process keeps between invocations.
pub struct ProvisionerRuntime {
    pub config: ProvisionerConfig,
    pub sdk: aws_config::SdkConfig,
    pub store: Arc<DynamoJobStore>,
    pub db: Arc<Db>,
}

impl ProvisionerRuntime {
    pub async fn new(config: ProvisionerConfig) -> Self {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::with_sdk(config, sdk)
    }

    /// With a given AWS configuration (tests against moto).
    pub fn with_sdk(config: ProvisionerConfig, sdk: aws_config::SdkConfig) -> Self {
        let store = Arc::new(DynamoJobStore::new(
            lablink_ops::dynamo::Client::new(&sdk),
            config.jobs_table.clone(),
        ));
        let db = Arc::new(Db::new(config.db.clone()));
        Self {
            config,
            sdk,
            store,
            db,
        }
    }

    /// Whether `event` is the EventBridge schedule's tick (not a stream batch).
    pub fn is_schedule_tick(event: &Value) -> bool {
        event["source"] == "aws.events" && event["detail-type"] == "Scheduled Event"
    }

    /// The schedule's tick: destroy the fleet once its end time has passed
    /// ([`crate::schedule`]).
    pub async fn tick(&self) -> Result<crate::schedule::Tick, ProvisionError> {
        crate::schedule::tick(self.store.as_ref(), &self.db, chrono::Utc::now()).await
    }

    /// Process every job a stream batch names. EC2 is called with the admin's stored
    /// credentials when there are some, else with the function's role.
    pub async fn handle(&self, event: &Value) -> Result<Vec<(JobId, Processed)>, ProvisionError> {
        let ids = job_ids(event);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (sdk, stored) =
            lablink_ops::aws::provisioner_config(&self.sdk, self.store.as_ref(), chrono::Utc::now()).await?;
        if let Some(c) = &stored {
            tracing::info!(arn = %c.identity.arn, "using stored credentials");
        }
        let p = Provisioner {
            store: self.store.clone(),
            compute: Arc::new(Ec2Compute::new(
                aws_sdk_ec2::Client::new(&sdk),
                // The AMI is regional: read where EC2 launches (the same credentials).
                aws_sdk_ssm::Client::new(&sdk),
                self.config.ec2.clone(),
            )),
            db: self.db.clone(),
            hostname_prefix: self.config.ec2.deployment.clone(),
            // The bucket is the deployment's own: always the function's role, never
            // the admin's stored credentials (those may be another account's).
            exports: self.config.export_bucket.as_ref().map(|bucket| Exporter {
                storage: Arc::new(lablink_export::S3Storage::new(&self.sdk, bucket)),
                settings: self.config.export.clone(),
            }),
        };
        let mut out = Vec::new();
        for id in ids {
            let r = p.process(&id).await?;
            tracing::info!(job = %id, outcome = ?r, "processed");
            out.push((id, r));
        }
        Ok(out)
    }
}
