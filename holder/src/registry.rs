//! The waiting VMs, by hostname. A waiter is a oneshot sender; a notification takes the
//! hostname's sender out and fires it. Entries are removed by the waiter's own guard
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

impl From<lablink_db::vms::PendingAssignment> for Delivery {
    fn from(p: lablink_db::vms::PendingAssignment) -> Self {
        Self {
            command: p.command,
            pin: p.pin,
        }
    }
}

struct Slot {
    id: u64,
    tx: oneshot::Sender<Delivery>,
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
    pub rx: oneshot::Receiver<Delivery>,
}

impl Registry {
    /// Register a wait for `host`. An older wait for the same host is superseded: its
    /// receiver sees the sender dropped and answers "nothing yet" (the newest wins).
    pub fn register(&self, host: &Hostname) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let old = self.lock().insert(host.clone(), Slot { id, tx });
        drop(old);
        Registration {
            registry: self,
            host: host.clone(),
            id,
            rx,
        }
    }

    /// Hand `delivery` to the waiter of `host`; false when none is waiting (the VM will
    /// find the assignment in the database on its next poll).
    pub fn deliver(&self, host: &Hostname, delivery: Delivery) -> bool {
        let slot = self.lock().remove(host);
        match slot {
            Some(slot) => slot.tx.send(delivery).is_ok(),
            None => false,
        }
    }

    pub fn hosts(&self) -> Vec<Hostname> {
        self.lock().keys().cloned().collect()
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

    fn d(pin: &str) -> Delivery {
        Delivery {
            command: "cmd".into(),
            pin: Pin::parse(pin).unwrap(),
        }
    }

    #[tokio::test]
    async fn newest_waiter_wins_and_guards_unregister() {
        let r = Registry::default();
        let h = Hostname::parse("vm-1").unwrap();
        let mut old = r.register(&h);
        let mut new = r.register(&h);
        assert_eq!(r.len(), 1);
        // The superseded waiter is released at once.
        assert!((&mut old.rx).await.is_err());
        assert!(r.deliver(&h, d("123456")));
        assert_eq!((&mut new.rx).await.unwrap(), d("123456"));
        assert!(r.is_empty());
        assert!(!r.deliver(&h, d("123456")));

        // Dropping an old registration does not remove a newer one.
        let a = r.register(&h);
        let b = r.register(&h);
        drop(a);
        assert_eq!(r.len(), 1);
        drop(b);
        assert!(r.is_empty());

        let mut c = r.register(&h);
        r.release_all();
        assert!((&mut c.rx).await.is_err());
    }
}
