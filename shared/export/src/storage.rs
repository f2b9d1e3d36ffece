//! Where export archives go. On AWS: the deployment's export bucket, with a presigned PUT
//! per VM (the VM holds no AWS credential and can write only its own object), a
//! multipart upload for the zip and a short-lived presigned GET for the admin. Locally: a
//! folder of the runner, with HMAC-signed upload URLs served by the runner itself.
//!
//! Keys: `exports/<job>/vms/<hostname>.tar` (a VM's archive) and
//! `exports/<job>/<name>.zip` (the assembled download).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use lablink_core::domain::Hostname;
use sha2::Sha256;
use tokio::runtime::Handle;

pub use aws_sdk_s3::Client as S3Client;

#[derive(Debug, thiserror::Error)]
#[error("export storage: {0}")]
pub struct StorageError(pub String);

fn err(context: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError(format!("{context}: {e}"))
}

/// How the admin gets the zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// A presigned link (303 to it).
    Redirect(String),
    /// A local file the runner serves.
    File(PathBuf),
    /// Not there (never assembled, or expired by the bucket's lifecycle).
    Missing,
}

/// The zip being written: a blocking writer (the assembly runs on a blocking thread).
pub trait ZipSink: Write + Send {
    /// Make the written bytes the download.
    fn complete(self: Box<Self>) -> io::Result<()>;
    /// Give up: nothing is left behind.
    fn abort(self: Box<Self>);
}

#[async_trait]
pub trait ExportStorage: Send + Sync {
    /// `s3` or `local`, for logs and the job page.
    fn kind(&self) -> &'static str;
    /// A URL that accepts one HTTP `PUT` of `host`'s archive for `job`, for `ttl`.
    async fn upload_url(&self, job: &str, host: &Hostname, ttl: Duration) -> Result<String, StorageError>;
    /// `host`'s archive, if it was uploaded, as a blocking reader.
    async fn open_archive(&self, job: &str, host: &str)
    -> Result<Option<Box<dyn Read + Send>>, StorageError>;
    /// Start writing the zip `name` of `job`.
    async fn create_zip(&self, job: &str, name: &str) -> Result<Box<dyn ZipSink>, StorageError>;
    /// How the admin downloads the zip `name` of `job` (a link valid for `ttl`).
    async fn download(&self, job: &str, name: &str, ttl: Duration) -> Result<Download, StorageError>;
}

pub fn archive_key(job: &str, host: &str) -> String {
    format!("exports/{job}/vms/{host}.tar")
}

pub fn zip_key(job: &str, name: &str) -> String {
    format!("exports/{job}/{name}")
}

// ---- S3 --------------------------------------------------------------------------------

/// The export bucket. Parts of the zip are `PART_SIZE` bytes (S3 allows 10,000 parts:
/// 80 GB at most, far past what one 15-minute invocation can assemble).
pub struct S3Storage {
    pub client: S3Client,
    pub bucket: String,
}

pub const PART_SIZE: usize = 8 * 1024 * 1024;

impl S3Storage {
    /// The bucket through `sdk`'s configuration. With an endpoint override (moto, a
    /// local S3) addressing is path-style: bucket subdomains of 127.0.0.1 do not resolve.
    pub fn new(sdk: &aws_config::SdkConfig, bucket: &str) -> Self {
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        Self {
            client: S3Client::from_conf(config),
            bucket: bucket.to_owned(),
        }
    }
}

#[async_trait]
impl ExportStorage for S3Storage {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn upload_url(&self, job: &str, host: &Hostname, ttl: Duration) -> Result<String, StorageError> {
        let config = PresigningConfig::expires_in(ttl).map_err(|e| err("presigning", e))?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(archive_key(job, host.as_str()))
            .content_type("application/x-tar")
            .presigned(config)
            .await
            .map_err(|e| err("presigning the upload", aws_sdk_s3::error::DisplayErrorContext(e)))?;
        Ok(req.uri().to_owned())
    }

    async fn open_archive(
        &self,
        job: &str,
        host: &str,
    ) -> Result<Option<Box<dyn Read + Send>>, StorageError> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(archive_key(job, host))
            .send()
            .await;
        match got {
            Ok(o) => {
                let reader = tokio_util::io::SyncIoBridge::new_with_handle(
                    o.body.into_async_read(),
                    Handle::current(),
                );
                Ok(Some(Box::new(reader)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            // Without s3:ListBucket (the functions have none) a missing key reads as 403.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => Ok(None),
            Err(e) => Err(err(
                &format!("reading {host}'s archive"),
                aws_sdk_s3::error::DisplayErrorContext(e),
            )),
        }
    }

    async fn create_zip(&self, job: &str, name: &str) -> Result<Box<dyn ZipSink>, StorageError> {
        let key = zip_key(job, name);
        let started = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/zip")
            .content_disposition(format!("attachment; filename=\"{name}\""))
            .send()
            .await
            .map_err(|e| {
                err(
                    "starting the zip's upload",
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        let upload_id = started
            .upload_id()
            .ok_or_else(|| StorageError("S3 returned no upload id".into()))?
            .to_owned();
        Ok(Box::new(MultipartSink {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key,
            upload_id,
            buf: Vec::with_capacity(PART_SIZE),
            parts: Vec::new(),
            rt: Handle::current(),
        }))
    }

    async fn download(&self, job: &str, name: &str, ttl: Duration) -> Result<Download, StorageError> {
        // No HEAD first: the functions may not list the bucket, so a missing object would
        // read as 403. The job records the zip once it is complete; a link to one the
        // lifecycle rule expired answers S3's own error.
        let key = zip_key(job, name);
        let config = PresigningConfig::expires_in(ttl).map_err(|e| err("presigning", e))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| {
                err(
                    "presigning the download",
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        Ok(Download::Redirect(req.uri().to_owned()))
    }
}

/// The zip as an S3 multipart upload: at most one part is held in memory.
struct MultipartSink {
    client: S3Client,
    bucket: String,
    key: String,
    upload_id: String,
    buf: Vec<u8>,
    parts: Vec<CompletedPart>,
    rt: Handle,
}

impl MultipartSink {
    fn send_part(&mut self) -> io::Result<()> {
        let number = self.parts.len() as i32 + 1;
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        let sent = self.rt.block_on(
            self.client
                .upload_part()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send(),
        );
        let out = sent.map_err(|e| {
            io::Error::other(format!(
                "uploading part {number}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            ))
        })?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        Ok(())
    }
}

impl Write for MultipartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PART_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PART_SIZE {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZipSink for MultipartSink {
    fn complete(mut self: Box<Self>) -> io::Result<()> {
        if !self.buf.is_empty() || self.parts.is_empty() {
            self.send_part()?;
        }
        let parts = std::mem::take(&mut self.parts);
        self.rt
            .block_on(
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send(),
            )
            .map_err(|e| {
                io::Error::other(format!(
                    "completing the zip: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                ))
            })?;
        Ok(())
    }

    fn abort(self: Box<Self>) {
        let r = self.rt.block_on(
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
                .send(),
        );
        if let Err(e) = r {
            // The bucket's lifecycle rule removes abandoned uploads after a day; until then
            // its parts are billed. `event` is what the stack's alarm counts.
            tracing::warn!(
                event = "export_upload_not_aborted",
                error = %aws_sdk_s3::error::DisplayErrorContext(e),
                "could not abort the zip's upload"
            );
        }
    }
}

// ---- local -----------------------------------------------------------------------------

/// A folder of the local runner. Upload URLs point at the runner's own
/// `PUT /local-export/{job}/{hostname}` and carry an expiry and an HMAC over job,
/// hostname and expiry, like a presigned URL: a VM can write only its own archive.
pub struct LocalStorage {
    pub dir: PathBuf,
    /// The runner's base URL as the VMs reach it (`http://127.0.0.1:8080`).
    pub base_url: String,
    pub key: Vec<u8>,
}

impl LocalStorage {
    fn signature(&self, job: &str, host: &str, expires: i64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("{job}\n{host}\n{expires}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether an upload URL's `expires` and `sig` are this runner's, for `job`/`host`, now.
    pub fn verify(&self, job: &str, host: &str, expires: i64, sig: &str, now: DateTime<Utc>) -> bool {
        let Ok(sig) = hex::decode(sig) else { return false };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("{job}\n{host}\n{expires}").as_bytes());
        mac.verify_slice(&sig).is_ok() && now.timestamp() < expires
    }

    /// Where the zip `name` of `job` lives.
    pub fn zip_path(&self, job: &str, name: &str) -> PathBuf {
        self.dir.join(zip_key(job, name))
    }

    /// Where `host`'s archive of `job` lives.
    pub fn archive_path(&self, job: &str, host: &str) -> PathBuf {
        self.dir.join(archive_key(job, host))
    }
}

#[async_trait]
impl ExportStorage for LocalStorage {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn upload_url(&self, job: &str, host: &Hostname, ttl: Duration) -> Result<String, StorageError> {
        let expires = Utc::now().timestamp() + ttl.as_secs() as i64;
        Ok(format!(
            "{}/local-export/{job}/{host}?expires={expires}&sig={}",
            self.base_url.trim_end_matches('/'),
            self.signature(job, host.as_str(), expires)
        ))
    }

    async fn open_archive(
        &self,
        job: &str,
        host: &str,
    ) -> Result<Option<Box<dyn Read + Send>>, StorageError> {
        match std::fs::File::open(self.archive_path(job, host)) {
            Ok(f) => Ok(Some(Box::new(io::BufReader::with_capacity(256 * 1024, f)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(&format!("reading {host}'s archive"), e)),
        }
    }

    async fn create_zip(&self, job: &str, name: &str) -> Result<Box<dyn ZipSink>, StorageError> {
        let path = self.dir.join(zip_key(job, name));
        let partial = path.with_extension("zip.partial");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err("creating the export folder", e))?;
        }
        let file = std::fs::File::create(&partial).map_err(|e| err("creating the zip", e))?;
        Ok(Box::new(FileSink {
            file: io::BufWriter::with_capacity(1024 * 1024, file),
            partial,
            path,
        }))
    }

    async fn download(&self, job: &str, name: &str, _ttl: Duration) -> Result<Download, StorageError> {
        let path = self.dir.join(zip_key(job, name));
        Ok(if Path::new(&path).is_file() {
            Download::File(path)
        } else {
            Download::Missing
        })
    }
}

/// The zip as a local file, renamed into place when complete.
struct FileSink {
    file: io::BufWriter<std::fs::File>,
    partial: PathBuf,
    path: PathBuf,
}

impl Write for FileSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.file.write(data)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ZipSink for FileSink {
    fn complete(mut self: Box<Self>) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        std::fs::rename(&self.partial, &self.path)
    }

    fn abort(self: Box<Self>) {
        let _ = std::fs::remove_file(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_upload_urls_are_bound_to_their_job_vm_and_expiry() {
        let s = LocalStorage {
            dir: PathBuf::from("/nonexistent"),
            base_url: "http://127.0.0.1:1/".into(),
            key: b"k".repeat(32),
        };
        let host = Hostname::parse("lab-vm-001").unwrap();
        let url = s.upload_url("J1", &host, Duration::from_secs(60)).await.unwrap();
        assert!(url.starts_with("http://127.0.0.1:1/local-export/J1/lab-vm-001?expires="));
        let q = url.split_once('?').unwrap().1;
        let expires: i64 = q.split('&').next().unwrap()[8..].parse().unwrap();
        let sig = q.split_once("sig=").unwrap().1;
        let now = Utc::now();
        assert!(s.verify("J1", "lab-vm-001", expires, sig, now));
        assert!(!s.verify("J1", "lab-vm-002", expires, sig, now), "another VM");
        assert!(!s.verify("J2", "lab-vm-001", expires, sig, now), "another export");
        assert!(
            !s.verify("J1", "lab-vm-001", expires + 1, sig, now),
            "a longer expiry"
        );
        let later = now + chrono::Duration::seconds(61);
        assert!(!s.verify("J1", "lab-vm-001", expires, sig, later), "expired");
        assert!(!s.verify("J1", "lab-vm-001", expires, "zz", now));
    }
}
