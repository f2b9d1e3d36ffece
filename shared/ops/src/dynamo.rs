//! The job store on AWS: one DynamoDB table (partition key `pk`, sort key `sk`, TTL
//! attribute `expires_at`, stream of new images feeding the provisioner).
//!
//! | item | pk | sk | attributes |
//! |---|---|---|---|
//! | job | `job` | job id (sorts by time) | `body` (the job's JSON), `ver`, `state`, `expires_at` |
//! | fleet lock | `lock` | `fleet` | `job_id`, `lease_until` (epoch seconds) |
//! | setting | `setting` | name | `value` (JSON), `expires_at` |
//!
//! Every change is a conditional write: insert only if absent, replace only at the
//! version read, lock only if free/expired/ours.

use std::collections::HashMap;

pub use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::job::{Job, JobId};
use crate::store::{JobStore, Lock, StoreError};

/// Finished jobs disappear this long after their last change.
const JOB_TTL_DAYS: i64 = 90;

pub struct DynamoJobStore {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoJobStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn key(pk: &str, sk: &str) -> Item {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(pk.to_owned())),
            ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
        ])
    }

    fn job_item(job: &Job, version: u64) -> Item {
        let mut stored = job.clone();
        stored.version = version;
        let mut item = Self::key("job", job.id.as_str());
        item.insert(
            "body".into(),
            AttributeValue::S(serde_json::to_string(&stored).expect("jobs serialize")),
        );
        item.insert("ver".into(), n(version as i64));
        item.insert("state".into(), AttributeValue::S(job.state.as_str().into()));
        item.insert(
            "expires_at".into(),
            n((job.updated_at + Duration::days(JOB_TTL_DAYS)).timestamp()),
        );
        item
    }
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn backend<E: std::error::Error + 'static>(e: E) -> StoreError {
    StoreError::Backend(DisplayErrorContext(e).to_string())
}

fn s_attr<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| StoreError::Corrupt(format!("item without string attribute {name}")))
}

fn parse_job(item: &Item) -> Result<Job, StoreError> {
    serde_json::from_str(s_attr(item, "body")?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

macro_rules! conditional {
    ($result:expr, $is_cond:ident) => {
        match $result {
            Ok(_) => Ok(true),
            Err(e) => {
                let se = e.into_service_error();
                if se.$is_cond() {
                    Ok(false)
                } else {
                    Err(backend(se))
                }
            }
        }
    };
}

#[async_trait::async_trait]
impl JobStore for DynamoJobStore {
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("job", id.as_str())))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        out.item().map(parse_job).transpose()
    }

    async fn insert(&self, job: &Job) -> Result<bool, StoreError> {
        let r = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::job_item(job, 1)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        conditional!(r, is_conditional_check_failed_exception)
    }

    async fn replace(&self, job: &Job) -> Result<bool, StoreError> {
        let r = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(Self::job_item(job, job.version + 1)))
            .condition_expression("ver = :v")
            .expression_attribute_values(":v", n(job.version as i64))
            .send()
            .await;
        conditional!(r, is_conditional_check_failed_exception)
    }

    async fn recent(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", AttributeValue::S("job".into()))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 100) as i32)
            .send()
            .await
            .map_err(backend)?;
        out.items().iter().map(parse_job).collect()
    }

    async fn acquire_lock(
        &self,
        job: &JobId,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        steal_from: Option<&JobId>,
    ) -> Result<Lock, StoreError> {
        let mut item = Self::key("lock", "fleet");
        item.insert("job_id".into(), AttributeValue::S(job.as_str().into()));
        item.insert("lease_until".into(), n(lease_until.timestamp()));
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .expression_attribute_values(":j", AttributeValue::S(job.as_str().into()))
            .expression_attribute_values(":now", n(now.timestamp()));
        req = match steal_from {
            Some(other) => req
                .condition_expression(
                    "attribute_not_exists(pk) OR job_id = :j OR lease_until < :now OR job_id = :other",
                )
                .expression_attribute_values(":other", AttributeValue::S(other.as_str().into())),
            None => req.condition_expression("attribute_not_exists(pk) OR job_id = :j OR lease_until < :now"),
        };
        if conditional!(req.send().await, is_conditional_check_failed_exception)? {
            return Ok(Lock::Acquired);
        }
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("lock", "fleet")))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        match out.item() {
            Some(item) => {
                let holder = s_attr(item, "job_id")?;
                Ok(Lock::HeldBy(
                    JobId::parse(holder).map_err(|e| StoreError::Corrupt(e.into()))?,
                ))
            }
            None => Box::pin(self.acquire_lock(job, lease_until, now, steal_from)).await,
        }
    }

    async fn release_lock(&self, job: &JobId) -> Result<(), StoreError> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("lock", "fleet")))
            .condition_expression("job_id = :j")
            .expression_attribute_values(":j", AttributeValue::S(job.as_str().into()))
            .send()
            .await;
        conditional!(r, is_conditional_check_failed_exception).map(|_| ())
    }

    async fn get_setting(&self, name: &str, now: DateTime<Utc>) -> Result<Option<Value>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("setting", name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        // TTL deletion runs late (up to days): an expired item is treated as absent.
        if let Some(exp) = item.get("expires_at").and_then(|v| v.as_n().ok())
            && exp.parse::<i64>().is_ok_and(|e| e <= now.timestamp())
        {
            return Ok(None);
        }
        serde_json::from_str(s_attr(item, "value")?)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn put_setting(
        &self,
        name: &str,
        value: &Value,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let mut item = Self::key("setting", name);
        item.insert("value".into(), AttributeValue::S(value.to_string()));
        if let Some(e) = expires_at {
            item.insert("expires_at".into(), n(e.timestamp()));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_setting(&self, name: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("setting", name)))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// Create the table as the CDK app defines it (tests against moto, and the local
/// runner when pointed at a DynamoDB endpoint).
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        StreamSpecification, StreamViewType,
    };
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type set")
    };
    let key = |name: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(t)
            .build()
            .expect("name and type set")
    };
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .expect("enabled set"),
        )
        .send()
        .await
        .map_err(backend)?;
    Ok(())
}
