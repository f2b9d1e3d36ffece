//! Data export, the VM's side. The daemon keeps a second long-poll open on the holder
//! (`POST /vm_export`); when an export opens, the holder answers with this VM's task: the
//! extensions to collect, the size limit, the deadline and an upload URL for this VM's
//! archive alone. The daemon then
//!
//! 1. reports `uploading`,
//! 2. writes one tar of the matching files under its workspace directory, with a
//!    manifest as the last entry, to a temporary file (never following a symbolic link,
//!    listing files over the limit as skipped), hashing as it goes: memory stays at a
//!    copy buffer whatever the files weigh,
//! 3. streams that file to the upload URL with one `PUT`,
//! 4. reports `done` (or `no_files`), or `failed` with the reason.
//!
//! No inbound port, no timer: the poll is the only channel.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lablink_core::domain::export::{ArchiveManifest, ArchivedFile, MANIFEST_ENTRY, SkippedFile};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::{Api, ApiError};
use crate::config::Config;

/// What the holder hands this VM.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub job_id: String,
    pub upload_url: String,
    pub extensions: Vec<String>,
    pub max_file_bytes: u64,
    pub deadline: DateTime<Utc>,
}

/// What went into an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
}

/// Poll for exports for the life of the daemon.
pub async fn export_loop(cfg: &Config, api: &Api) {
    if cfg.credential.is_none() {
        tracing::info!("no VM credential: data export is not available to this VM");
        return;
    }
    let mut backoff = Duration::from_secs(1);
    loop {
        match api.export_poll().await {
            Ok(Some(task)) => {
                backoff = Duration::from_secs(1);
                run_task(cfg, api, &task).await;
            }
            Ok(None) => backoff = Duration::from_secs(1),
            Err(e) => {
                let wait = if e.is_client_error() {
                    Duration::from_secs(60)
                } else {
                    backoff
                };
                tracing::warn!(error = %e, ?wait, "export poll failed");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Do one export task and report how it went.
pub async fn run_task(cfg: &Config, api: &Api, task: &Task) {
    let job = task.job_id.as_str();
    tracing::info!(job, dir = %cfg.export_dir.display(), "export requested");
    if let Err(e) = api.export_report(job, json!({ "state": "uploading" })).await {
        // 409: the export closed (deadline) or this VM already answered.
        tracing::warn!(job, error = %e, "export not reported as started");
        if e.is_client_error() {
            return;
        }
    }
    let report = match collect_and_upload(cfg, api, task).await {
        Ok(c) if c.files == 0 => json!({ "state": "no_files", "skipped": c.skipped }),
        Ok(c) => json!({ "state": "done", "files": c.files, "bytes": c.bytes, "skipped": c.skipped }),
        Err(reason) => {
            tracing::error!(job, %reason, "export failed");
            json!({ "state": "failed", "detail": reason })
        }
    };
    for attempt in 0..5u32 {
        match api.export_report(job, report.clone()).await {
            Ok(()) => {
                tracing::info!(job, %report, "export reported");
                return;
            }
            Err(e) if e.is_client_error() => {
                tracing::warn!(job, error = %e, "export report refused");
                return;
            }
            Err(e) => {
                tracing::warn!(job, error = %e, attempt, "export report failed; retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
}

async fn collect_and_upload(cfg: &Config, api: &Api, task: &Task) -> Result<Collected, String> {
    let archive = cfg
        .state_dir
        .join(format!("export-{}.tar.partial", safe(&task.job_id)));
    let (dir, exts, max) = (
        cfg.export_dir.clone(),
        task.extensions.clone(),
        task.max_file_bytes,
    );
    let out = archive.clone();
    let collected = tokio::task::spawn_blocking(move || write_archive(&dir, &exts, max, &out))
        .await
        .map_err(|e| format!("collecting files: {e}"))?
        .map_err(|e| format!("collecting files under {}: {e}", cfg.export_dir.display()));
    let uploaded = match collected {
        Ok(c) => api
            .upload(&task.upload_url, &archive, task.deadline)
            .await
            .map(|()| c)
            .map_err(|e| format!("uploading the archive: {e}")),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&archive);
    uploaded
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `name` ends in one of `exts` (case-insensitive, without the dot).
fn matches(name: &str, exts: &[String]) -> bool {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => exts.iter().any(|e| e.eq_ignore_ascii_case(ext)),
        _ => false,
    }
}

/// Write the tar of the files under `root` whose extension is in `exts` to `out`,
/// manifest last. Symbolic links are listed (when their name matches) and never followed,
/// files are opened with `O_NOFOLLOW` (a file swapped for a link after the listing is
/// refused), files over `max_bytes` are listed as skipped.
pub fn write_archive(root: &Path, exts: &[String], max_bytes: u64, out: &Path) -> io::Result<Collected> {
    let file = File::create(out)?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(256 * 1024, file));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut manifest = ArchiveManifest::default();
    let mut sum = Collected::default();
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel_dir) = pending.pop() {
        let entries = match std::fs::read_dir(root.join(&rel_dir)) {
            Ok(e) => e,
            // The workspace not existing is "no files"; an unreadable folder is listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound && rel_dir.as_os_str().is_empty() => break,
            Err(e) => {
                manifest.skipped.push(SkippedFile {
                    path: rel_dir.to_string_lossy().into_owned(),
                    bytes: 0,
                    reason: format!("folder unreadable: {e}"),
                });
                continue;
            }
        };
        let mut names: Vec<_> = entries.filter_map(Result::ok).collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = rel_dir.join(&name);
            let rel_str = rel.to_string_lossy().into_owned();
            // `DirEntry::file_type` does not follow links.
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_symlink() {
                if matches(&name, exts) {
                    manifest.skipped.push(SkippedFile {
                        path: rel_str,
                        bytes: 0,
                        reason: "symbolic link (not followed)".into(),
                    });
                }
                continue;
            }
            if kind.is_dir() {
                pending.push(rel);
                continue;
            }
            if !kind.is_file() || !matches(&name, exts) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if size > max_bytes {
                manifest.skipped.push(SkippedFile {
                    path: rel_str,
                    bytes: size,
                    reason: format!("over the {max_bytes}-byte limit"),
                });
                continue;
            }
            match append_file(&mut tar, &root.join(&rel), &rel_str) {
                Ok(f) => {
                    sum.files += 1;
                    sum.bytes += f.bytes;
                    manifest.files.push(f);
                }
                Err(e) => manifest.skipped.push(SkippedFile {
                    path: rel_str,
                    bytes: size,
                    reason: format!("unreadable: {e}"),
                }),
            }
        }
    }
    sum.skipped = manifest.skipped.len() as u64;
    let text = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(Utc::now().timestamp() as u64);
    tar.append_data(&mut header, MANIFEST_ENTRY, text.as_slice())?;
    let mut w = tar.into_inner()?;
    w.flush()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(sum)
}

/// One file into the tar: opened without following links, its size fixed by the
/// opened file's own metadata, hashed while copied.
fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &Path, rel: &str) -> io::Result<ArchivedFile> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let size = meta.len();
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(modified.max(0) as u64);
    let mut reader = Exact {
        inner: file.take(size),
        left: size,
        hash: Sha256::new(),
    };
    tar.append_data(&mut header, rel, &mut reader)?;
    Ok(ArchivedFile {
        path: rel.to_owned(),
        bytes: size,
        sha256: hex::encode(reader.hash.finalize()),
        modified,
    })
}

/// Exactly `left` bytes: a file that shrank while being read is padded with zeros (the
/// tar header already said its size), one that grew is cut; the hash is of what is sent.
struct Exact<R> {
    inner: R,
    left: u64,
    hash: Sha256,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            n = want;
            buf[..n].fill(0);
        }
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

impl Api {
    /// The export long-poll on the holder: this VM's task, or `None` when the window
    /// ended with no export open.
    pub async fn export_poll(&self) -> Result<Option<Task>, ApiError> {
        let (status, text, url) = self.holder_post("/vm_export").await?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bad = |body: String| ApiError::Status {
            url: url.clone(),
            status,
            body,
        };
        if !status.is_success() {
            return Err(bad(text.chars().take(300).collect()));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| bad(format!("not an export task: {e}")))
    }

    /// `POST /api/vm-export/{hostname}`: this VM's progress on export `job`.
    pub async fn export_report(&self, job: &str, mut body: serde_json::Value) -> Result<(), ApiError> {
        body["job_id"] = job.into();
        self.post(&format!("/api/vm-export/{}", self.hostname()), body)
            .await
            .map(drop)
    }

    /// One `PUT` of `file` to a presigned `url`, streamed, with its length (S3 needs it).
    pub async fn upload(&self, url: &str, file: &Path, deadline: DateTime<Utc>) -> Result<(), String> {
        let f = tokio::fs::File::open(file).await.map_err(|e| e.to_string())?;
        let len = f.metadata().await.map_err(|e| e.to_string())?.len();
        // Until shortly after the deadline: an upload past it is refused anyway.
        let left = (deadline - Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(600);
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024));
        let resp = self
            .http()
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .timeout(left)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach the upload URL: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text: String = resp.text().await.unwrap_or_default().chars().take(300).collect();
        Err(format!("the upload URL answered {status}: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_match_case_insensitively_and_need_a_stem() {
        let exts = vec!["slp".to_owned(), "h5".to_owned()];
        for ok in ["a.slp", "A.SLP", "x.y.h5"] {
            assert!(matches(ok, &exts), "{ok}");
        }
        for no in [".slp", "slp", "a.slp.bak", "a.txt"] {
            assert!(!matches(no, &exts), "{no}");
        }
    }

    #[test]
    fn the_archive_holds_matching_files_lists_links_and_oversize_and_never_leaves_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("sessions/day1")).unwrap();
        std::fs::write(r.join("labels.slp"), b"top").unwrap();
        std::fs::write(r.join("sessions/day1/more.SLP"), b"nested file").unwrap();
        std::fs::write(r.join("notes.txt"), b"not exported").unwrap();
        std::fs::write(r.join("big.slp"), vec![7u8; 2000]).unwrap();
        std::fs::write(outside.path().join("secret.slp"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.slp"), r.join("link.slp")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("linked-dir")).unwrap();
        let out = outside.path().join("a.tar");
        let c = write_archive(r, &["slp".into()], 1000, &out).unwrap();
        assert_eq!(
            c,
            Collected {
                files: 2,
                bytes: 14,
                skipped: 2
            }
        );

        let mut names = Vec::new();
        let mut manifest = None;
        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if name == MANIFEST_ENTRY {
                manifest = Some(serde_json::from_slice::<ArchiveManifest>(&data).unwrap());
            } else {
                assert!(!data.windows(7).any(|w| w == b"outside"), "{name}");
                names.push(name);
            }
        }
        names.sort();
        assert_eq!(names, ["labels.slp", "sessions/day1/more.SLP"]);
        let m = manifest.expect("the manifest is in the archive");
        let top = m.files.iter().find(|f| f.path == "labels.slp").unwrap();
        assert_eq!(top.sha256, hex::encode(Sha256::digest(b"top")));
        let reasons: Vec<(&str, &str)> = m
            .skipped
            .iter()
            .map(|s| (s.path.as_str(), s.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("big.slp", "over the 1000-byte limit")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("link.slp", "symbolic link (not followed)")),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_missing_workspace_is_an_archive_with_only_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.tar");
        let c = write_archive(&dir.path().join("nope"), &["slp".into()], 10, &out).unwrap();
        assert_eq!(c, Collected::default());
        assert!(std::fs::metadata(&out).unwrap().len() >= 1024);
    }
}
