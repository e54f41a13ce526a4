//! The per-instance concurrency limit (`runtime.max_conns_per_instance`), like
//! HAProxy's per-server `maxconn` with `timeout queue`: a request takes a slot of
//! its instance before it connects and gives it back when its exchange ends;
//! past the limit it waits in FIFO order, for at most `proxy.queue_timeout`.
//!
//! Why: preview sandboxes are often single-process dev servers with a small
//! listen backlog. When a woken version becomes ready, every held request would
//! otherwise connect at once, and a server with a backlog of 5 drops most of a
//! burst of 200 connects. With the gate it sees at most the limit at once.
//!
//! One gate per instance address, shared by every lease over that address (so a
//! lease refresh or a clone sharing the process keeps the same count). Gates are
//! looked up when a lease is cached, never on the hit path, which only clones
//! the gate out of the lease.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Semaphore;

/// The slots of one instance. FIFO: tokio's semaphore serves waiters in order.
pub type Gate = Semaphore;

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
    /// a lease is cached.
    pub fn gates_for(&self, addrs: &[SocketAddr]) -> Option<Box<[Arc<Gate>]>> {
        if self.max == 0 {
            return None;
        }
        // A poisoned lock only means another thread panicked mid-insert; the map
        // of weak pointers is still usable.
        let mut registry = self
            .gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if registry.gates.len() > registry.sweep_at {
            registry.gates.retain(|_, gate| gate.strong_count() > 0);
            registry.sweep_at = (registry.gates.len() * 2).max(SWEEP_AT);
        }
        let gates = &mut registry.gates;
        let found = addrs
            .iter()
            .map(|addr| {
                if let Some(gate) = gates.get(addr).and_then(Weak::upgrade) {
                    return gate;
                }
                let gate = Arc::new(Semaphore::new(self.max));
                gates.insert(*addr, Arc::downgrade(&gate));
                gate
            })
            .collect();
        Some(found)
    }
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
        let first = gates.gates_for(&[addr(1), addr(2)]).unwrap();
        let again = gates.gates_for(&[addr(1)]).unwrap();
        assert!(Arc::ptr_eq(&first[0], &again[0]));
        assert!(!Arc::ptr_eq(&first[0], &first[1]));
        let slot = Arc::clone(&first[0]).try_acquire_owned().unwrap();
        let other = Arc::clone(&again[0]).try_acquire_owned().unwrap();
        assert!(first[0].try_acquire().is_err(), "two slots, both taken");
        drop((slot, other, first, again));
        let fresh = gates.gates_for(&[addr(1)]).unwrap();
        assert_eq!(
            fresh[0].available_permits(),
            2,
            "a forgotten gate starts anew"
        );
    }

    #[test]
    fn no_limit_no_gates() {
        assert!(InstanceGates::new(0).gates_for(&[addr(1)]).is_none());
    }
}
