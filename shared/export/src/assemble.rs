//! Every VM's archive into ONE zip: a folder per hostname with its files, plus
//! `manifest.csv` (hostname, participant email, path, bytes, sha256, modified time,
//! skipped reason). Streamed end to end: an archive is read entry by entry and each byte
//! goes straight on to the zip's sink, so memory stays at a part buffer and the manifest's
//! rows, whatever the files weigh.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lablink_core::domain::export::{
    ArchiveManifest, MANIFEST_ENTRY, MAX_MANIFEST_BYTES, is_safe_relative_path,
};
use sha2::{Digest, Sha256};

use crate::storage::{ExportStorage, StorageError};
use crate::zip::ZipWriter;

/// One VM's part of the export, as the collection left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPart {
    pub hostname: String,
    pub email: Option<String>,
    /// `done`, `no_files` (both sent an archive), or `failed` / `unreachable`.
    pub state: String,
    pub detail: Option<String>,
}

/// What the zip holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assembled {
    pub files: u64,
    /// The files' bytes.
    pub bytes: u64,
    pub skipped: u64,
    /// The zip's own size.
    pub zip_bytes: u64,
}

/// The download's name: `lablink_data<timestamp>.zip`, as the classic system named it.
pub fn zip_name(started: DateTime<Utc>) -> String {
    format!("lablink_data{}.zip", started.format("%Y%m%d%H%M%S"))
}

/// Assemble `parts` of `job` from `storage` into the zip `name`, on a blocking thread.
/// On error nothing is left as the download.
pub async fn assemble(
    storage: Arc<dyn ExportStorage>,
    job: String,
    name: String,
    parts: Vec<VmPart>,
    now: DateTime<Utc>,
) -> Result<Assembled, StorageError> {
    let sink = storage.create_zip(&job, &name).await?;
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut open = |host: &str| rt.block_on(storage.open_archive(&job, host));
        let mut zip = ZipWriter::new(sink);
        match write_zip(&mut zip, &parts, &mut open, now) {
            Ok(mut summary) => {
                // `finish` fails only on a write error; the sink then goes unfinished
                // (an S3 upload is dropped by the bucket's rule; a local .partial stays).
                let (sink, size) = zip
                    .finish()
                    .map_err(|e| StorageError(format!("writing the zip: {e}")))?;
                sink.complete()
                    .map_err(|e| StorageError(format!("completing the zip: {e}")))?;
                summary.zip_bytes = size;
                Ok(summary)
            }
            Err(e) => {
                // Abort the upload; the partially written zip goes with it.
                zip.into_inner().abort();
                Err(StorageError(format!("writing the zip: {e}")))
            }
        }
    })
    .await
    .map_err(|e| StorageError(format!("the assembly thread failed: {e}")))?
}

/// Reading a VM's archive failed (that VM's remaining files are lost, the export goes
/// on), or writing the zip failed (the export fails).
enum CopyError {
    Archive(io::Error),
    Zip(io::Error),
}

impl From<io::Error> for CopyError {
    fn from(e: io::Error) -> Self {
        CopyError::Archive(e)
    }
}

type Opener<'a> = dyn FnMut(&str) -> Result<Option<Box<dyn Read + Send>>, StorageError> + 'a;

/// The zip's entries and `manifest.csv` (the central directory is the caller's).
pub fn write_zip<W: Write>(
    zip: &mut ZipWriter<W>,
    parts: &[VmPart],
    open: &mut Opener<'_>,
    now: DateTime<Utc>,
) -> io::Result<Assembled> {
    let mut csv = Csv::default();
    let mut sum = Assembled::default();
    for part in parts {
        let email = part.email.as_deref().unwrap_or("");
        if part.state != "done" && part.state != "no_files" {
            let reason = match &part.detail {
                Some(d) => format!("{}: {d}", part.state),
                None => part.state.clone(),
            };
            csv.row(&part.hostname, email, "", None, "", "", &reason);
            continue;
        }
        let reader = match open(&part.hostname) {
            Ok(Some(r)) => r,
            Ok(None) => {
                csv.row(&part.hostname, email, "", None, "", "", "its archive is missing");
                continue;
            }
            Err(e) => {
                csv.row(
                    &part.hostname,
                    email,
                    "",
                    None,
                    "",
                    "",
                    &format!("its archive is unreadable: {e}"),
                );
                continue;
            }
        };
        match copy_archive(zip, part, email, reader, &mut csv, &mut sum) {
            Ok(()) => {}
            Err(CopyError::Zip(e)) => return Err(e),
            Err(CopyError::Archive(e)) => {
                csv.row(
                    &part.hostname,
                    email,
                    "",
                    None,
                    "",
                    "",
                    &format!("its archive is damaged: {e}"),
                );
            }
        }
    }
    zip.entry("manifest.csv", now.timestamp(), csv.0.as_bytes())?;
    Ok(sum)
}

/// A VM's archive holds at most this many entries (beyond: refused, listed).
pub const MAX_ENTRIES_PER_VM: usize = 200_000;
/// The longest path a VM's archive may name.
const MAX_PATH_BYTES: u64 = 4096;

fn copy_archive<W: Write>(
    zip: &mut ZipWriter<W>,
    part: &VmPart,
    email: &str,
    reader: Box<dyn Read + Send>,
    csv: &mut Csv,
    sum: &mut Assembled,
) -> Result<(), CopyError> {
    let host = &part.hostname;
    let mut seen = HashSet::new();
    let mut archive = tar::Archive::new(reader);
    // Raw entries: GNU long names are read here, capped (the tar crate would read any
    // size into memory), and PAX headers are refused.
    let entries = archive.entries()?.raw(true);
    let mut long_name: Option<String> = None;
    let mut buf = vec![0u8; 256 * 1024];
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::GNULongName {
            if entry.size() > MAX_PATH_BYTES + 1 {
                return Err(CopyError::Archive(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a path over {MAX_PATH_BYTES} bytes"),
                )));
            }
            let mut name = Vec::new();
            (&mut entry).take(MAX_PATH_BYTES + 1).read_to_end(&mut name)?;
            while name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(String::from_utf8_lossy(&name).into_owned());
            continue;
        }
        let path = match long_name.take() {
            Some(n) => n,
            None => String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
        };
        count += 1;
        if count > MAX_ENTRIES_PER_VM {
            csv.row(
                host,
                email,
                "",
                None,
                "",
                "",
                &format!("refused: more than {MAX_ENTRIES_PER_VM} files; the rest is not exported"),
            );
            return Ok(());
        }
        if path == MANIFEST_ENTRY && kind == tar::EntryType::Regular {
            let mut text = String::new();
            (&mut entry).take(MAX_MANIFEST_BYTES).read_to_string(&mut text)?;
            let manifest: ArchiveManifest = serde_json::from_str(&text)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("its manifest: {e}")))?;
            for s in manifest.skipped.into_iter().take(MAX_ENTRIES_PER_VM) {
                sum.skipped += 1;
                csv.row(host, email, &s.path, Some(s.bytes), "", "", &s.reason);
            }
            continue;
        }
        if kind != tar::EntryType::Regular || !is_safe_relative_path(&path) || !seen.insert(path.clone()) {
            csv.row(
                host,
                email,
                &path,
                None,
                "",
                "",
                "refused: not a plain file with a safe, unique path",
            );
            continue;
        }
        let size = entry.size();
        let mtime = entry.header().mtime().unwrap_or(0) as i64;
        zip.start_entry(&format!("{host}/{path}"), mtime, size)
            .map_err(CopyError::Zip)?;
        let mut hash = Sha256::new();
        let mut copied = 0u64;
        let mut broken = None;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            };
            hash.update(&buf[..n]);
            zip.write_all(&buf[..n]).map_err(CopyError::Zip)?;
            copied += n as u64;
        }
        // Always close the entry: the zip stays whole even when this archive is not.
        zip.finish_entry().map_err(CopyError::Zip)?;
        if broken.is_some() || copied != size {
            csv.row(
                host,
                email,
                &path,
                Some(copied),
                "",
                "",
                &format!("damaged: {copied} of {size} bytes arrived"),
            );
            return Err(CopyError::Archive(broken.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ends inside a file")
            })));
        }
        sum.files += 1;
        sum.bytes += copied;
        let modified = DateTime::from_timestamp(mtime, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        csv.row(
            host,
            email,
            &path,
            Some(copied),
            &hex::encode(hash.finalize()),
            &modified,
            "",
        );
    }
    Ok(())
}

/// `manifest.csv`, RFC 4180. A cell a spreadsheet would run as a formula (`=`, `+`, `-`,
/// `@` first) gets a leading `'`, and control characters become spaces: file names,
/// emails and VM reasons come from participants.
struct Csv(String);

impl Default for Csv {
    fn default() -> Self {
        Csv("hostname,participant_email,path,bytes,sha256,modified_utc,skipped_reason\r\n".into())
    }
}

impl Csv {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        host: &str,
        email: &str,
        path: &str,
        bytes: Option<u64>,
        sha: &str,
        modified: &str,
        reason: &str,
    ) {
        let bytes = bytes.map(|b| b.to_string()).unwrap_or_default();
        let cells = [host, email, path, bytes.as_str(), sha, modified, reason];
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let clean: String = cell
                .chars()
                .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
                .collect();
            let defused = if clean.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{clean}")
            } else {
                clean
            };
            if defused.contains([',', '"', '\n', '\r']) {
                self.0.push('"');
                self.0.push_str(&defused.replace('"', "\"\""));
                self.0.push('"');
            } else {
                self.0.push_str(&defused);
            }
        }
        self.0.push_str("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        let mut c = Csv::default();
        c.row("vm-1", "a@b.c", "dir,with \"quotes\".slp", Some(3), "ab", "", "");
        c.row("vm-1", "=HYPERLINK(\"x\")", "", None, "", "", "unreachable");
        let lines: Vec<&str> = c.0.split("\r\n").collect();
        assert_eq!(lines[1], "vm-1,a@b.c,\"dir,with \"\"quotes\"\".slp\",3,ab,,");
        assert_eq!(lines[2], "vm-1,\"'=HYPERLINK(\"\"x\"\")\",,,,,unreachable");
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_truncated_archive_costs_its_vm_the_rest_and_the_zip_stays_whole() {
        let good = tar_of(&[("x.slp", b"fine")]);
        let mut cut = tar_of(&[("a.slp", &[1u8; 3000]), ("b.slp", b"lost")]);
        cut.truncate(512 + 1000);
        let long = format!("{}/deep.slp", "d".repeat(150));
        let long_named = tar_of(&[(long.as_str(), b"long name")]);
        let parts: Vec<VmPart> = ["vm-a", "vm-b", "vm-c"]
            .iter()
            .map(|h| VmPart {
                hostname: (*h).into(),
                email: None,
                state: "done".into(),
                detail: None,
            })
            .collect();
        let archives = [("vm-a", cut), ("vm-b", good), ("vm-c", long_named)];
        let mut open = |host: &str| -> Result<Option<Box<dyn Read + Send>>, StorageError> {
            let data = archives.iter().find(|(h, _)| *h == host).unwrap().1.clone();
            Ok(Some(Box::new(std::io::Cursor::new(data))))
        };
        let mut zip = ZipWriter::new(Vec::new());
        let sum = write_zip(&mut zip, &parts, &mut open, Utc::now()).unwrap();
        let (bytes, _) = zip.finish().unwrap();
        assert_eq!((sum.files, sum.bytes), (2, 4 + 9), "vm-b's and vm-c's files");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("vm-a,,a.slp,1000,,,damaged: 1000 of 3000 bytes arrived"),
            "{text}"
        );
        assert!(text.contains("vm-a,,,,,,its archive is damaged"));
        assert!(text.contains(&format!("vm-c/{long}")), "a GNU long name is kept");
    }

    #[test]
    fn the_name_is_the_classic_one() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T09:05:03Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(zip_name(t), "lablink_data20261124090503.zip");
    }
}
