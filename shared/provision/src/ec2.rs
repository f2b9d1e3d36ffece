//! Compute on EC2 (`aws-sdk-ec2`): one `RunInstances` per launch with `ClientToken` = the
//! job id, instances tagged with the deployment, the job and (after launch) their
//! hostnames; IMDSv2 required; user-data that installs and starts the client daemon and
//! carries only the job's enrollment secret.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, IamInstanceProfileSpecification, InstanceMetadataOptionsRequest, InstanceType,
    ResourceType, Tag, TagSpecification,
};
use base64::Engine;
use lablink_core::domain::Hostname;
use lablink_ops::JobId;

use crate::compute::{Compute, ComputeError, Instance, LaunchSpec};

pub const TAG_DEPLOYMENT: &str = "lablink:deployment";
pub const TAG_JOB: &str = "lablink:job";
pub const TAG_HOSTNAME: &str = "lablink:hostname";

/// What the EC2 provider needs (from the provisioner's environment).
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    pub deployment: String,
    pub ami_id: String,
    pub instance_type: String,
    pub subnet_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
    pub instance_profile_arn: Option<String>,
    /// The API the daemons call (`/api/enroll`, reports, and `/vm_startup` through API Gateway).
    pub api_url: String,
    /// The log group the daemons ship to.
    pub log_group: String,
    /// Where user-data fetches the daemon when the AMI lacks it.
    pub daemon_url: Option<String>,
}

pub struct Ec2Compute {
    client: Client,
    settings: Ec2Settings,
}

impl Ec2Compute {
    pub fn new(client: Client, settings: Ec2Settings) -> Self {
        Self { client, settings }
    }
}

fn aws<E: std::error::Error + 'static>(e: E) -> ComputeError {
    ComputeError(DisplayErrorContext(e).to_string())
}

/// Quote for a POSIX shell single-quoted string.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The user-data script: writes the daemon's settings (the enrollment secret readable by
/// root only), fetches the daemon if the image lacks it, and starts it under systemd.
/// The VM learns its hostname and its own credential from `POST /api/enroll`.
pub fn user_data(s: &Ec2Settings, job: &JobId, secret: &str) -> String {
    let fetch = match &s.daemon_url {
        Some(url) => format!(
            "if [ ! -x /usr/local/bin/lablink-client-daemon ]; then\n  curl -fsSL --retry 5 -o /usr/local/bin/lablink-client-daemon {}\n  chmod 0755 /usr/local/bin/lablink-client-daemon\nfi\n",
            sh_quote(url)
        ),
        None => String::new(),
    };
    format!(
        r#"#!/bin/bash
# LabLink VM bootstrap (job {job}). Written by the provisioner; holds only the job's
# enrollment secret. The daemon exchanges it once for this VM's own credential.
set -euo pipefail
install -d -m 0700 /etc/lablink /var/lib/lablink
umask 077
cat > /etc/lablink/client.env <<'LABLINK_ENV'
LABLINK_API_URL={api}
LABLINK_HOLDER_URL={api}
LABLINK_ENROLL_SECRET={secret}
LABLINK_STATE_DIR=/var/lib/lablink
LABLINK_LOG_GROUP={group}
LABLINK_DAEMON_LOG_FILE=/var/log/lablink-client.log
LABLINK_CLOUD_INIT_START={{CLOUD_INIT_START}}
LABLINK_ENV
sed -i "s/{{CLOUD_INIT_START}}/$(date -u +%Y-%m-%dT%H:%M:%SZ)/" /etc/lablink/client.env
{fetch}cat > /etc/systemd/system/lablink-client.service <<'LABLINK_UNIT'
[Unit]
Description=LabLink client daemon
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/lablink/client.env
ExecStart=/usr/local/bin/lablink-client-daemon
StandardError=append:/var/log/lablink-client.log
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
LABLINK_UNIT
systemctl daemon-reload
systemctl enable --now lablink-client.service
"#,
        api = s.api_url,
        group = s.log_group,
    )
}

fn instances_of(out: &aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput) -> Vec<Instance> {
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(to_instance)
        .collect()
}

fn to_instance(i: &aws_sdk_ec2::types::Instance) -> Instance {
    Instance {
        instance_id: i.instance_id().unwrap_or_default().to_owned(),
        hostname: i
            .tags()
            .iter()
            .find(|t| t.key() == Some(TAG_HOSTNAME))
            .and_then(|t| t.value())
            .map(str::to_owned),
        launch_index: i.ami_launch_index().unwrap_or(0),
    }
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

impl Ec2Compute {
    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<Instance>, ComputeError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token)
                .send()
                .await
                .map_err(aws)?;
            all.extend(instances_of(&out));
            token = out.next_token().filter(|t| !t.is_empty()).map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        all.retain(|i| !i.instance_id.is_empty());
        all.sort_by_key(|i| (i.launch_index, i.instance_id.clone()));
        Ok(all)
    }
}

#[async_trait::async_trait]
impl Compute for Ec2Compute {
    fn kind(&self) -> &'static str {
        "ec2"
    }

    async fn job_instances(&self, job: &JobId) -> Result<Vec<Instance>, ComputeError> {
        self.describe(vec![
            filter(&format!("tag:{TAG_DEPLOYMENT}"), &[&self.settings.deployment]),
            filter(&format!("tag:{TAG_JOB}"), &[job.as_str()]),
            filter("instance-state-name", &LIVE_STATES),
        ])
        .await
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Vec<Instance>, ComputeError> {
        let s = &self.settings;
        let n = spec.hostnames.len() as i32;
        let subnet = s
            .subnet_ids
            .get(spec.job.as_str().bytes().map(usize::from).sum::<usize>() % s.subnet_ids.len().max(1))
            .cloned();
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(TAG_DEPLOYMENT, &s.deployment))
            .tags(tag(TAG_JOB, spec.job.as_str()))
            .tags(tag("Name", &format!("{}-vm (enrolling)", s.deployment)))
            .build();
        let script = user_data(s, &spec.job, spec.enrollment_secret.expose());
        let out = self
            .client
            .run_instances()
            .image_id(&s.ami_id)
            .instance_type(InstanceType::from(s.instance_type.as_str()))
            .min_count(n)
            .max_count(n)
            .client_token(spec.job.as_str())
            .set_subnet_id(subnet)
            .set_security_group_ids(Some(s.security_group_ids.clone()).filter(|v| !v.is_empty()))
            .set_iam_instance_profile(
                s.instance_profile_arn
                    .as_ref()
                    .map(|arn| IamInstanceProfileSpecification::builder().arn(arn).build()),
            )
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .build(),
            )
            .user_data(base64::engine::general_purpose::STANDARD.encode(script))
            .tag_specifications(tags)
            .send()
            .await
            .map_err(aws)?;
        let mut launched: Vec<Instance> = out.instances().iter().map(to_instance).collect();
        launched.sort_by_key(|i| (i.launch_index, i.instance_id.clone()));
        Ok(launched)
    }

    async fn name(&self, pairs: &[(String, Hostname)]) -> Result<(), ComputeError> {
        for (id, host) in pairs {
            self.client
                .create_tags()
                .resources(id)
                .tags(Tag::builder().key(TAG_HOSTNAME).value(host.as_str()).build())
                .tags(Tag::builder().key("Name").value(host.as_str()).build())
                .send()
                .await
                .map_err(aws)?;
        }
        Ok(())
    }

    async fn fleet(&self) -> Result<Vec<Instance>, ComputeError> {
        self.describe(vec![
            filter(&format!("tag:{TAG_DEPLOYMENT}"), &[&self.settings.deployment]),
            filter("instance-state-name", &LIVE_STATES),
        ])
        .await
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), ComputeError> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        self.client
            .terminate_instances()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .send()
            .await
            .map_err(aws)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_quotes_and_carries_only_the_enrollment_secret() {
        let s = Ec2Settings {
            deployment: "test".into(),
            ami_id: "ami-1".into(),
            instance_type: "g4dn.xlarge".into(),
            subnet_ids: vec![],
            security_group_ids: vec![],
            instance_profile_arn: None,
            api_url: "https://api.example".into(),
            log_group: "lablink-cloud-init-test".into(),
            daemon_url: Some("https://x/it's".into()),
        };
        let job = JobId::parse("20261123T101500Z-0a1b2c3d").unwrap();
        let ud = user_data(&s, &job, "s3cret");
        assert!(ud.starts_with("#!/bin/bash\n"));
        assert!(ud.contains("LABLINK_ENROLL_SECRET=s3cret\n"));
        assert!(ud.contains("'https://x/it'\\''s'"));
        assert!(ud.contains("systemctl enable --now lablink-client.service"));
        assert!(!ud.contains("LABLINK_CREDENTIAL="));
    }
}
