//! What the daemon must remember across restarts, in `<state-dir>/assignment.json`
//! (mode 0600: it holds a PIN and a one-time code until the run is done):
//! an assignment is recorded as `received` BEFORE start-host runs and as `done` after,
//! so a restart re-runs an interrupted assignment (not lost) and never re-runs a
//! finished one (not repeated), even when the holder hands it over again.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Received,
    /// start-host registered the desktop, but its host has not been seen running yet
    /// (the assignment is not acknowledged: the seat turns `ready` only with a host).
    Registered,
    /// The VM could not run the assignment (start-host aborted, could not run, or timed
    /// out): this VM's problem, reported as `error` to the admin, not acknowledged (the
    /// participant's code was not refused), and not run again.
    Failed,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// SHA-256 of hostname, PIN and command: identifies the assignment.
    pub key: String,
    pub phase: Phase,
    /// Kept only while `received` (needed to run it after a restart); cleared when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// `ok`, or why start-host failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Chrome Remote Desktop was registered already when the run began (a fresh code
    /// re-registers): a registration found after a restart then proves nothing, and the
    /// interrupted run is run again.
    #[serde(default)]
    pub registered_before: bool,
}

impl AssignmentRecord {
    /// The assignment's name, shared with the server ([`lablink_wire::assignment_key`]).
    pub fn key_of(host: &str, pin: &str, command: &str) -> String {
        lablink_wire::assignment_key(host, pin, command)
    }

    pub fn succeeded(&self) -> bool {
        self.phase == Phase::Done && self.outcome.as_deref() == Some("ok")
    }
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir: dir.to_owned() })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn assignment(&self) -> std::io::Result<Option<AssignmentRecord>> {
        match std::fs::read(self.path("assignment.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save_assignment(&self, r: &AssignmentRecord) -> std::io::Result<()> {
        self.write_atomic("assignment.json", &serde_json::to_vec_pretty(r)?)
    }

    /// Forget the assignment (a reset: the next participant's is a new one).
    pub fn forget_assignment(&self) -> std::io::Result<()> {
        self.remove_file("assignment.json")
    }

    /// Remove a file of the state dir; one that is not there is no error.
    pub fn remove_file(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Move an unreadable record aside (kept for a human to look at).
    pub fn quarantine_assignment(&self) -> std::io::Result<()> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        std::fs::rename(
            self.path("assignment.json"),
            self.path(&format!("assignment.json.unreadable-{stamp}")),
        )
    }

    pub fn has_marker(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    pub fn set_marker(&self, name: &str) -> std::io::Result<()> {
        self.write_atomic(name, b"")
    }

    /// Write a file of the state dir atomically (see [`Self::write_atomic`]).
    pub fn write_file(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        self.write_atomic(name, data)
    }

    /// Write to a temporary file, fsync, rename, fsync the directory: a crash leaves the
    /// old or the new content, never a torn file.
    fn write_atomic(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let tmp = self.path(&format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.path(name))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_keys_separate_fields() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(s.assignment().unwrap(), None);
        let r = AssignmentRecord {
            key: AssignmentRecord::key_of("vm-1", "123456", "cmd"),
            phase: Phase::Received,
            command: Some("cmd".into()),
            pin: Some("123456".into()),
            outcome: None,
            registered_before: false,
        };
        s.save_assignment(&r).unwrap();
        let again = StateDir::open(dir.path()).unwrap();
        assert_eq!(again.assignment().unwrap(), Some(r));
        let mode = std::fs::metadata(dir.path().join("assignment.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(
            AssignmentRecord::key_of("vm-1", "12", "3456cmd"),
            AssignmentRecord::key_of("vm-1", "123456", "cmd")
        );
        // A record written before `registered_before` existed still reads.
        std::fs::write(
            dir.path().join("assignment.json"),
            br#"{"key":"k","phase":"done","outcome":"ok"}"#,
        )
        .unwrap();
        let old = s.assignment().unwrap().unwrap();
        assert!(old.succeeded() && !old.registered_before);
        s.forget_assignment().unwrap();
        assert_eq!(s.assignment().unwrap(), None);
        s.forget_assignment().unwrap();
        std::fs::write(dir.path().join("assignment.json"), b"{torn").unwrap();
        assert!(s.assignment().is_err());
        s.quarantine_assignment().unwrap();
        assert_eq!(s.assignment().unwrap(), None);
        assert!(!s.has_marker("metrics-posted"));
        s.set_marker("metrics-posted").unwrap();
        assert!(s.has_marker("metrics-posted"));
    }
}
