//! Compute on EC2 (`aws-sdk-ec2`): one `RunInstances` per launch with `ClientToken` = the
//! job id, instances tagged with the deployment, the job and (after launch) their
//! hostnames; IMDSv2 required; the root disk sized by the settings; the image AWS's
//! current Deep Learning Base GPU AMI (read from its public SSM parameter at launch)
//! unless the deployment names one; user-data the cloud-config of [`crate::bootstrap`],
//! carrying only the job's enrollment secret. Capacity and quota refusals become
//! messages that say what to do.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataOptionsRequest, InstanceType, ResourceType, Tag, TagSpecification, VolumeType,
};
use base64::Engine;
use lablink_core::domain::Hostname;
use lablink_ops::JobId;

use crate::bootstrap::{Bootstrap, DaemonArtifact, VmSettings};
use crate::compute::{Compute, ComputeError, Instance, LaunchSpec};

pub const TAG_DEPLOYMENT: &str = "lablink:deployment";
pub const TAG_JOB: &str = "lablink:job";
pub const TAG_HOSTNAME: &str = "lablink:hostname";

/// Which image VMs start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmiSource {
    /// The admin's own image (`AmiId`).
    Id(String),
    /// The image a public SSM parameter names, read at each launch (the default: AWS's
    /// Deep Learning Base GPU AMI, [`crate::bootstrap::DEFAULT_AMI_PARAMETER`]).
    SsmParameter(String),
}

/// What the EC2 provider needs (from the provisioner's environment).
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    pub deployment: String,
    pub ami: AmiSource,
    pub subnet_ids: Vec<String>,
    pub security_group_ids: Vec<String>,
    pub instance_profile_arn: Option<String>,
    /// The API the daemons call (`/api/enroll`, reports, and `/vm_startup` through API Gateway).
    pub api_url: String,
    /// The log group the daemons ship to.
    pub log_group: String,
    /// The client daemon the deployment shipped (S3 object and SHA-256).
    pub daemon: DaemonArtifact,
    /// The workshop's VM settings (deploy defaults; a launch may override some).
    pub vm: VmSettings,
}

pub struct Ec2Compute {
    client: Client,
    ssm: aws_sdk_ssm::Client,
    settings: Ec2Settings,
}

impl Ec2Compute {
    pub fn new(client: Client, ssm: aws_sdk_ssm::Client, settings: Ec2Settings) -> Self {
        Self {
            client,
            ssm,
            settings,
        }
    }

    /// The image id to launch from.
    async fn image_id(&self) -> Result<String, ComputeError> {
        match &self.settings.ami {
            AmiSource::Id(id) => Ok(id.clone()),
            AmiSource::SsmParameter(name) => {
                let out = self.ssm.get_parameter().name(name).send().await.map_err(|e| {
                    ComputeError(format!(
                        "reading the AMI id from SSM parameter {name}: {}",
                        DisplayErrorContext(e)
                    ))
                })?;
                out.parameter()
                    .and_then(|p| p.value())
                    .filter(|v| v.starts_with("ami-"))
                    .map(str::to_owned)
                    .ok_or_else(|| ComputeError(format!("SSM parameter {name} holds no AMI id")))
            }
        }
    }

    /// The image's root device (the disk size applies to it; `/dev/sda1` if unknown) and
    /// its snapshot's size in GB, when DescribeImages says.
    async fn root_disk(&self, image: &str) -> (String, Option<i32>) {
        let found = self
            .client
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .ok()
            .and_then(|o| o.images().first().cloned());
        match found {
            Some(i) => (
                i.root_device_name().unwrap_or("/dev/sda1").to_owned(),
                root_snapshot_gb(&i),
            ),
            None => ("/dev/sda1".into(), None),
        }
    }
}

/// The size (GB) of the image's root snapshot: its block device mapping named by
/// `RootDeviceName` (EC2 API, `Image` and `EbsBlockDevice.VolumeSize`).
pub fn root_snapshot_gb(image: &aws_sdk_ec2::types::Image) -> Option<i32> {
    let root = image.root_device_name()?;
    image
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root))
        .and_then(|m| m.ebs())
        .and_then(|e| e.volume_size())
}

/// EC2 refuses a root volume smaller than the image's snapshot ("InvalidBlockDeviceMapping:
/// Volume of size …GB is smaller than snapshot …"; EC2 API `EbsBlockDevice.VolumeSize`:
/// "equal to or larger than the snapshot size"): said before RunInstances, naming both.
pub fn check_disk(disk_gb: u32, snapshot_gb: Option<i32>, image: &str) -> Result<(), ComputeError> {
    match snapshot_gb {
        Some(snap) if i64::from(disk_gb) < i64::from(snap) => Err(ComputeError(format!(
            "the VM disk is {disk_gb} GB, smaller than the root snapshot of image {image} ({snap} GB), which EC2 refuses: set the workshop's disk_gb (deploy parameter VmDiskGb) to at least {snap}"
        ))),
        _ => Ok(()),
    }
}

fn aws<E: std::error::Error + 'static>(e: E) -> ComputeError {
    ComputeError(DisplayErrorContext(e).to_string())
}

/// vCPUs of an instance size (`xlarge` 4, `2xlarge` 8, `large` 2, ...), for quota messages.
pub fn vcpus(instance_type: &str) -> Option<u32> {
    let size = instance_type.split_once('.')?.1;
    match size {
        "medium" => Some(1),
        "large" => Some(2),
        "xlarge" => Some(4),
        s => s.strip_suffix("xlarge")?.parse::<u32>().ok().map(|n| n * 4),
    }
}

/// The Service Quotas name that limits on-demand instances of this family.
fn quota_name(instance_type: &str) -> &'static str {
    match instance_type.chars().next() {
        Some('g' | 'v') => "Running On-Demand G and VT instances",
        Some('p') => "Running On-Demand P instances",
        Some('f') => "Running On-Demand F instances",
        Some('i') if instance_type.starts_with("inf") => "Running On-Demand Inf instances",
        Some('x') => "Running On-Demand X instances",
        _ => "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    }
}

/// A `RunInstances` refusal as the admin should read it: capacity and quota errors say
/// what to do; anything else keeps EC2's text.
pub fn launch_error(code: Option<&str>, detail: &str, n: i32, instance_type: &str) -> ComputeError {
    match code {
        Some("InsufficientInstanceCapacity") => ComputeError(format!(
            "EC2 has no capacity for {n} × {instance_type} in the chosen availability zone right now. \
             Try again in a few minutes, launch fewer VMs at a time, choose another instance type, \
             or give the deployment subnets in more zones (docs/deploy.md, \"Quotas and zones\"). EC2 said: {detail}"
        )),
        Some("VcpuLimitExceeded" | "InstanceLimitExceeded" | "MaxSpotInstanceCountExceeded") => {
            let need = vcpus(instance_type).map(|v| v * n as u32);
            ComputeError(format!(
                "your account's vCPU quota is too low for {n} × {instance_type}{}: in Service Quotas \
                 (Amazon EC2), request an increase of \"{}\" to at least that many vCPUs plus what \
                 already runs (docs/deploy.md, \"Quotas and zones\"). EC2 said: {detail}",
                need.map_or(String::new(), |v| format!(" ({v} vCPUs)")),
                quota_name(instance_type),
            ))
        }
        _ => ComputeError(detail.to_owned()),
    }
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
        image_id: i.image_id().map(str::to_owned),
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
        let vm =
            s.vm.with(&spec.overrides)
                .map_err(|e| ComputeError(format!("the launch's settings: {e}")))?;
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
        let user_data = Bootstrap {
            job: &spec.job,
            api_url: &s.api_url,
            log_group: &s.log_group,
            enrollment_secret: spec.enrollment_secret.expose(),
            daemon: &s.daemon,
            vm: &vm,
        }
        .user_data()
        .map_err(|e| ComputeError(e.to_string()))?;
        let image = self.image_id().await?;
        let (root_device, snapshot_gb) = self.root_disk(&image).await;
        check_disk(vm.disk_gb, snapshot_gb, &image)?;
        let root = BlockDeviceMapping::builder()
            .device_name(root_device)
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size(vm.disk_gb as i32)
                    .volume_type(VolumeType::Gp3)
                    .delete_on_termination(true)
                    .encrypted(true)
                    .build(),
            )
            .build();
        let out = self
            .client
            .run_instances()
            .image_id(&image)
            .instance_type(InstanceType::from(vm.instance_type.as_str()))
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
            .block_device_mappings(root)
            .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
            .tag_specifications(tags)
            .send()
            .await
            .map_err(|e| {
                let code = e.code().map(str::to_owned);
                launch_error(
                    code.as_deref(),
                    &DisplayErrorContext(&e).to_string(),
                    n,
                    &vm.instance_type,
                )
            })?;
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An EC2 endpoint that refuses every call with `code` (as EC2 does: HTTP 400 and its
    /// XML error body), so the real SDK parses a real refusal.
    async fn refusing_ec2(code: &'static str, message: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // Read the request head and body (small, one read loop is enough).
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0;
                    loop {
                        let Ok(n) = sock.read(&mut buf[got..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got += n;
                        let text = String::from_utf8_lossy(&buf[..got]);
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            let len = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if got >= head_end + 4 + len {
                                break;
                            }
                        }
                    }
                    let body = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>req-1</RequestID></Response>"
                    );
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/xml;charset=UTF-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn compute(endpoint: &str) -> Ec2Compute {
        let creds = aws_credential_types::Credentials::new("testing", "testing", None, None, "test");
        let ec2 = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new("us-west-2"))
            .credentials_provider(creds.clone())
            .endpoint_url(endpoint)
            .build();
        let ssm = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new("us-west-2"))
            .credentials_provider(creds)
            .endpoint_url(endpoint)
            .build();
        Ec2Compute::new(
            Client::from_conf(ec2),
            aws_sdk_ssm::Client::from_conf(ssm),
            Ec2Settings {
                deployment: "prod".into(),
                ami: AmiSource::Id("ami-0123456789abcdef0".into()),
                subnet_ids: vec!["subnet-1".into()],
                security_group_ids: vec!["sg-1".into()],
                instance_profile_arn: None,
                api_url: "https://api.example".into(),
                log_group: "lablink-cloud-init-prod".into(),
                daemon: DaemonArtifact {
                    bucket: "assets".into(),
                    key: "daemon.bin".into(),
                    sha256: "d".repeat(64),
                    region: "us-west-2".into(),
                },
                vm: VmSettings::default(),
            },
        )
    }

    fn spec(n: usize) -> LaunchSpec {
        LaunchSpec {
            job: JobId::parse("20261202T030000Z-0a1b2c3d").unwrap(),
            hostnames: (0..n)
                .map(|i| Hostname::parse(&format!("prod-vm-{i:03}")).unwrap())
                .collect(),
            enrollment_secret: lablink_core::credential::Secret::generate(),
            overrides: Default::default(),
        }
    }

    #[tokio::test]
    async fn ec2s_quota_and_capacity_refusals_reach_the_admin_as_what_to_do() {
        let quota = refusing_ec2(
            "VcpuLimitExceeded",
            "You have requested more vCPU capacity than your current vCPU limit of 0 allows",
        )
        .await;
        let e = compute(&quota).launch(&spec(60)).await.unwrap_err();
        assert!(
            e.0.contains("vCPU quota is too low for 60 × g4dn.xlarge (240 vCPUs)"),
            "{e}"
        );
        assert!(e.0.contains("Running On-Demand G and VT instances"), "{e}");
        assert!(
            e.0.contains("current vCPU limit of 0"),
            "EC2's own words are kept: {e}"
        );

        let capacity = refusing_ec2(
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient g4dn.xlarge capacity in the Availability Zone you requested (us-west-2a).",
        )
        .await;
        let e = compute(&capacity).launch(&spec(2)).await.unwrap_err();
        assert!(e.0.contains("no capacity for 2 × g4dn.xlarge"), "{e}");

        // The SSM default: a missing parameter is named.
        let mut c = compute(&quota);
        c.settings.ami =
            AmiSource::SsmParameter("/aws/service/deeplearning/ami/x86_64/nope/latest/ami-id".into());
        let e = c.launch(&spec(1)).await.unwrap_err();
        assert!(
            e.0.contains("reading the AMI id from SSM parameter /aws/service/deeplearning/ami/x86_64/nope"),
            "{e}"
        );
    }

    #[test]
    fn a_disk_smaller_than_the_images_root_snapshot_is_refused_naming_both_sizes() {
        use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, Image};
        let image = Image::builder()
            .root_device_name("/dev/sda1")
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sdb")
                    .ebs(EbsBlockDevice::builder().volume_size(500).build())
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name("/dev/sda1")
                    .ebs(EbsBlockDevice::builder().volume_size(75).build())
                    .build(),
            )
            .build();
        assert_eq!(
            root_snapshot_gb(&image),
            Some(75),
            "the root device's, not another's"
        );
        let e = check_disk(30, Some(75), "ami-0abc").unwrap_err();
        assert!(
            e.0.contains("the VM disk is 30 GB, smaller than the root snapshot of image ami-0abc (75 GB)")
                && e.0.contains("at least 75"),
            "{e}"
        );
        assert!(check_disk(75, Some(75), "ami-0abc").is_ok());
        assert!(check_disk(30, None, "ami-0abc").is_ok(), "unknown: EC2 decides");
    }

    #[test]
    fn capacity_and_quota_refusals_say_what_to_do() {
        let e = launch_error(
            Some("InsufficientInstanceCapacity"),
            "We currently do not have sufficient g4dn.xlarge capacity",
            60,
            "g4dn.xlarge",
        );
        assert!(e.0.contains("no capacity for 60 × g4dn.xlarge"), "{e}");
        assert!(e.0.contains("more zones"), "{e}");
        let e = launch_error(
            Some("VcpuLimitExceeded"),
            "You have requested more vCPU capacity",
            60,
            "g4dn.xlarge",
        );
        assert!(e.0.contains("(240 vCPUs)"), "{e}");
        assert!(e.0.contains("Running On-Demand G and VT instances"), "{e}");
        let e = launch_error(Some("VcpuLimitExceeded"), "x", 2, "p3.8xlarge");
        assert!(
            e.0.contains("(64 vCPUs)") && e.0.contains("Running On-Demand P instances"),
            "{e}"
        );
        assert_eq!(
            launch_error(Some("InvalidAMIID.NotFound"), "no such AMI", 1, "g4dn.xlarge").0,
            "no such AMI"
        );
        assert_eq!(vcpus("g4dn.12xlarge"), Some(48));
        assert_eq!(vcpus("t3.medium"), Some(1));
        assert_eq!(vcpus("weird"), None);
    }
}
