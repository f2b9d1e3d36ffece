//! The archive a VM sends for a data export: a tar stream of its matching files (paths
//! relative to its workspace directory) whose LAST entry is [`MANIFEST_ENTRY`], this
//! manifest. The daemon writes it; the export job reads it back into the one zip.

use serde::{Deserialize, Serialize};

/// The name of the manifest entry, last in every VM archive.
pub const MANIFEST_ENTRY: &str = ".lablink-export-manifest.json";

/// How much of a manifest the assembler may hold while reading it: every byte outside
/// `files` counts (so `skipped` and any one string fit in it), and in `files`, which it
/// skips over, only `[` and `{` (a byte per nesting level), so any number of files fits.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveManifest {
    pub files: Vec<ArchivedFile>,
    pub skipped: Vec<SkippedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// Unix seconds.
    pub modified: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub bytes: u64,
    pub reason: String,
}

/// Whether `path` (relative, `/`-separated) is one an archive may name: no absolute
/// path, no `..`, no empty or `.` component, no control character, no backslash (some
/// unzip tools on Windows split on it, so `a\..\..\x` could escape their folder).
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path.len() <= 4096
        && !path.chars().any(|c| c.is_control() || c == '\\')
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        for ok in ["a.slp", "session 1/labels.v001.slp", "ünï/c.slp"] {
            assert!(is_safe_relative_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x.slp",
            "a/../../x",
            "a//b",
            "./a",
            "a\nb",
            "a\\..\\..\\x.slp",
        ] {
            assert!(!is_safe_relative_path(bad), "{bad:?}");
        }
    }
}
