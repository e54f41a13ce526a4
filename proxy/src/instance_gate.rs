//! The per-instance concurrency limit (`runtime.max_conns_per_instance`), like
//! HAProxy's per-server `maxconn` with `timeout queue`: a request takes a slot of
//! its instance before it connects and gives it back when its exchange ends;
//! past the limit it waits in FIFO order, for at most `proxy.queue_timeout`.
//!
//! Why: preview sandboxes are often single-process dev servers with a small
//! listen backlog. When a woken version becomes ready, every held request would
//! otherwise connect at once. When the accept queue is full the kernel drops
//! the handshake, and the request waits out TCP's retransmission backoff:
//! Python's `http.server` (backlog 5) answers 64 concurrent connects in up to
//! 28 s, 4 to 6 in milliseconds.
//!
//! **Fresh instances** (ready within [`FRESH_WINDOW_MS`]) get a narrower limit:
//! - When the instance listens on this host, its backlog is read from the
//!   kernel ([`crate::listen_backlog`]) and the limit is backlog + 1, what
//!   Linux's accept queue holds: the queue cannot overflow, however slowly the
//!   server accepts.
//! - Otherwise the limit adapts like TCP's congestion window in congestion
//!   avoidance: it starts at [`FIRST_LIMIT`] and grows by one per window of
//!   clean exchanges. No slow start: the sign of trouble (a failed connect, or
//!   retransmissions on the upstream socket) arrives only when the exchange
//!   ends, seconds later, and a limit doubling per round would reach the
//!   configured one long before (seen in CI).
//! - Either way it halves, once per burst, on a sign of trouble.
//!
//! When the window ends the gate opens to the configured limit, but not while
//! requests wait for a slot: a queued burst released at once is what overruns a
//! fresh server. It opens once the queue has drained.
//!
//! One gate per instance address, shared by every lease over that address (so a
//! lease refresh or a clone sharing the process keeps the same count). Gates are
//! looked up when a lease is cached, never on the hit path, which only clones
//! the gate out of the lease.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::listen_backlog;

/// An instance that became ready this long ago or less is fresh: its connects
/// are retried and its limit is narrowed.
pub const FRESH_WINDOW_MS: u64 = 5_000;

/// The limit a fresh instance of unknown backlog starts with: inside the
/// smallest listen backlog seen in practice (5, Python's `socketserver`; Linux
/// queues backlog + 1).
pub const FIRST_LIMIT: usize = 4;

/// Past its window, a gate with requests waiting checks again this often
/// whether its queue has drained.
const OPEN_RETRY: Duration = Duration::from_millis(100);

/// Past its window, a gate whose queue never drains opens after this anyway.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);

/// True while an instance that became ready at `ready_at_ms` (0: not known to be
/// fresh) is in its first [`FRESH_WINDOW_MS`].
pub fn is_fresh(ready_at_ms: u64, now_ms: u64) -> bool {
    ready_at_ms > 0 && now_ms.saturating_sub(ready_at_ms) < FRESH_WINDOW_MS
}

/// The slots of one instance. FIFO: tokio's semaphore serves waiters in order.
#[derive(Debug)]
pub struct Gate {
    slots: Semaphore,
    max: usize,
    /// Set once the limit is `max` for good: releases skip the adaptive state.
    settled: AtomicBool,
    /// Requests waiting in [`Gate::take`].
    waiting: AtomicUsize,
    /// Counts the halvings. A slot remembers the count it was taken under, so a
    /// burst taken before a halving halves the limit once, not once per slot
    /// (TCP's one reduction per window).
    epoch: AtomicU64,
    adapt: Mutex<Adapt>,
}

/// The narrowed limit of a fresh instance.
#[derive(Debug)]
struct Adapt {
    /// Slots in circulation (free and taken).
    limit: usize,
    /// What `limit` moves toward as slots come back.
    target: usize,
    /// What `target` grows to at most: backlog + 1 when known, else `max`.
    ceiling: usize,
    /// Clean exchanges since the last increase.
    clean: usize,
}

/// What an exchange showed about its instance (its verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Not judged (the client left, a reused connection, a settled gate).
    Unknown,
    /// Connected and answered without retransmissions.
    Clean,
    /// A connect failed or the exchange needed retransmissions.
    Congested,
}

/// A slot taken on a [`Gate`], given back (and the exchange's exchange applied)
/// when dropped.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Gate>,
    exchange: Exchange,
    epoch: u64,
}

impl Slot {
    /// Records what the exchange showed; the last call wins.
    pub fn judge(&mut self, exchange: Exchange) {
        self.exchange = exchange;
    }

    /// True while the gate adapts, so a exchange is worth measuring.
    pub fn wants_verdict(&self) -> bool {
        !self.gate.settled.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.give_back(self.exchange, self.epoch);
    }
}

impl Gate {
    /// A gate of `max` slots. A `fresh` one is narrowed until [`Gate::open`]:
    /// to `backlog + 1` when the instance's listen backlog is known, else to
    /// [`FIRST_LIMIT`], growing.
    fn new(max: usize, fresh: bool, backlog: Option<u32>) -> Gate {
        let (first, ceiling) = match (fresh, backlog) {
            (false, _) => (max, max),
            (true, Some(backlog)) => {
                let holds = usize::try_from(backlog)
                    .map_or(max, |b| b.saturating_add(1))
                    .min(max);
                (holds, holds)
            }
            (true, None) => (FIRST_LIMIT.min(max), max),
        };
        Gate {
            slots: Semaphore::new(first),
            max,
            settled: AtomicBool::new(first == max),
            waiting: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            adapt: Mutex::new(Adapt {
                limit: first,
                target: first,
                ceiling,
                clean: 0,
            }),
        }
    }

    /// A slot at once, if one is free.
    pub fn try_take(self: &Arc<Gate>) -> Option<Slot> {
        let permit = self.slots.try_acquire().ok()?;
        permit.forget();
        Some(self.slot())
    }

    /// A slot, waiting in FIFO order. Cancel-safe: dropping the future before it
    /// completes takes nothing.
    pub async fn take(self: &Arc<Gate>) -> Slot {
        let _waiting = Waiting::new(&self.waiting);
        // The semaphore is never closed; were it, the request would go through
        // unlimited rather than fail.
        if let Ok(permit) = self.slots.acquire().await {
            permit.forget();
        }
        self.slot()
    }

    fn slot(self: &Arc<Gate>) -> Slot {
        Slot {
            gate: Arc::clone(self),
            exchange: Exchange::Unknown,
            epoch: self.epoch.load(Ordering::Relaxed),
        }
    }

    /// The limit now, while it is narrower than the configured one (a fresh
    /// instance); `None` once the gate is open.
    pub fn narrowed_to(&self) -> Option<usize> {
        if self.settled.load(Ordering::Acquire) {
            return None;
        }
        let limit = self.lock().limit;
        (limit < self.max).then_some(limit)
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Ends the fresh window: opens the gate once no request waits for a slot,
    /// checking again every [`OPEN_RETRY`]. Meanwhile the limit may grow past
    /// the backlog (one per window of clean exchanges, halving on trouble), and
    /// [`OPEN_DEADLINE`] after the window it opens anyway: a queue that never
    /// drains (steady load, or a client keeping requests queued) must not pin
    /// the instance at its narrow limit.
    async fn open_when_drained(gate: Weak<Gate>) {
        let deadline = tokio::time::Instant::now() + OPEN_DEADLINE;
        loop {
            let Some(gate) = gate.upgrade() else {
                return;
            };
            if gate.waiting.load(Ordering::Acquire) == 0 || tokio::time::Instant::now() >= deadline
            {
                gate.open();
                return;
            }
            gate.lock().ceiling = gate.max;
            drop(gate);
            tokio::time::sleep(OPEN_RETRY).await;
        }
    }

    /// Ends adaptation: the limit becomes the configured one.
    pub fn open(&self) {
        let mut adapt = self.lock();
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        self.slots.add_permits(self.max.saturating_sub(adapt.limit));
        adapt.limit = self.max;
        adapt.target = self.max;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Adapt> {
        // A poisoned lock only means a panic elsewhere mid-update; the numbers
        // are still usable.
        self.adapt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn give_back(&self, exchange: Exchange, epoch: u64) {
        if self.settled.load(Ordering::Acquire) {
            self.slots.add_permits(1);
            return;
        }
        let mut adapt = self.lock();
        if self.settled.load(Ordering::Acquire) {
            // Opened meanwhile: `open` counted this slot in the limit.
            self.slots.add_permits(1);
            return;
        }
        match exchange {
            Exchange::Unknown => {}
            // Only a slot taken since the last halving halves again.
            Exchange::Congested if epoch == self.epoch.load(Ordering::Relaxed) => {
                self.epoch.fetch_add(1, Ordering::Relaxed);
                adapt.clean = 0;
                adapt.target = (adapt.limit / 2).max(1);
            }
            Exchange::Congested => {}
            Exchange::Clean => {
                adapt.clean += 1;
                if adapt.clean >= adapt.target {
                    adapt.clean = 0;
                    adapt.target += 1;
                }
            }
        }
        adapt.target = adapt.target.min(adapt.ceiling);
        if adapt.limit > adapt.target {
            // This slot leaves circulation: the limit shrinks by one.
            adapt.limit -= 1;
        } else {
            let grow = adapt.target - adapt.limit;
            adapt.limit = adapt.target;
            self.slots.add_permits(1 + grow);
            if adapt.limit == self.max {
                // Grown to the configured limit: nothing left to adapt.
                self.settled.store(true, Ordering::Release);
            }
        }
    }

    #[cfg(test)]
    fn limit(&self) -> usize {
        self.lock().limit
    }

    #[cfg(test)]
    fn wants_verdict_for_test(&self) -> bool {
        !self.settled.load(Ordering::Acquire)
    }
}

/// Counts a request in [`Gate::take`] for as long as it waits, including when
/// its future is dropped (the client left, the queue timeout).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gates of every instance that has a cached lease.
pub struct InstanceGates {
    max: usize,
    gates: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    gates: HashMap<SocketAddr, Weak<Gate>>,
    /// The map is swept when it grows past this, which then doubles what was
    /// left, so sweeps cost O(1) per insert over time.
    sweep_at: usize,
}

/// Forgotten gates (no lease holds them any more) are swept once the map holds
/// more than this many entries (or twice what the last sweep kept).
const SWEEP_AT: usize = 1024;

impl InstanceGates {
    /// Gates of `max` slots each; `max == 0` means no limit (and no gates).
    pub fn new(max: usize) -> InstanceGates {
        InstanceGates {
            max,
            gates: Mutex::new(Registry {
                gates: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// The slots of each instance.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The gate of each of `addrs`, or `None` when there is no limit. Called when
    /// a lease is cached, with when its instances became ready: a gate made for a
    /// fresh instance is narrowed until the fresh window ends and its queue has
    /// drained (a timer opens it; with no runtime to run one, it starts open).
    pub fn gates_for(
        &self,
        addrs: &[SocketAddr],
        ready_at_ms: u64,
        now_ms: u64,
    ) -> Option<Box<[Arc<Gate>]>> {
        if self.max == 0 {
            return None;
        }
        // At most the window from now: a ready time from a control node whose
        // clock runs ahead must not keep the gate narrow for longer.
        let open_in = is_fresh(ready_at_ms, now_ms)
            .then(|| {
                ready_at_ms
                    .saturating_add(FRESH_WINDOW_MS)
                    .saturating_sub(now_ms)
                    .min(FRESH_WINDOW_MS)
            })
            .and_then(|ms| {
                let runtime = tokio::runtime::Handle::try_current().ok()?;
                Some((runtime, Duration::from_millis(ms)))
            });
        let found = addrs
            .iter()
            .map(|addr| {
                if let Some(gate) = self.known(addr) {
                    return gate;
                }
                // Asked outside the registry's lock: one netlink exchange with
                // the kernel, only for a fresh instance.
                let backlog = open_in.as_ref().and_then(|_| listen_backlog::of(*addr));
                let gate = Arc::new(Gate::new(self.max, open_in.is_some(), backlog));
                let gate = self.remember(*addr, gate);
                if let Some((runtime, after)) = &open_in {
                    let weak = Arc::downgrade(&gate);
                    let after = *after;
                    runtime.spawn(async move {
                        tokio::time::sleep(after).await;
                        Gate::open_when_drained(weak).await;
                    });
                }
                gate
            })
            .collect();
        Some(found)
    }

    /// The live gate of `addr`, if any lease still holds one.
    fn known(&self, addr: &SocketAddr) -> Option<Arc<Gate>> {
        self.registry().gates.get(addr).and_then(Weak::upgrade)
    }

    /// Records `gate` as the gate of `addr`, unless another thread recorded one
    /// meanwhile: that one is returned and `gate` dropped.
    fn remember(&self, addr: SocketAddr, gate: Arc<Gate>) -> Arc<Gate> {
        let mut registry = self.registry();
        if registry.gates.len() > registry.sweep_at {
            registry.gates.retain(|_, gate| gate.strong_count() > 0);
            registry.sweep_at = (registry.gates.len() * 2).max(SWEEP_AT);
        }
        if let Some(raced) = registry.gates.get(&addr).and_then(Weak::upgrade) {
            return raced;
        }
        registry.gates.insert(addr, Arc::downgrade(&gate));
        gate
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A poisoned lock only means another thread panicked mid-insert; the map
        // of weak pointers is still usable.
        self.gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether the kernel retransmitted anything on the TCP socket `fd` (a SYN or
/// data): the peer dropped part of the exchange. `None` when it cannot tell.
pub fn retransmitted(fd: std::os::unix::io::RawFd) -> Option<bool> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes; the kernel writes at
    // most `len` bytes of `struct tcp_info` and reports how many. `fd` is the
    // request's own upstream socket, open while its response is being read.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if result != 0 {
        return None;
    }
    // SAFETY: zeroed, then (partly) written by the kernel: every field is an
    // integer, valid for any bytes.
    let info = unsafe { info.assume_init() };
    Some(info.tcpi_total_retrans > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn one_gate_per_address_shared_while_held() {
        let gates = InstanceGates::new(2);
        let first = gates.gates_for(&[addr(1), addr(2)], 0, 0).unwrap();
        let again = gates.gates_for(&[addr(1)], 0, 0).unwrap();
        assert!(Arc::ptr_eq(&first[0], &again[0]));
        assert!(!Arc::ptr_eq(&first[0], &first[1]));
        let slot = first[0].try_take().unwrap();
        let other = again[0].try_take().unwrap();
        assert!(first[0].try_take().is_none(), "two slots, both taken");
        drop((slot, other, first, again));
        let fresh = gates.gates_for(&[addr(1)], 0, 0).unwrap();
        assert_eq!(fresh[0].available(), 2, "a forgotten gate starts anew");
    }

    #[test]
    fn no_limit_no_gates() {
        assert!(InstanceGates::new(0).gates_for(&[addr(1)], 0, 0).is_none());
    }

    /// Takes `n` slots and gives them back with `exchange`.
    fn exchanges(gate: &Arc<Gate>, n: usize, exchange: Exchange) {
        let mut slots: Vec<Slot> = (0..n).map_while(|_| gate.try_take()).collect();
        assert_eq!(slots.len(), n, "{n} slots free");
        for slot in &mut slots {
            slot.judge(exchange);
        }
    }

    #[test]
    fn a_fresh_limit_of_unknown_backlog_starts_small_grows_per_window_and_halves() {
        let gate = Arc::new(Gate::new(64, true, None));
        assert_eq!(gate.available(), FIRST_LIMIT);
        assert!(gate.wants_verdict_for_test());
        exchanges(&gate, 4, Exchange::Clean);
        assert_eq!(gate.limit(), 5, "one more per window of clean exchanges");
        exchanges(&gate, 4, Exchange::Clean);
        assert_eq!(gate.limit(), 5, "not per exchange: no slow start");
        exchanges(&gate, 1, Exchange::Clean);
        assert_eq!(gate.limit(), 6);
        for _ in 0..6 {
            let n = gate.limit();
            exchanges(&gate, n, Exchange::Clean);
        }
        assert_eq!(gate.limit(), 12);
        exchanges(&gate, 1, Exchange::Congested);
        assert_eq!(gate.limit(), 11, "shrinks one slot per release toward 6");
        exchanges(&gate, 11, Exchange::Unknown);
        assert_eq!(gate.limit(), 6);
        assert_eq!(gate.available(), 6);
        exchanges(&gate, 3, Exchange::Unknown);
        assert_eq!(gate.limit(), 6, "an unjudged exchange changes nothing");
        let held = gate.try_take().unwrap();
        gate.open();
        assert_eq!(gate.available(), 63, "open: the configured limit");
        drop(held);
        assert_eq!(gate.available(), 64);
        exchanges(&gate, 64, Exchange::Congested);
        assert_eq!(gate.available(), 64, "an open gate no longer adapts");
    }

    #[test]
    fn a_fresh_limit_of_known_backlog_holds_what_the_accept_queue_holds() {
        let gate = Arc::new(Gate::new(64, true, Some(5)));
        assert_eq!(gate.available(), 6, "Linux queues backlog + 1");
        for _ in 0..10 {
            exchanges(&gate, 6, Exchange::Clean);
        }
        assert_eq!(gate.limit(), 6, "never more than the queue holds");
        exchanges(&gate, 6, Exchange::Congested);
        assert_eq!(gate.limit(), 3, "a shared instance can still be overrun");
        for _ in 0..3 {
            let n = gate.limit();
            exchanges(&gate, n, Exchange::Clean);
        }
        assert_eq!(gate.limit(), 6, "and grows back to the queue, no further");
        let wide = Arc::new(Gate::new(64, true, Some(511)));
        assert_eq!(
            wide.available(),
            64,
            "a large backlog: the configured limit"
        );
        assert!(!wide.wants_verdict_for_test(), "nothing left to adapt");
    }

    #[test]
    fn a_congested_burst_halves_the_limit_once() {
        let gate = Arc::new(Gate::new(64, true, Some(7)));
        assert_eq!(gate.limit(), 8);
        exchanges(&gate, 8, Exchange::Congested);
        assert_eq!(gate.limit(), 4, "eight slots of one burst, one halving");
        exchanges(&gate, 4, Exchange::Congested);
        assert_eq!(gate.limit(), 2, "a burst taken after it halves again");
    }

    #[test]
    fn the_limit_never_drops_below_one_slot() {
        let gate = Arc::new(Gate::new(64, true, None));
        for _ in 0..5 {
            let n = gate.available();
            exchanges(&gate, n, Exchange::Congested);
        }
        assert_eq!(gate.limit(), 1);
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_time_ahead_of_this_clock_opens_within_the_window() {
        let gates = InstanceGates::new(64);
        let now = 1_000_000;
        let ahead = gates.gates_for(&[addr(1)], now + 60_000, now).unwrap();
        assert_eq!(ahead[0].available(), FIRST_LIMIT);
        tokio::time::sleep(Duration::from_millis(FRESH_WINDOW_MS + 1)).await;
        assert_eq!(ahead[0].available(), 64);
    }

    #[test]
    fn a_gate_of_fewer_slots_than_the_first_limit_keeps_its_own() {
        let gate = Arc::new(Gate::new(2, true, None));
        assert_eq!(gate.available(), 2);
        assert!(!gate.wants_verdict_for_test());
    }

    #[tokio::test(start_paused = true)]
    async fn a_gate_made_for_a_fresh_instance_opens_when_the_window_ends() {
        let gates = InstanceGates::new(64);
        let now = 1_000_000;
        let fresh = gates.gates_for(&[addr(1)], now - 1_000, now).unwrap();
        let old = gates
            .gates_for(&[addr(2)], now - FRESH_WINDOW_MS, now)
            .unwrap();
        assert_eq!(fresh[0].available(), FIRST_LIMIT);
        assert_eq!(old[0].available(), 64, "past its window: open at once");
        tokio::time::sleep(Duration::from_millis(3_999)).await;
        assert_eq!(fresh[0].available(), FIRST_LIMIT);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(fresh[0].available(), 64);
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_window_a_gate_opens_only_once_its_queue_has_drained() {
        let gates = InstanceGates::new(64);
        let now = 1_000_000;
        let gate = gates.gates_for(&[addr(1)], now, now).unwrap()[0].clone();
        let held: Vec<Slot> = (0..FIRST_LIMIT).map_while(|_| gate.try_take()).collect();
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.take().await }
        });
        tokio::time::sleep(Duration::from_millis(FRESH_WINDOW_MS + 500)).await;
        assert!(!waiter.is_finished(), "still narrow while a request waits");
        assert_eq!(gate.limit(), FIRST_LIMIT);
        drop(held);
        let slot = waiter.await.unwrap();
        tokio::time::sleep(OPEN_RETRY * 2).await;
        assert_eq!(gate.available(), 63, "drained: open");
        drop(slot);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_never_drains_does_not_keep_the_gate_narrow() {
        let gates = InstanceGates::new(64);
        let now = 1_000_000;
        let gate = gates.gates_for(&[addr(1)], now, now).unwrap()[0].clone();
        let _held: Vec<Slot> = (0..FIRST_LIMIT).map_while(|_| gate.try_take()).collect();
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.take().await }
        });
        let window = Duration::from_millis(FRESH_WINDOW_MS);
        tokio::time::sleep(window + OPEN_DEADLINE - OPEN_RETRY * 2).await;
        assert!(!waiter.is_finished(), "narrow until the deadline");
        tokio::time::sleep(OPEN_RETRY * 3).await;
        assert!(waiter.await.is_ok(), "then open, queue or not");
        assert_eq!(gate.narrowed_to(), None);
    }

    #[test]
    fn past_its_window_the_limit_grows_past_the_backlog_to_the_configured_one() {
        let gate = Arc::new(Gate::new(8, true, Some(5)));
        gate.lock().ceiling = 8;
        for _ in 0..2 {
            let n = gate.limit();
            exchanges(&gate, n, Exchange::Clean);
        }
        assert_eq!(gate.limit(), 8);
        assert_eq!(gate.narrowed_to(), None, "grown to the limit: settled");
        assert!(!gate.wants_verdict_for_test());
    }

    #[tokio::test]
    async fn a_fresh_gate_on_this_host_starts_at_its_listeners_backlog() {
        let (_socket, listening) = crate::listen_backlog::tests::listen(addr(0), 5);
        let gates = InstanceGates::new(64);
        let now = 1_000_000;
        let fresh = gates.gates_for(&[listening], now, now).unwrap();
        assert_eq!(fresh[0].available(), 6, "backlog 5 holds 6");
    }

    #[tokio::test]
    async fn a_waiter_is_served_when_a_slot_comes_back() {
        let gate = Arc::new(Gate::new(1, false, None));
        let held = gate.try_take().unwrap();
        let waiter = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move { gate.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        let slot = waiter.await.unwrap();
        assert_eq!(gate.available(), 0);
        drop(slot);
        assert_eq!(gate.available(), 1);
    }

    #[test]
    fn a_fresh_socket_shows_no_retransmissions() {
        use std::os::unix::io::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(retransmitted(client.as_raw_fd()), Some(false));
        assert_eq!(retransmitted(-1), None, "not a socket: cannot tell");
    }
}
