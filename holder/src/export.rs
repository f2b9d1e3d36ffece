//! The open export, kept in memory for the export waiters (`POST /vm_export`). ONE query
//! ([`exports::open_export`]) loads it whole when a `vm_exports` notification says an
//! export opened or stopped collecting, and after every (re)connect of the listening
//! connection (notifications sent during a gap are lost); the waiters then answer from
//! memory. A notification costs one query whatever the number of waiters (it cost one
//! per waiter before: 10,000 at 10,000 VMs). Nothing here may query per waiter.
//!
//! A VM that answered for good (`done`, `no_files`, `failed`) must not be handed the
//! task again: its daemon would re-send its report, be refused, and poll again at once,
//! in a loop until the export closes. So [`lablink_db::exports::report`] notifies each
//! final answer with the VM and the job, and the VM is struck from memory without a
//! reload (a reload per answer would be 10,000 loads of up to 10,000 rows). `uploading`
//! is not notified: that VM keeps its task, as in the database.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use lablink_core::domain::Hostname;
use lablink_db::exports::{self, Notice, OpenExport};
use lablink_wire::ExportTask;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::listener::Link;

#[derive(Default)]
pub struct Exports {
    state: Mutex<State>,
    /// Rung after every load: each export waiter looks again (in memory).
    bell: watch::Sender<u64>,
    /// Asks [`keep_loaded`] for a load; notifications that come while a load runs are
    /// folded into one more load.
    reload: Notify,
}

#[derive(Default)]
struct State {
    open: Option<OpenExport>,
    /// Final answers notified, by job, kept for the job's life: a load whose query ran
    /// before an answer committed (its notification arrived while the load was on its
    /// way back) would otherwise bring that VM back.
    answered: HashMap<String, HashSet<Hostname>>,
}

impl Exports {
    /// Subscribe BEFORE looking with [`Exports::task_for`]: a load published in between
    /// then rings this receiver.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.bell.subscribe()
    }

    /// `host`'s task in the open export, if it has one and the deadline is ahead.
    pub fn task_for(&self, host: &Hostname) -> Option<ExportTask> {
        self.lock().open.as_ref()?.task_for(host, chrono::Utc::now())
    }

    /// How many polls wait on `/vm_export` (each holds one receiver of the bell).
    pub fn waiters(&self) -> usize {
        self.bell.receiver_count()
    }

    /// Ask for a load (after a reconnect, or on a notification).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// A `vm_exports` notification (from the listening connection's task: never blocks).
    pub fn notice(&self, payload: &str) {
        match Notice::parse(payload) {
            Notice::Changed => self.reload(),
            Notice::Answered { job_id, hostname } => {
                let mut state = self.lock();
                if let Some(open) = state.open.as_mut().filter(|o| o.job_id == job_id) {
                    open.upload_urls.remove(&hostname);
                }
                state.answered.entry(job_id).or_default().insert(hostname);
            }
        }
    }

    /// Replace the open export with a fresh load and ring every waiter.
    fn publish(&self, mut open: Option<OpenExport>) {
        let old = {
            let mut state = self.lock();
            let State {
                open: current,
                answered,
            } = &mut *state;
            // Answers of other jobs are no longer needed. One for a job whose load is
            // still to come may go: that load's query is sent after this point, so after
            // the answer committed, and does not bring the VM back.
            answered.retain(|job, _| open.as_ref().is_some_and(|o| &o.job_id == job));
            if let Some(o) = open.as_mut()
                && let Some(done) = answered.get(&o.job_id)
            {
                o.upload_urls.retain(|h, _| !done.contains(h));
            }
            let unchanged = current.is_none() && open.is_none();
            let old = std::mem::replace(current, open);
            if unchanged {
                return;
            }
            old
        };
        // Up to 10,000 URLs: freed outside the lock.
        drop(old);
        self.bell.send_modify(|n| *n += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Each critical section is a lookup or a single replace: a poisoned lock is
        // still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Load the open export whenever asked, until `stop`.
pub async fn keep_loaded(
    exports: std::sync::Arc<Exports>,
    link: std::sync::Arc<Link>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = exports.reload.notified() => {}
            () = stop.cancelled() => return,
        }
        // Down: the reconnect asks again once it listens.
        let Some(client) = link.client().await else {
            continue;
        };
        match link.query(exports::open_export(&client)).await {
            Ok(open) => {
                match &open {
                    Some(o) => tracing::info!(job = %o.job_id, vms = o.upload_urls.len(), "export open"),
                    None => tracing::debug!("no export open"),
                }
                exports.publish(open);
            }
            Err(e) => {
                tracing::error!(error = %e, "loading the open export failed; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => exports.reload(),
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hostname {
        Hostname::parse(s).unwrap()
    }

    fn open(job: &str, hosts: &[&str]) -> OpenExport {
        OpenExport {
            job_id: job.into(),
            extensions: vec!["slp".into()],
            max_file_bytes: 1 << 20,
            deadline: chrono::Utc::now() + chrono::Duration::hours(1),
            upload_urls: hosts.iter().map(|n| (h(n), format!("https://u/{n}"))).collect(),
        }
    }

    fn answered(job: &str, host: &str) -> String {
        format!(r#"{{"job_id":"{job}","hostname":"{host}"}}"#)
    }

    #[test]
    fn an_answer_strikes_the_vm_even_from_a_load_that_predates_it() {
        let e = Exports::default();
        let mut bell = e.subscribe();
        e.publish(Some(open("j1", &["vm-1", "vm-2"])));
        assert!(bell.has_changed().unwrap());
        bell.mark_unchanged();
        assert_eq!(e.task_for(&h("vm-1")).unwrap().upload_url, "https://u/vm-1");
        e.notice(&answered("j1", "vm-1"));
        assert!(e.task_for(&h("vm-1")).is_none());
        assert!(!bell.has_changed().unwrap(), "an answer wakes no waiter");
        // A load whose query ran before vm-1's answer committed still lists it.
        e.publish(Some(open("j1", &["vm-1", "vm-2"])));
        assert!(e.task_for(&h("vm-1")).is_none());
        assert!(e.task_for(&h("vm-2")).is_some());
        // An answer for an export not loaded yet (another holder handed it) is kept.
        e.notice(&answered("j2", "vm-2"));
        e.publish(Some(open("j2", &["vm-1", "vm-2"])));
        assert!(e.task_for(&h("vm-2")).is_none());
        assert_eq!(e.task_for(&h("vm-1")).unwrap().job_id, "j2");
        // Closed: nothing is handed out.
        e.publish(None);
        assert!(e.task_for(&h("vm-1")).is_none());
    }

    #[test]
    fn nothing_is_handed_out_past_the_deadline() {
        let e = Exports::default();
        let mut o = open("j1", &["vm-1"]);
        o.deadline = chrono::Utc::now() - chrono::Duration::seconds(1);
        e.publish(Some(o));
        assert!(e.task_for(&h("vm-1")).is_none());
    }

    #[test]
    fn any_other_payload_asks_for_a_load() {
        assert_eq!(Notice::parse("20261123T110000Z-0e0e0e01"), Notice::Changed);
        assert_eq!(
            Notice::parse(r#"{"job_id":"j","hostname":"bad host"}"#),
            Notice::Changed
        );
        assert_eq!(
            Notice::parse(&answered("j", "vm-1")),
            Notice::Answered {
                job_id: "j".into(),
                hostname: h("vm-1")
            }
        );
    }
}
