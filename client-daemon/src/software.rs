//! The subject software (classic `SUBJECT_SOFTWARE`) and how its process is recognised.
//! Plain values and `/proc` reads only: the configuration, the in-use check and the
//! workspace all use it, and it uses none of them.

use std::path::Path;

/// The subject software to look for (classic `SUBJECT_SOFTWARE`): a process matches
/// when the name is part of its own name (`comm`) or of the file name of its argv[0] or
/// argv[1] (an entry point run by an interpreter, `python /usr/bin/sleap-label`), so
/// `sleap` matches `sleap-label`. Written `=name`, the name must match exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectSoftware {
    name: String,
    exact: bool,
}

impl SubjectSoftware {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, exact) = match s.strip_prefix('=') {
            Some(n) => (n, true),
            None => (s, false),
        };
        if name.is_empty() || name.len() > 255 || name.contains(['/', '\0']) {
            return Err(format!(
                "--subject-software {s:?}: expected a program name like sleap (or =sleap-label to match exactly)"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            exact,
        })
    }

    /// The name looked for (without the `=` of an exact match).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn matches_name(&self, candidate: &str) -> bool {
        if self.exact {
            candidate == self.name
        } else {
            candidate.contains(&self.name)
        }
    }

    /// Whether the process with this `comm` and NUL-separated `cmdline` is the software.
    pub fn matches(&self, comm: &str, cmdline: &[u8]) -> bool {
        // `comm` is cut at 15 bytes: only an exact match on a longer name must skip it.
        if self.matches_name(comm.trim()) {
            return true;
        }
        cmdline.split(|b| *b == 0).take(2).any(|arg| {
            Path::new(&*String::from_utf8_lossy(arg))
                .file_name()
                .is_some_and(|f| self.matches_name(&f.to_string_lossy()))
        })
    }

    /// Whether one of `pids` (all of this host's processes when `None`) is the software.
    pub fn running(&self, pids: Option<&[u32]>) -> bool {
        let check = |dir: &Path| {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            self.matches(&comm, &cmdline)
        };
        match pids {
            Some(pids) => pids
                .iter()
                .any(|p| check(&Path::new("/proc").join(p.to_string()))),
            None => std::fs::read_dir("/proc").is_ok_and(|entries| {
                entries.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        && check(&e.path())
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_software_matches_by_part_of_its_name_or_exactly() {
        let sleap = SubjectSoftware::parse("sleap").unwrap();
        let exact = SubjectSoftware::parse("=sleap-label").unwrap();
        let cmd = |args: &[&str]| args.join("\0").into_bytes();
        // The GUI's entry point, by its own name and by a Python interpreter's argv[1].
        assert!(sleap.matches("sleap-label", &cmd(&["/usr/bin/sleap-label"])));
        assert!(sleap.matches(
            "python3",
            &cmd(&["/usr/bin/python3", "/opt/conda/bin/sleap-label", "x.slp"])
        ));
        assert!(
            !sleap.matches("bash", &cmd(&["bash", "-c", "echo sleap"])),
            "only argv[0..2]'s names"
        );
        assert!(exact.matches("sleap-label", b""));
        assert!(!exact.matches("sleap-train", &cmd(&["/usr/bin/sleap-train"])));
        assert!(!exact.matches("python3", &cmd(&["python3", "/x/sleap-label-old"])));
        for bad in ["", "=", "a/b"] {
            assert!(SubjectSoftware::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finds_a_running_process_by_part_of_its_name_and_among_given_pids() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let sle = SubjectSoftware::parse("slee").unwrap();
        // `spawn` returns once the child is forked; its name is `sleep` only after exec.
        // (Other processes named sleep may run meanwhile: look at ours first.)
        let seen = (0..200).any(|_| {
            sle.running(Some(&[pid])) || {
                std::thread::sleep(std::time::Duration::from_millis(10));
                false
            }
        });
        assert!(seen, "our running sleep is found by its pid within 2 s");
        assert!(sle.running(None), "and among all the host's processes");
        assert!(!sle.running(Some(&[])), "not among no processes");
        assert!(
            !SubjectSoftware::parse("surely-no-such-process-name")
                .unwrap()
                .running(None)
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
