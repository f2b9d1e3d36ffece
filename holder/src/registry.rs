//! The waiting VMs, by hostname. A waiter is a oneshot sender; a notification takes the
//! hostname's sender out and fires it with what the VM must be handed ([`Handout`]). Entries are removed by the waiter's own guard
//! when it stops waiting for any reason (answered, window over, client gone), so an
//! abandoned wait costs nothing after its future is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lablink_core::domain::{Hostname, Pin};
use tokio::sync::oneshot;

/// What a VM is handed: the normalized command and its PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub command: String,
    pub pin: Pin,
}

/// What a waiting VM is handed: its assignment, or the order to reset its workspace
/// (the admin released its seat; only daemons that acknowledge are told).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handout {
    Assignment(Delivery),
    Reset { id: i64, keep_files: bool },
}

impl From<lablink_db::vms::Pending> for Handout {
    fn from(p: lablink_db::vms::Pending) -> Self {
        match p {
            lablink_db::vms::Pending::Assignment(p) => Handout::Assignment(Delivery {
                command: p.command,
                pin: p.pin,
            }),
            lablink_db::vms::Pending::Reset { id, keep_files } => Handout::Reset { id, keep_files },
        }
    }
}

struct Slot {
    id: u64,
    /// The waiter presented its credential: its daemon acknowledges assignments and
    /// can reset (see `lablink_db::vms::pending_for`).
    acknowledges: bool,
    tx: oneshot::Sender<Handout>,
}

#[derive(Default)]
pub struct Registry {
    slots: Mutex<HashMap<Hostname, Slot>>,
    next_id: AtomicU64,
}

/// A registered wait. Dropping it unregisters (unless a newer wait replaced it).
pub struct Registration<'a> {
    registry: &'a Registry,
    host: Hostname,
    id: u64,
    pub rx: oneshot::Receiver<Handout>,
}

impl Registry {
    /// Register a wait for `host`. An older wait for the same host is superseded: its
    /// receiver sees the sender dropped and answers "nothing yet" (the newest wins).
    pub fn register(&self, host: &Hostname, acknowledges: bool) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let old = self.lock().insert(host.clone(), Slot { id, acknowledges, tx });
        drop(old);
        Registration {
            registry: self,
            host: host.clone(),
            id,
            rx,
        }
    }

    /// Hand `handout` to the waiter of `host`; false when none is waiting (the VM will
    /// find it in the database on its next poll). A reset goes only to a waiter that
    /// acknowledges: a classic client would read it as a final rejection.
    pub fn deliver(&self, host: &Hostname, handout: Handout) -> bool {
        let slot = {
            let mut slots = self.lock();
            if matches!(handout, Handout::Reset { .. }) && slots.get(host).is_some_and(|s| !s.acknowledges) {
                return false;
            }
            slots.remove(host)
        };
        match slot {
            Some(slot) => slot.tx.send(handout).is_ok(),
            None => false,
        }
    }

    /// Every waiting hostname, with whether its waiter acknowledges.
    pub fn hosts(&self) -> Vec<(Hostname, bool)> {
        self.lock()
            .iter()
            .map(|(h, s)| (h.clone(), s.acknowledges))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Release every waiter (each answers "nothing yet"): used at shutdown.
    pub fn release_all(&self) {
        let all: Vec<Slot> = self.lock().drain().map(|(_, s)| s).collect();
        drop(all);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hostname, Slot>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove calls), so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut slots = self.registry.lock();
        if slots.get(&self.host).is_some_and(|s| s.id == self.id) {
            slots.remove(&self.host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(pin: &str) -> Handout {
        Handout::Assignment(Delivery {
            command: "cmd".into(),
            pin: Pin::parse(pin).unwrap(),
        })
    }

    #[tokio::test]
    async fn newest_waiter_wins_and_guards_unregister() {
        let r = Registry::default();
        let h = Hostname::parse("vm-1").unwrap();
        let mut old = r.register(&h, true);
        let mut new = r.register(&h, true);
        assert_eq!(r.len(), 1);
        // The superseded waiter is released at once.
        assert!((&mut old.rx).await.is_err());
        assert!(r.deliver(&h, d("123456")));
        assert_eq!((&mut new.rx).await.unwrap(), d("123456"));
        assert!(r.is_empty());
        assert!(!r.deliver(&h, d("123456")));

        // Dropping an old registration does not remove a newer one.
        let a = r.register(&h, true);
        let b = r.register(&h, true);
        drop(a);
        assert_eq!(r.len(), 1);
        drop(b);
        assert!(r.is_empty());

        // A reset never reaches a classic (non-acknowledging) waiter.
        let mut classic = r.register(&h, false);
        assert!(!r.deliver(
            &h,
            Handout::Reset {
                id: 1,
                keep_files: false
            }
        ));
        assert_eq!(r.len(), 1);
        assert!(r.deliver(&h, d("654321")));
        assert_eq!((&mut classic.rx).await.unwrap(), d("654321"));

        let mut c = r.register(&h, true);
        r.release_all();
        assert!((&mut c.rx).await.is_err());
    }
}
