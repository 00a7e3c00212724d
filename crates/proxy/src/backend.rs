//! One backend as the proxy sees it: its requests in flight, whether it is still routed, its
//! recent connect failures and its idle keep-alive connections (hyper's, for the hyper path,
//! and raw TCP streams, for the fast path); and the choice among the backends of one route.
//!
//! Two orderings make draining exact, both with sequentially consistent atomics:
//! - A request counts itself (`in_flight += 1`) and only then checks `retired`. The proxy
//!   sets `retired` after swapping the routes, and `drained` reads `in_flight` after that. So
//!   either the drain sees the request, or the request sees `retired`, steps back without
//!   sending anything and looks again in the new routes.
//! - A drain registers in `waiters` and arms its `Notify` before reading `in_flight`; the last
//!   request out reads `waiters` after decrementing. So the wake-up is never lost, and a
//!   request pays for `notify_waiters` only when someone waits.
//!
//! The fast path's idle streams are kept per worker thread (`POOL_SLOT`): a tokio stream is
//! driven by the runtime it was opened on, so a stream opened on one worker and taken by
//! another would have every read and write woken by the first worker's thread. Each worker
//! takes only the streams it opened; threads that are not workers share slot 0.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::routes::Backend;

/// A connection to a backend, ready for one request at a time.
pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// The backend has no request in flight (or the proxy never routed to it).
    Done,
    /// The timeout passed first; `left` requests (or upgraded connections) were still in flight.
    TimedOut { left: usize },
}

/// Limits of a backend's idle connection pool.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolLimits {
    pub(crate) idle_timeout: Duration,
    /// Per pool: the hyper path's, and each worker's fast-path pool.
    pub(crate) max_idle: usize,
    /// How many fast-path pools: one per worker thread, and slot 0 for every other thread.
    pub(crate) slots: usize,
}

thread_local! {
    /// Which fast-path pool this thread uses: its worker number plus one on the proxy's worker
    /// threads (see `server::Workers`), 0 on every other thread.
    static POOL_SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Makes this thread take and keep fast-path streams in pool `slot` (1 for the first worker).
pub(crate) fn set_pool_slot(slot: usize) {
    POOL_SLOT.set(slot);
}

#[derive(Debug)]
pub(crate) struct BackendState {
    pub(crate) backend: Backend,
    limits: PoolLimits,
    in_flight: AtomicUsize,
    /// Set once the backend is no longer in the routes; cleared if it comes back.
    retired: AtomicBool,
    /// How many `drained` futures are waiting.
    waiters: AtomicUsize,
    idle_now: Notify,
    /// When a connect last failed, in milliseconds on the proxy's clock; 0 when it has not.
    failed_at: AtomicU64,
    /// Idle connections of the hyper path.
    idle: IdlePool<Sender>,
    /// Idle connections of the fast path: plain keep-alive TCP streams between requests, one
    /// pool per [`POOL_SLOT`].
    raw_idle: Box<[IdlePool<TcpStream>]>,
}

/// Idle keep-alive connections, oldest first; the same limits and reaping for both kinds.
#[derive(Debug)]
struct IdlePool<T>(Mutex<VecDeque<Idle<T>>>);

#[derive(Debug)]
struct Idle<T> {
    conn: T,
    since: Instant,
}

impl<T> IdlePool<T> {
    fn new() -> Self {
        Self(Mutex::new(VecDeque::new()))
    }

    /// The newest connection that is fresh and `usable`; the stale ones met on the way close.
    fn take(&self, limits: PoolLimits, usable: impl Fn(&T) -> bool) -> Option<T> {
        let now = Instant::now();
        let mut idle = lock(&self.0);
        while let Some(conn) = idle.pop_back() {
            if now.duration_since(conn.since) < limits.idle_timeout && usable(&conn.conn) {
                return Some(conn.conn);
            }
        }
        None
    }

    /// Keeps a connection unless the backend is retired or the pool is full.
    fn put(&self, conn: T, limits: PoolLimits, retired: &AtomicBool) {
        let now = Instant::now();
        let mut idle = lock(&self.0);
        // Checked under the pool's lock, which `retire` takes after setting the flag: either
        // this sees the flag, or `retire` empties the pool after this push.
        if retired.load(SeqCst) {
            return;
        }
        while idle.front().is_some_and(|conn| now.duration_since(conn.since) >= limits.idle_timeout) {
            idle.pop_front();
        }
        if idle.len() < limits.max_idle {
            idle.push_back(Idle { conn, since: now });
        }
    }

    fn retain(&self, limits: PoolLimits, now: Instant, open: impl Fn(&T) -> bool) {
        lock(&self.0).retain(|conn| now.duration_since(conn.since) < limits.idle_timeout && open(&conn.conn));
    }

    fn clear(&self) {
        let idle = std::mem::take(&mut *lock(&self.0));
        drop(idle);
    }
}

/// Whether an idle stream is still open with nothing to read: a non-blocking read of one byte
/// must find nothing. Data (the backend is out of step) or the end of the stream means the
/// connection is of no use. Costs no system call unless the reactor saw the socket readable.
fn is_open_and_silent(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

impl BackendState {
    pub(crate) fn new(backend: Backend, limits: PoolLimits) -> Self {
        Self {
            backend,
            limits,
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            waiters: AtomicUsize::new(0),
            idle_now: Notify::new(),
            failed_at: AtomicU64::new(0),
            idle: IdlePool::new(),
            raw_idle: (0..limits.slots.max(1)).map(|_| IdlePool::new()).collect(),
        }
    }

    /// This thread's fast-path pool; slot 0 for a slot this backend does not have.
    fn raw_pool(&self) -> &IdlePool<TcpStream> {
        let slot = POOL_SLOT.get();
        self.raw_idle.get(slot).unwrap_or(&self.raw_idle[0])
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Counts a request for this backend, unless the backend has left the routes.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, SeqCst);
        if self.retired.load(SeqCst) {
            self.release();
            return None;
        }
        Some(InFlight(Arc::clone(self)))
    }

    fn release(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1 && self.waiters.load(SeqCst) > 0 {
            self.idle_now.notify_waiters();
        }
    }

    /// Takes the backend out of service: no request counts itself from now on, and idle
    /// connections close.
    pub(crate) fn retire(&self) {
        self.retired.store(true, SeqCst);
        self.close_idle();
    }

    /// Puts a retired backend back in service (it is in the routes again).
    pub(crate) fn reinstate(&self) {
        self.retired.store(false, SeqCst);
    }

    /// Resolves once nothing is in flight, or with how much is left after `timeout`.
    pub(crate) async fn drained(self: Arc<Self>, timeout: Duration) -> Drained {
        struct Waiting<'a>(&'a BackendState);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiters.fetch_sub(1, SeqCst);
            }
        }

        let deadline = tokio::time::Instant::now() + timeout;
        self.waiters.fetch_add(1, SeqCst);
        let _waiting = Waiting(&self);
        loop {
            let mut notified = std::pin::pin!(self.idle_now.notified());
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return Drained::Done;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return match self.in_flight() {
                    0 => Drained::Done,
                    left => Drained::TimedOut { left },
                };
            }
        }
    }

    /// Notes a failed connect; true when the backend was not already failing.
    pub(crate) fn connect_failed(&self, now_ms: u64) -> bool {
        self.failed_at.swap(now_ms, Relaxed) == 0
    }

    pub(crate) fn connect_succeeded(&self) {
        if self.failed_at.load(Relaxed) != 0 {
            self.failed_at.store(0, Relaxed);
        }
    }

    /// An idle connection that is still open and fresh, newest first.
    pub(crate) fn checkout(&self) -> Option<Sender> {
        self.idle.take(self.limits, Sender::is_ready)
    }

    /// Keeps a connection that finished its request for the next one, unless the backend has
    /// left the routes or the pool is full.
    pub(crate) fn checkin(&self, sender: Sender) {
        self.idle.put(sender, self.limits, &self.retired);
    }

    /// An idle fast-path stream that is fresh and, as far as a non-blocking read can tell,
    /// still open; newest first. It may still turn out closed: see `fast`'s retry rule.
    pub(crate) fn checkout_raw(&self) -> Option<TcpStream> {
        self.raw_pool().take(self.limits, is_open_and_silent)
    }

    /// Keeps a fast-path stream whose response was read to its end, as [`checkin`](Self::checkin).
    pub(crate) fn checkin_raw(&self, stream: TcpStream) {
        self.raw_pool().put(stream, self.limits, &self.retired);
    }

    /// Closes idle connections that are too old or that the backend has closed.
    pub(crate) fn reap_idle(&self, now: Instant) {
        self.idle.retain(self.limits, now, |sender| !sender.is_closed());
        for pool in &self.raw_idle {
            pool.retain(self.limits, now, is_open_and_silent);
        }
    }

    /// Closes every idle connection.
    pub(crate) fn close_idle(&self) {
        self.idle.clear();
        for pool in &self.raw_idle {
            pool.clear();
        }
    }

    /// Closes the idle fast-path streams of this thread's pool: a worker's, before its runtime
    /// stops.
    pub(crate) fn close_idle_here(&self) {
        self.raw_pool().clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request (or upgraded connection) counted against a backend until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<BackendState>);

impl InFlight {
    pub(crate) fn backend(&self) -> &Arc<BackendState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The backends of one route as the proxy serves them, with the round-robin cursor.
#[derive(Debug)]
pub(crate) struct Upstream {
    backends: Box<[Arc<BackendState>]>,
    cursor: AtomicUsize,
}

impl Upstream {
    pub(crate) fn new(backends: Vec<Arc<BackendState>>) -> Self {
        Self { backends: backends.into(), cursor: AtomicUsize::new(0) }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The backend for the next request: the fewest requests in flight, ties taken in
    /// round-robin order. Backends whose connect failed within `cooldown_ms` come only after
    /// all others; those in `tried` not at all.
    pub(crate) fn choose(
        &self,
        tried: &[Arc<BackendState>],
        now_ms: impl Fn() -> u64,
        cooldown_ms: u64,
    ) -> Option<&Arc<BackendState>> {
        let n = self.backends.len();
        let start = if n > 1 { self.cursor.fetch_add(1, Relaxed) } else { 0 };
        let mut now = None;
        let mut best: Option<((bool, usize), &Arc<BackendState>)> = None;
        for i in 0..n {
            let backend = &self.backends[(start.wrapping_add(i)) % n];
            if tried.iter().any(|t| Arc::ptr_eq(t, backend)) {
                continue;
            }
            let failed_at = backend.failed_at.load(Relaxed);
            let cooling = failed_at != 0 && *now.get_or_insert_with(&now_ms) < failed_at.saturating_add(cooldown_ms);
            let key = (cooling, backend.in_flight.load(Relaxed));
            if best.is_none_or(|(best_key, _)| key < best_key) {
                best = Some((key, backend));
            }
        }
        best.map(|(_, backend)| backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(n: u16) -> Vec<Arc<BackendState>> {
        let limits = PoolLimits { idle_timeout: Duration::from_secs(1), max_idle: 4, slots: 1 };
        (0..n)
            .map(|i| {
                let backend = Backend::new(format!("b{i}"), ([127, 0, 0, 1], 1000 + i).into());
                Arc::new(BackendState::new(backend, limits))
            })
            .collect()
    }

    fn pick(upstream: &Upstream, tried: &[Arc<BackendState>], now: u64) -> Option<String> {
        upstream.choose(tried, || now, 1000).map(|b| b.backend.id.clone())
    }

    #[test]
    fn ties_go_round_robin() {
        let upstream = Upstream::new(states(3));
        let picks: Vec<_> = (0..6).filter_map(|_| pick(&upstream, &[], 1)).collect();
        assert_eq!(picks, ["b0", "b1", "b2", "b0", "b1", "b2"]);
    }

    #[test]
    fn fewest_in_flight_wins() {
        let backends = states(3);
        let upstream = Upstream::new(backends.clone());
        let _busy = [backends[0].try_acquire(), backends[0].try_acquire(), backends[1].try_acquire()];
        for _ in 0..3 {
            assert_eq!(pick(&upstream, &[], 1).as_deref(), Some("b2"));
        }
        let _b2 = [backends[2].try_acquire(), backends[2].try_acquire()];
        // b1 has 1, b0 2, b2 2.
        assert_eq!(pick(&upstream, &[], 1).as_deref(), Some("b1"));
    }

    #[test]
    fn tried_and_failing_backends_come_last() {
        let backends = states(3);
        let upstream = Upstream::new(backends.clone());
        assert!(backends[0].connect_failed(5000));
        assert!(!backends[0].connect_failed(5000));
        for _ in 0..4 {
            assert_ne!(pick(&upstream, &[], 5500).as_deref(), Some("b0"));
        }
        // All but the failing one tried: it is still a candidate.
        assert_eq!(pick(&upstream, &backends[1..], 5500).as_deref(), Some("b0"));
        assert_eq!(pick(&upstream, &backends, 5500), None);
        // The cooldown is over.
        let picks: Vec<_> = (0..3).filter_map(|_| pick(&upstream, &[], 6000)).collect();
        assert!(picks.iter().any(|p| p == "b0"), "{picks:?}");
        backends[0].connect_succeeded();
        assert_eq!(backends[0].failed_at.load(Relaxed), 0);
    }

    #[test]
    fn retired_backends_count_nothing() {
        let backends = states(1);
        let held = backends[0].try_acquire();
        assert!(held.is_some());
        backends[0].retire();
        assert!(backends[0].try_acquire().is_none());
        assert_eq!(backends[0].in_flight(), 1);
        drop(held);
        assert_eq!(backends[0].in_flight(), 0);
        backends[0].reinstate();
        assert!(backends[0].try_acquire().is_some());
    }

    #[tokio::test]
    async fn drains_wait_for_the_last_request() {
        let backend = states(1).remove(0);
        assert_eq!(Arc::clone(&backend).drained(Duration::ZERO).await, Drained::Done);

        let first = backend.try_acquire();
        let second = backend.try_acquire();
        let timed_out = Arc::clone(&backend).drained(Duration::from_millis(20)).await;
        assert_eq!(timed_out, Drained::TimedOut { left: 2 });
        assert_eq!(backend.waiters.load(SeqCst), 0);

        let drain = tokio::spawn(Arc::clone(&backend).drained(Duration::from_secs(30)));
        drop(first);
        tokio::task::yield_now().await;
        assert!(!drain.is_finished());
        drop(second);
        let drained = tokio::time::timeout(Duration::from_secs(10), drain).await;
        assert!(matches!(drained, Ok(Ok(Drained::Done))), "{drained:?}");
    }
}
