//! Boot admission: at most N guest boots in flight, the rest waiting in
//! arrival order.
//!
//! A guest boot under software emulation is CPU-bound for its whole
//! length; ten of them on two cores each get a sliver and none finishes
//! within any sane readiness bound. Admitting a few at a time makes every
//! boot take about as long as it does alone, and the batch no longer than
//! it would anyway. A slot is held from the VMM's launch until the agent
//! answers (or the start fails), and released on drop, so a start whose
//! future is dropped frees its place in the queue or its slot.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::progress::ProgressSink;

/// Fair (FIFO) admission with a fixed limit; `None` admits everyone.
#[derive(Debug)]
pub struct Admission {
    what: &'static str,
    limit: Option<usize>,
    state: Mutex<Queue>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    running: usize,
    next_ticket: u64,
    /// Tickets of the waiters, oldest first.
    waiting: VecDeque<u64>,
}

/// One admitted boot; frees its slot when dropped.
#[derive(Debug)]
#[must_use = "the slot is released when this is dropped"]
pub struct Slot<'a> {
    owner: &'a Admission,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.owner.lock().running -= 1;
        self.owner.changed.notify_waiters();
    }
}

/// A place in the queue; removes itself if the waiter goes away.
struct Ticket<'a> {
    owner: &'a Admission,
    id: u64,
    admitted: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.admitted {
            self.owner.lock().waiting.retain(|t| *t != self.id);
            self.owner.changed.notify_waiters();
        }
    }
}

impl Admission {
    /// `limit` of `Some(0)` is treated as no limit.
    pub fn new(what: &'static str, limit: Option<usize>) -> Self {
        Self {
            what,
            limit: limit.filter(|n| *n > 0),
            state: Mutex::new(Queue::default()),
            changed: Notify::new(),
        }
    }

    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Boots in flight and boots waiting, for status and tests.
    pub fn load(&self) -> (usize, usize) {
        let q = self.lock();
        (q.running, q.waiting.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a slot, in arrival order, telling `progress` how many
    /// are ahead whenever that changes.
    pub async fn acquire(&self, progress: &ProgressSink) -> Slot<'_> {
        let mut ticket = {
            let mut q = self.lock();
            let free = self.limit.is_none_or(|n| q.running < n);
            if free && q.waiting.is_empty() {
                q.running += 1;
                return Slot { owner: self };
            }
            let id = q.next_ticket;
            q.next_ticket += 1;
            q.waiting.push_back(id);
            Ticket {
                owner: self,
                id,
                admitted: false,
            }
        };
        let mut reported = None;
        loop {
            // Registered before the check: a release between the check and
            // the await still wakes this waiter.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                let ahead = q.waiting.iter().position(|t| *t == ticket.id).unwrap_or(0);
                let free = self.limit.is_none_or(|n| q.running < n);
                if ahead == 0 && free {
                    q.waiting.pop_front();
                    q.running += 1;
                    ticket.admitted = true;
                    drop(q);
                    // The next in line may be admissible too.
                    self.changed.notify_waiters();
                    return Slot { owner: self };
                }
                if reported != Some(ahead) {
                    reported = Some(ahead);
                    progress.stage(
                        "queued",
                        format!(
                            "waiting for a {} slot ({ahead} ahead, {} of {} in use)",
                            self.what,
                            q.running,
                            self.limit.unwrap_or(0)
                        ),
                    );
                }
            }
            notified.await;
        }
    }
}

/// The default number of concurrent boots for a host: under software
/// emulation a boot keeps a core busy, so about one per CPU; with
/// hardware KVM a boot is mostly waiting, so several per CPU.
pub fn default_boot_limit(cpus: usize, hardware_kvm: bool) -> usize {
    let cpus = cpus.max(1);
    if hardware_kvm { cpus * 4 } else { cpus }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn stages(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<banger_api::event::Progress>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(p) = rx.try_recv() {
            out.push(format!("{p:?}"));
        }
        out
    }

    #[tokio::test]
    async fn admits_up_to_the_limit_then_in_arrival_order() {
        let adm = Arc::new(Admission::new("boot", Some(2)));
        let a = adm.acquire(&ProgressSink::discard()).await;
        let b = adm.acquire(&ProgressSink::discard()).await;
        assert_eq!(adm.load(), (2, 0));

        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let queue = Arc::clone(&adm);
            let order = Arc::clone(&order);
            waiters.push(tokio::spawn(async move {
                let _slot = queue.acquire(&ProgressSink::discard()).await;
                order.lock().expect("order").push(i);
                // Held until the test lets everyone go.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Queue them in a known order.
            while adm.load().1 < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(adm.load(), (2, 3));
        drop(a);
        drop(b);
        for w in waiters {
            w.await.expect("waiter");
        }
        assert_eq!(*order.lock().expect("order"), vec![0, 1, 2]);
        assert_eq!(adm.load(), (0, 0));
    }

    #[tokio::test]
    async fn never_more_than_the_limit_at_once() {
        let adm = Arc::new(Admission::new("boot", Some(3)));
        let inflight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (adm, inflight, peak) =
                    (Arc::clone(&adm), Arc::clone(&inflight), Arc::clone(&peak));
                tokio::spawn(async move {
                    let _slot = adm.acquire(&ProgressSink::discard()).await;
                    let now = inflight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inflight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_waiter_reports_its_place_and_a_dropped_waiter_leaves_the_queue() {
        let adm = Arc::new(Admission::new("boot", Some(1)));
        let held = adm.acquire(&ProgressSink::discard()).await;
        // The first waiter goes away before it is admitted (its client left).
        let gone = {
            let adm = Arc::clone(&adm);
            tokio::spawn(async move {
                let _ = adm.acquire(&ProgressSink::discard()).await;
            })
        };
        while adm.load().1 < 1 {
            tokio::task::yield_now().await;
        }
        let (sink, mut rx) = ProgressSink::channel();
        let second = {
            let adm = Arc::clone(&adm);
            tokio::spawn(async move {
                let _slot = adm.acquire(&sink).await;
            })
        };
        while adm.load().1 < 2 {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        let seen = stages(&mut rx);
        assert!(
            seen.iter()
                .any(|s| s.contains("waiting for a boot slot (1 ahead, 1 of 1 in use)")),
            "{seen:?}"
        );
        gone.abort();
        let _ = gone.await;
        assert_eq!(adm.load(), (1, 1), "the aborted waiter left the queue");
        // Its place is taken over: now nobody is ahead.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let seen = stages(&mut rx);
        assert!(
            seen.iter().any(|s| s.contains("(0 ahead, 1 of 1 in use)")),
            "{seen:?}"
        );
        drop(held);
        second.await.expect("second admitted once the slot is free");
        assert_eq!(adm.load(), (0, 0));
    }

    #[tokio::test]
    async fn no_limit_admits_everyone_at_once() {
        let adm = Admission::new("boot", Some(0));
        assert_eq!(adm.limit(), None);
        let slots: Vec<_> = futures_all(&adm, 50).await;
        assert_eq!(adm.load(), (50, 0));
        drop(slots);
        assert_eq!(adm.load(), (0, 0));
    }

    async fn futures_all(adm: &Admission, n: usize) -> Vec<Slot<'_>> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(adm.acquire(&ProgressSink::discard()).await);
        }
        v
    }

    #[test]
    fn default_limit_follows_cpus_and_acceleration() {
        assert_eq!(default_boot_limit(2, false), 2);
        assert_eq!(default_boot_limit(0, false), 1);
        assert_eq!(default_boot_limit(8, true), 32);
    }
}
