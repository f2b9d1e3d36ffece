//! Every VM's archive into ONE zip: a folder per hostname with its files, plus
//! `manifest.csv` (hostname, participant email, path, bytes, sha256, modified time,
//! skipped reason). Streamed end to end: an archive is read entry by entry and each byte
//! goes straight on to the zip's sink. What grows with the number of files (the zip's
//! central directory, the manifest's rows) goes to temporary files (`spill`),
//! and a VM's own manifest is read as it streams past, so memory stays at a part buffer
//! and a few fixed buffers whatever the files weigh and however many they are. The one
//! per-file set kept is a VM's path digests (16 bytes a file, at most
//! [`MAX_ENTRIES_PER_VM`], dropped after that VM).

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lablink_core::domain::export::{MANIFEST_ENTRY, MAX_MANIFEST_BYTES, SkippedFile, is_safe_relative_path};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::spill::Spill;
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
    write_zip_within(zip, parts, open, now, SPILL_BUDGET)
}

fn sends_archive(part: &VmPart) -> bool {
    part.state == "done" || part.state == "no_files"
}

fn write_zip_within<W: Write>(
    zip: &mut ZipWriter<W>,
    parts: &[VmPart],
    open: &mut Opener<'_>,
    now: DateTime<Utc>,
    budget: u64,
) -> io::Result<Assembled> {
    let mut csv = Csv::default();
    let mut sum = Assembled::default();
    let mut to_come = parts.iter().filter(|p| sends_archive(p)).count() as u64;
    for part in parts {
        let email = part.email.as_deref().unwrap_or("");
        if !sends_archive(part) {
            let reason = match &part.detail {
                Some(d) => format!("{}: {d}", part.state),
                None => part.state.clone(),
            };
            csv.row(&part.hostname, email, "", None, "", "", &reason);
            continue;
        }
        // This VM's share of the temporary space: what the VMs before it left, divided
        // among it and the VMs still to come.
        let used = zip.central_directory_bytes() + csv.len();
        let share = Share {
            start: used,
            bytes: budget.saturating_sub(used) / to_come.max(1),
        };
        to_come -= 1;
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
        match copy_archive(zip, part, email, reader, &mut csv, &mut sum, share) {
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
    let (rows, len) = csv.finish()?;
    zip.start_entry("manifest.csv", now.timestamp(), len)?;
    rows.copy_to(zip)?;
    zip.finish_entry()?;
    Ok(sum)
}

/// The temporary space (the central directory and `manifest.csv` together) that all the
/// VMs' files may take: Lambda's `/tmp` is 512 MB unless configured otherwise. A VM past
/// its share gets its remaining files refused in one row of the manifest: one
/// participant's absurd archive (hundreds of thousands of files under 4 KiB paths)
/// cannot fill the disk for the class; ordinary files take ~350 bytes each, so the
/// share of each of 100 VMs still holds about 10,000.
pub const SPILL_BUDGET: u64 = 384 * 1024 * 1024;

/// A VM's share of [`SPILL_BUDGET`]: `bytes` from a total of `start`.
#[derive(Debug, Clone, Copy)]
struct Share {
    start: u64,
    bytes: u64,
}

impl Share {
    fn used_up<W: Write>(&self, zip: &ZipWriter<W>, csv: &Csv) -> bool {
        zip.central_directory_bytes() + csv.len() - self.start > self.bytes
    }

    fn refusal(&self) -> String {
        format!(
            "refused: its file names take more than its share of the export's temporary space ({} bytes); the rest is not exported",
            self.bytes
        )
    }
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
    share: Share,
) -> Result<(), CopyError> {
    let host = &part.hostname;
    // Paths seen in this archive, as SHA-256 prefixes (16 bytes, not the path's 4 KiB).
    let mut seen: HashSet<[u8; 16]> = HashSet::new();
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
        if share.used_up(zip, csv) {
            csv.row(host, email, "", None, "", "", &share.refusal());
            return Ok(());
        }
        if path == MANIFEST_ENTRY && kind == tar::EntryType::Regular {
            // Rows go out as they are parsed: if the manifest turns out damaged, those
            // before the damage stay, and the damage is listed after them.
            let mut listed = 0usize;
            let mut refused = None;
            read_skipped(&mut entry, MAX_MANIFEST_BYTES, &mut |s: SkippedFile| {
                listed += 1;
                if refused.is_some() || listed > MAX_ENTRIES_PER_VM {
                    return;
                }
                if share.used_up(zip, csv) {
                    refused = Some(share.refusal());
                    return;
                }
                sum.skipped += 1;
                csv.row(host, email, &s.path, Some(s.bytes), "", "", &s.reason);
            })?;
            if let Some(reason) = refused {
                csv.row(host, email, "", None, "", "", &reason);
            }
            continue;
        }
        let digest: [u8; 32] = Sha256::digest(path.as_bytes()).into();
        let mut first16 = [0u8; 16];
        first16.copy_from_slice(&digest[..16]);
        if kind != tar::EntryType::Regular || !is_safe_relative_path(&path) || !seen.insert(first16) {
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

/// A VM's manifest (the archive's [`MANIFEST_ENTRY`]), read as it streams past: each
/// entry of `skipped` goes to `row` as soon as it is parsed, and any other key's value
/// (`files`: the zip has them already) is skipped over without being kept. What the
/// parser holds is bounded by `budget` ([`Budgeted`]).
fn read_skipped(entry: impl Read, budget: u64, row: &mut dyn FnMut(SkippedFile)) -> io::Result<()> {
    let skipping = Cell::new(false);
    let reader = Budgeted {
        inner: io::BufReader::new(entry),
        left: budget,
        skipping: &skipping,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    ManifestSeed {
        row,
        skipping: &skipping,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("its manifest: {e}")))
}

/// A manifest's bytes, charged against [`MAX_MANIFEST_BYTES`]; past it they read as the
/// end of the input. Where the parser holds what it reads (keys, `skipped`'s strings)
/// every byte is charged; in a value it skips over (`skipping`) it keeps only a byte per
/// nesting level, so only `[` and `{` are charged there. So a manifest listing any number
/// of files goes through, and the parser never holds more than the budget.
struct Budgeted<'a, R> {
    inner: R,
    left: u64,
    skipping: &'a Cell<bool>,
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let cost = if self.skipping.get() {
            buf[..n].iter().filter(|&&b| b == b'[' || b == b'{').count() as u64
        } else {
            n as u64
        };
        if cost > self.left {
            self.left = 0;
            return Ok(0);
        }
        self.left -= cost;
        Ok(n)
    }
}

struct ManifestSeed<'a, 'r> {
    row: &'a mut dyn FnMut(SkippedFile),
    skipping: &'r Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for ManifestSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ManifestSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an export manifest")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Skipped => map.next_value_seed(SkippedSeed(&mut *self.row))?,
                Key::Other => {
                    self.skipping.set(true);
                    let ignored = map.next_value::<IgnoredAny>();
                    self.skipping.set(false);
                    ignored?;
                }
            }
        }
        Ok(())
    }
}

/// A manifest's key: `skipped`, or one whose value is skipped over.
enum Key {
    Skipped,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(if v == "skipped" { Key::Skipped } else { Key::Other })
            }
        }
        d.deserialize_identifier(V)
    }
}

struct SkippedSeed<'a>(&'a mut dyn FnMut(SkippedFile));

impl<'de> DeserializeSeed<'de> for SkippedSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SkippedSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of skipped files")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(s) = seq.next_element::<SkippedFile>()? {
            (self.0)(s);
        }
        Ok(())
    }
}

/// `manifest.csv`, RFC 4180. A cell a spreadsheet would run as a formula (`=`, `+`, `-`,
/// `@` first) gets a leading `'`, and control characters become spaces: file names,
/// emails and VM reasons come from participants. Rows go to a [`Spill`] as they come; a
/// write error (a full disk) is kept and returned by [`Csv::finish`].
struct Csv {
    rows: Spill,
    line: String,
    error: Option<io::Error>,
}

impl Default for Csv {
    fn default() -> Self {
        let mut csv = Csv {
            rows: Spill::default(),
            line: String::new(),
            error: None,
        };
        csv.push("hostname,participant_email,path,bytes,sha256,modified_utc,skipped_reason\r\n");
        csv
    }
}

impl Csv {
    /// The bytes so far.
    fn len(&self) -> u64 {
        self.rows.len()
    }

    fn push(&mut self, line: &str) {
        if self.error.is_none()
            && let Err(e) = self.rows.write_all(line.as_bytes())
        {
            self.error = Some(e);
        }
    }

    /// The rows and their length, or the first write error.
    fn finish(self) -> io::Result<(Spill, u64)> {
        match self.error {
            Some(e) => Err(e),
            None => {
                let len = self.rows.len();
                Ok((self.rows, len))
            }
        }
    }

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
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let bytes = bytes.map(|b| b.to_string()).unwrap_or_default();
        let cells = [host, email, path, bytes.as_str(), sha, modified, reason];
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push(',');
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
                line.push('"');
                line.push_str(&defused.replace('"', "\"\""));
                line.push('"');
            } else {
                line.push_str(&defused);
            }
        }
        line.push_str("\r\n");
        self.push(&line);
        self.line = line;
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
        let (rows, _) = c.finish().unwrap();
        let mut text = Vec::new();
        rows.copy_to(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
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

    fn manifest_rows(json: &str, budget: u64) -> io::Result<Vec<String>> {
        let mut rows = Vec::new();
        read_skipped(json.as_bytes(), budget, &mut |s: SkippedFile| {
            rows.push(format!("{} {} {}", s.path, s.bytes, s.reason))
        })?;
        Ok(rows)
    }

    #[test]
    fn a_manifest_longer_than_the_budget_passes_when_its_files_list_is_what_is_long() {
        let files: Vec<String> = (0..2_000)
            .map(|i| {
                format!(
                    r#"{{"path":"{}/{i}.slp","bytes":1,"sha256":"ab","modified":0}}"#,
                    "p".repeat(100)
                )
            })
            .collect();
        let json = format!(
            r#"{{"files":[{}],"skipped":[{{"path":"big.slp","bytes":9,"reason":"too big"}}]}}"#,
            files.join(",")
        );
        assert!(json.len() > 200_000);
        // In `files` only the braces count: one a file.
        assert_eq!(manifest_rows(&json, 5_000).unwrap(), ["big.slp 9 too big"]);
        // What the parser would hold is charged: a long string, or deep nesting where it
        // skips.
        let long = format!(
            r#"{{"files":[],"skipped":[{{"path":"{}","bytes":1,"reason":""}}]}}"#,
            "x".repeat(6_000)
        );
        assert!(manifest_rows(&long, 5_000).is_err());
        let deep = format!(r#"{{"files":{}{}}}"#, "[".repeat(6_000), "]".repeat(6_000));
        assert!(manifest_rows(&deep, 5_000).is_err());
        assert!(manifest_rows(&deep, 20_000).unwrap().is_empty());
    }

    #[test]
    fn a_vm_past_its_share_of_the_temporary_space_loses_the_rest_and_says_so() {
        let name = |i: usize| format!("{}/{i:03}.slp", "n".repeat(150));
        let names: Vec<String> = (0..100).map(name).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let big = tar_of(&files);
        let small = tar_of(&files[..5]);
        let parts: Vec<VmPart> = ["vm-big", "vm-small"]
            .iter()
            .map(|h| VmPart {
                hostname: (*h).into(),
                email: None,
                state: "done".into(),
                detail: None,
            })
            .collect();
        let archives = [("vm-big", big), ("vm-small", small)];
        let mut open = |host: &str| -> Result<Option<Box<dyn Read + Send>>, StorageError> {
            let data = archives.iter().find(|(h, _)| *h == host).unwrap().1.clone();
            Ok(Some(Box::new(std::io::Cursor::new(data))))
        };
        let mut zip = ZipWriter::new(Vec::new());
        // ~400 bytes a file (central record + row): vm-big's half holds about 25 files.
        let sum = write_zip_within(&mut zip, &parts, &mut open, Utc::now(), 20_000).unwrap();
        let (bytes, _) = zip.finish().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let manifest = &text[text.rfind("hostname,").unwrap()..];
        assert!(
            manifest.contains(
                "vm-big,,,,,,refused: its file names take more than its share of the export's temporary space ("
            ),
            "{manifest}"
        );
        assert!(
            (20..40).contains(&sum.files),
            "vm-big's share, then vm-small's 5: {}",
            sum.files
        );
        assert!(
            text.contains(&format!("vm-small/{}", name(4))),
            "the next VM still gets its files"
        );
    }

    #[test]
    fn the_name_is_the_classic_one() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T09:05:03Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(zip_name(t), "lablink_data20261124090503.zip");
    }
}
