//! Per-key async locks (per VM, per asset name).
//!
//! Operations on one key are serialised; different keys proceed in
//! parallel. Waiting is a plain future, so a waiter whose request is
//! cancelled (client gone, Ctrl-C) simply drops out of the queue and
//! leaves nothing behind. Entries are removed when the last user goes, so
//! the map does not grow with every name ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Per key: the mutex and how many callers hold or wait for it.
type Entries = HashMap<String, (Arc<AsyncMutex<()>>, usize)>;

/// A map of named async mutexes.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    inner: Mutex<Entries>,
}

/// Holds the lock on one key until dropped.
#[derive(Debug)]
pub struct KeyGuard<'a> {
    guard: Option<OwnedMutexGuard<()>>,
    _user: User<'a>,
}

impl KeyedLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for the lock on `key`. Cancel-safe: dropping the future
    /// while waiting gives up the waiter's claim on the entry.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mutex = {
            let mut map = self.map();
            let entry = map.entry(key.to_owned()).or_default();
            entry.1 += 1;
            Arc::clone(&entry.0)
        };
        // Registered before awaiting, so a cancelled wait deregisters.
        let user = User {
            owner: self,
            key: key.to_owned(),
        };
        let guard = mutex.lock_owned().await;
        KeyGuard {
            guard: Some(guard),
            _user: user,
        }
    }

    /// Number of keys currently held or waited on.
    pub fn active(&self) -> usize {
        self.map().len()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One caller's claim on a key's entry.
#[derive(Debug)]
struct User<'a> {
    owner: &'a KeyedLocks,
    key: String,
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.map();
        if let Some(entry) = map.get_mut(&self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        // Unlock before the claim goes, so the next waiter can proceed.
        drop(self.guard.take());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_key_waits_different_key_does_not() {
        let locks = KeyedLocks::new();
        let held = locks.lock("a").await;
        // Another key is free.
        let other = tokio::time::timeout(Duration::from_millis(100), locks.lock("b")).await;
        assert!(other.is_ok(), "different key must not wait");
        drop(other);
        // Same key waits.
        let same = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(same.is_err(), "same key must wait while held");
        drop(held);
        let again = tokio::time::timeout(Duration::from_millis(100), locks.lock("a")).await;
        assert!(again.is_ok(), "released key can be taken");
    }

    #[tokio::test]
    async fn cancelled_waiter_leaves_nothing_behind() {
        let locks = KeyedLocks::new();
        let held = locks.lock("img").await;
        let waiter = tokio::time::timeout(Duration::from_millis(50), locks.lock("img")).await;
        assert!(waiter.is_err(), "waiter times out (is cancelled)");
        assert_eq!(locks.active(), 1);
        drop(held);
        assert_eq!(locks.active(), 0, "no entry leaks after cancel + release");
    }

    #[tokio::test]
    async fn waiters_are_served_in_turn() {
        let locks = Arc::new(KeyedLocks::new());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = locks.lock("k").await;
        let mut tasks = Vec::new();
        for i in 0..3 {
            let locks = Arc::clone(&locks);
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("k").await;
                order.lock().expect("order").push(i);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*order.lock().expect("order"), vec![0, 1, 2]);
        assert_eq!(locks.active(), 0);
    }
}
