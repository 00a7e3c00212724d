//! The signal that asks every client connection to finish: fired once, waited on by each
//! connection's task, and polled every time that task wakes, once per request or more.
//!
//! tokio-util's `CancellationToken` takes two locks per poll of its `cancelled()` future (the
//! token's and its `Notify`'s), and every connection shares the one token, so under load its
//! cache lines travel between the worker threads on every wake-up. A [`Wait`] here takes the
//! lock only when its task's waker changes (the first poll, in practice) and otherwise reads
//! one flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// Registered wakers by slot; freed slots are reused.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Signal {
    /// Fires the signal: every [`Wait`] resolves, now and from now on.
    pub(crate) fn fire(&self) {
        // Set before the wakers are taken: a waiter that registers after this sees the flag.
        self.fired.store(true, SeqCst);
        let wakers: Vec<Waker> = lock(&self.waiters).slots.iter_mut().filter_map(Option::take).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether the signal has fired: one atomic read, for a connection deciding whether to
    /// keep its client after a request.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(SeqCst)
    }

    /// A future that resolves once the signal has fired.
    pub(crate) fn wait(self: &Arc<Self>) -> Wait {
        Wait { signal: Arc::clone(self), slot: None }
    }
}

/// Resolves once its [`Signal`] has fired.
#[derive(Debug)]
pub(crate) struct Wait {
    signal: Arc<Signal>,
    /// The slot this waiter holds and the waker last put there.
    slot: Option<(usize, Waker)>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.fired.load(SeqCst) {
            return Poll::Ready(());
        }
        if matches!(&self.slot, Some((_, waker)) if waker.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        let index = {
            let mut waiters = lock(&self.signal.waiters);
            let index = match &self.slot {
                Some((index, _)) => *index,
                None => match waiters.free.pop() {
                    Some(index) => index,
                    None => {
                        waiters.slots.push(None);
                        waiters.slots.len() - 1
                    }
                },
            };
            waiters.slots[index] = Some(waker.clone());
            index
        };
        self.slot = Some((index, waker));
        // Fired between the first check and the registration: `fire` may have taken the
        // wakers before this one was put in.
        if self.signal.fired.load(SeqCst) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some((index, _)) = self.slot.take() {
            let mut waiters = lock(&self.signal.waiters);
            waiters.slots[index] = None;
            waiters.free.push(index);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_resolves_once_fired_and_slots_are_reused() {
        let signal = Arc::new(Signal::default());
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(signal.wait())).collect();
        // Let each register.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        {
            let mut early = std::pin::pin!(signal.wait());
            assert!(futures_poll(early.as_mut()).is_pending());
        }
        assert_eq!(lock(&signal.waiters).free.len(), 1, "a dropped waiter frees its slot");
        signal.fire();
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("woken by the signal")
                .expect("the waiter's task");
        }
        // Fired already: resolves at once.
        signal.wait().await;
    }

    fn futures_poll(wait: Pin<&mut Wait>) -> Poll<()> {
        wait.poll(&mut Context::from_waker(Waker::noop()))
    }
}
