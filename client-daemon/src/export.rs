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
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lablink_core::domain::export::{ArchiveManifest, ArchivedFile, MANIFEST_ENTRY, SkippedFile};
use lablink_wire::{ExportReport, ExportState, ExportTask};
use sha2::{Digest, Sha256};

use crate::api::{Api, ApiError};
use crate::config::Config;

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
    // Archives a crash left behind.
    if let Ok(entries) = std::fs::read_dir(&cfg.state_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("export-") && name.ends_with(".tar.partial") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut backoff = Duration::from_secs(1);
    // The last task's report, kept until the server takes it: a repeated task (the
    // report was lost) is answered again without collecting again.
    let mut answered: Option<ExportReport> = None;
    loop {
        match api.export_poll().await {
            Ok(Some(task)) => {
                let finished = match &answered {
                    Some(report) if report.job_id == task.job_id => send_report(api, report).await,
                    _ => {
                        let report = run_task(cfg, api, &task).await;
                        let finished = match &report {
                            Some(r) => send_report(api, r).await,
                            None => true,
                        };
                        if let Some(r) = report {
                            answered = Some(r);
                        }
                        finished
                    }
                };
                if finished {
                    backoff = Duration::from_secs(1);
                } else {
                    // The server did not take the answer (throttled, unreachable): the
                    // same task will come back; wait before asking.
                    tracing::warn!(job = %task.job_id, ?backoff, "export answer not delivered; retrying later");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            Ok(None) => backoff = Duration::from_secs(1),
            Err(e) => {
                let wait = if is_final(&e) {
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

/// A refusal that a retry will not change: the VM is not part of the export (404) or the
/// export no longer takes its answer (409). Throttling (429), auth and server errors
/// are worth another try.
fn is_final(e: &ApiError) -> bool {
    matches!(e, ApiError::Status { status, .. } if *status == reqwest::StatusCode::NOT_FOUND || *status == reqwest::StatusCode::CONFLICT)
}

/// Send a final report, retrying transient failures a few times; true once the server
/// took it or refused it for good.
async fn send_report(api: &Api, report: &ExportReport) -> bool {
    let job = report.job_id.as_str();
    for attempt in 0..5u32 {
        match api.export_report(report).await {
            Ok(()) => {
                tracing::info!(job, state = ?report.state, "export reported");
                return true;
            }
            Err(e) if is_final(&e) => {
                tracing::warn!(job, error = %e, "export report refused");
                return true;
            }
            Err(e) => {
                tracing::warn!(job, error = %e, attempt, "export report failed; retrying");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
    false
}

/// Do one export task: its final report, or `None` when the export no longer wants it.
pub async fn run_task(cfg: &Config, api: &Api, task: &ExportTask) -> Option<ExportReport> {
    let job = task.job_id.as_str();
    let report = |state| ExportReport {
        job_id: task.job_id.clone(),
        state,
    };
    tracing::info!(job, dir = %cfg.export_dir().display(), "export requested");
    if let Err(e) = api.export_report(&report(ExportState::Uploading)).await {
        tracing::warn!(job, error = %e, "export not reported as started");
        if is_final(&e) {
            return None;
        }
    }
    Some(report(match collect_and_upload(cfg, api, task).await {
        Ok(c) if c.files == 0 => ExportState::NoFiles { skipped: c.skipped },
        Ok(c) => ExportState::Done {
            files: c.files,
            bytes: c.bytes,
            skipped: c.skipped,
        },
        Err(reason) => {
            tracing::error!(job, %reason, "export failed");
            ExportState::Failed { detail: Some(reason) }
        }
    }))
}

async fn collect_and_upload(cfg: &Config, api: &Api, task: &ExportTask) -> Result<Collected, String> {
    let archive = cfg
        .state_dir
        .join(format!("export-{}.tar.partial", safe(&task.job_id)));
    let (dir, exts, max) = (cfg.export_dir(), task.extensions.clone(), task.max_file_bytes);
    let out = archive.clone();
    let kept = crate::workspace::kept_homes(&cfg.state_dir);
    let extra: Vec<(PathBuf, String)> = kept
        .iter()
        .map(|(id, p)| (p.clone(), format!("previous-participants/{id}")))
        .collect();
    let collected = tokio::task::spawn_blocking(move || write_archive_with(&dir, &extra, &exts, max, &out))
        .await
        .map_err(|e| format!("collecting files: {e}"))?
        .map_err(|e| format!("collecting files under {}: {e}", cfg.export_dir().display()));
    let uploaded = match collected {
        Ok(c) => api
            .upload(&task.upload_url, &archive, task.deadline)
            .await
            .map(|()| c)
            .map_err(|e| format!("uploading the archive: {e}")),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&archive);
    if uploaded.is_ok() {
        // Kept "for the next data export" only: this one has them.
        for (_, dir) in kept {
            if let Some(parent) = dir.parent()
                && let Err(e) = std::fs::remove_dir_all(parent)
            {
                tracing::warn!(error = %e, dir = %parent.display(), "cannot remove exported kept files");
            }
        }
    }
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

/// S3 takes at most 5 GiB in one `PUT`: a VM's archive stops short of it, and the files
/// that would not fit are listed as skipped.
pub const MAX_ARCHIVE_BYTES: u64 = 5 * 1024 * 1024 * 1024 - 16 * 1024 * 1024;

/// How deep the walk goes below the workspace.
const MAX_DEPTH: usize = 32;

/// Write the tar of the files under `root` whose extension is in `exts` to `out`,
/// manifest last.
///
/// The walk holds each folder open and opens what is in it relative to that handle
/// (`openat` with `O_NOFOLLOW`), never by path: a symbolic link is never followed, not
/// even one swapped in for a folder or a file while the walk runs (the daemon runs as
/// root; the workspace belongs to the participant). Links whose name matches are listed
/// as skipped; so are files over `max_bytes` (checked on the opened file), names that
/// are not UTF-8 or hold a backslash, and files past [`MAX_ARCHIVE_BYTES`].
pub fn write_archive(root: &Path, exts: &[String], max_bytes: u64, out: &Path) -> io::Result<Collected> {
    write_archive_with(root, &[], exts, max_bytes, out)
}

/// [`write_archive`], with `extra` folders under their own prefix in the archive: the
/// files an admin's release kept of earlier participants (`previous-participants/<n>`).
pub fn write_archive_with(
    root: &Path,
    extra: &[(PathBuf, String)],
    exts: &[String],
    max_bytes: u64,
    out: &Path,
) -> io::Result<Collected> {
    let file = File::create(out)?;
    let mut w = Walk {
        tar: tar::Builder::new(BufWriter::with_capacity(256 * 1024, file)),
        exts,
        max_bytes,
        manifest: ArchiveManifest::default(),
        sum: Collected::default(),
        archive_bytes: 1024,
    };
    w.tar.mode(tar::HeaderMode::Deterministic);
    // The configured root itself may be a link (an admin's choice); nothing below it.
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(root)
    {
        Ok(dir) => w.folder(&dir, "", 0),
        // No workspace is no files.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for (dir, prefix) in extra {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir);
        match opened {
            Ok(d) => w.folder(&d, prefix, 1),
            Err(e) => w.skip(prefix.clone(), 0, format!("folder unreadable: {e}")),
        }
    }
    let Walk {
        mut tar,
        mut manifest,
        mut sum,
        ..
    } = w;
    sum.skipped = manifest.skipped.len() as u64;
    manifest.skipped.sort_by(|a, b| a.path.cmp(&b.path));
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

struct Walk<'a, W: Write> {
    tar: tar::Builder<W>,
    exts: &'a [String],
    max_bytes: u64,
    manifest: ArchiveManifest,
    sum: Collected,
    /// What the tar will weigh so far (headers and padding counted generously).
    archive_bytes: u64,
}

impl<W: Write> Walk<'_, W> {
    fn skip(&mut self, path: String, bytes: u64, reason: impl Into<String>) {
        self.manifest.skipped.push(SkippedFile {
            path,
            bytes,
            reason: reason.into(),
        });
    }

    /// Everything in the open folder `dir` (at `rel`, "" for the root).
    fn folder(&mut self, dir: &File, rel: &str, depth: usize) {
        // `/proc/self/fd/N` is the open folder itself, whatever happened to its path.
        let entries = match std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) {
            Ok(e) => e,
            Err(e) => return self.skip(rel.to_owned(), 0, format!("folder unreadable: {e}")),
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let raw = entry.file_name();
            let shown = raw.to_string_lossy();
            let path = if rel.is_empty() {
                shown.to_string()
            } else {
                format!("{rel}/{shown}")
            };
            // `DirEntry::file_type` does not follow links.
            let Ok(kind) = entry.file_type() else { continue };
            let named = matches(&shown, self.exts);
            if kind.is_symlink() {
                if named {
                    self.skip(path, 0, "symbolic link (not followed)");
                }
                continue;
            }
            let Some(name) = raw.to_str() else {
                if named || kind.is_dir() {
                    self.skip(path, 0, "the name is not UTF-8");
                }
                continue;
            };
            if name.contains('\\') {
                if named || kind.is_dir() {
                    self.skip(path, 0, "the name holds a backslash");
                }
                continue;
            }
            if kind.is_dir() {
                if depth + 1 >= MAX_DEPTH {
                    self.skip(path, 0, format!("more than {MAX_DEPTH} folders deep"));
                    continue;
                }
                match open_at(dir, name, libc::O_DIRECTORY) {
                    Ok(sub) => self.folder(&sub, &path, depth + 1),
                    Err(e) => self.skip(path, 0, format!("folder unreadable: {e}")),
                }
                continue;
            }
            if !kind.is_file() || !named {
                continue;
            }
            if rel.is_empty() && name == MANIFEST_ENTRY {
                self.skip(path, 0, "reserved name");
                continue;
            }
            match open_at(dir, name, libc::O_NONBLOCK) {
                Ok(file) => self.file(file, path),
                Err(e) => self.skip(path, 0, format!("unreadable: {e}")),
            }
        }
    }

    fn file(&mut self, file: File, path: String) {
        // Sizes and type from the opened file: what is read is what was checked.
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return self.skip(path, 0, format!("unreadable: {e}")),
        };
        if !meta.is_file() {
            return self.skip(path, 0, "not a regular file");
        }
        let size = meta.len();
        if size > self.max_bytes {
            return self.skip(path, size, format!("over the {}-byte limit", self.max_bytes));
        }
        let cost = size.div_ceil(512) * 512 + 1024 + path.len() as u64;
        if self.archive_bytes + cost > MAX_ARCHIVE_BYTES {
            return self.skip(path, size, "past the 5 GiB archive limit of one VM");
        }
        match append_file(&mut self.tar, file, &meta, &path) {
            Ok(f) => {
                self.archive_bytes += cost;
                self.sum.files += 1;
                self.sum.bytes += f.bytes;
                self.manifest.files.push(f);
            }
            Err(e) => self.skip(path, size, format!("unreadable: {e}")),
        }
    }
}

/// `name` inside the open folder `dir`, never following a link.
fn open_at(dir: &File, name: &str, flags: i32) -> io::Result<File> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `dir` is an open descriptor and `c` a NUL-terminated name; the returned
    // descriptor is owned by the `File` made from it.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// One opened file into the tar, its size fixed by its own metadata, hashed while copied.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    file: File,
    meta: &std::fs::Metadata,
    rel: &str,
) -> io::Result<ArchivedFile> {
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
    pub async fn export_poll(&self) -> Result<Option<ExportTask>, ApiError> {
        let Some((status, text, url)) = self.holder_post("/vm_export").await? else {
            return Ok(None);
        };
        let bad = |body: String| ApiError::Status { url, status, body };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| bad(format!("not an export task: {e}")))
    }

    /// `POST /api/vm-export/{hostname}`: this VM's progress on an export.
    pub async fn export_report(&self, report: &ExportReport) -> Result<(), ApiError> {
        self.post(&format!("/api/vm-export/{}", self.hostname()), report)
            .await
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
    fn homes_a_release_kept_are_archived_under_their_own_prefix() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("now.slp"), b"current").unwrap();
        let kept = state.path().join("kept/7/home/client");
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(kept.join("before.slp"), b"earlier participant").unwrap();
        // Not a kept home: ignored.
        std::fs::create_dir_all(state.path().join("kept/not-a-number/home")).unwrap();
        let homes = crate::workspace::kept_homes(state.path());
        assert_eq!(homes, vec![(7, state.path().join("kept/7/home"))]);
        let extra: Vec<(PathBuf, String)> = homes
            .iter()
            .map(|(id, p)| (p.clone(), format!("previous-participants/{id}")))
            .collect();
        let out = state.path().join("a.tar");
        let c = write_archive_with(root.path(), &extra, &["slp".into()], 1000, &out).unwrap();
        assert_eq!(c.files, 2);
        let mut names: Vec<String> = tar::Archive::new(File::open(&out).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .filter(|n| n != MANIFEST_ENTRY)
            .collect();
        names.sort();
        assert_eq!(names, ["now.slp", "previous-participants/7/client/before.slp"]);
    }

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
        std::fs::write(r.join("odd\\name.slp"), b"backslash").unwrap();
        std::fs::write(r.join(MANIFEST_ENTRY), b"{}").unwrap();
        let out = outside.path().join("a.tar");
        let c = write_archive(r, &["slp".into(), "json".into()], 1000, &out).unwrap();
        assert_eq!(
            c,
            Collected {
                files: 2,
                bytes: 14,
                skipped: 4
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
