//! How many client connections the proxy keeps open, and the descriptor limit
//! that number is derived from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

/// Descriptors kept free for everything that is not a client connection's pair
/// (listeners, the store, the admin API, log files, sandboxes' pipes).
const RESERVED_DESCRIPTORS: u64 = 128;

/// Counts open client connections against `proxy.max_connections`.
pub struct ConnectionLimiter {
    open: AtomicUsize,
    max: usize,
    open_gauge: IntGauge,
    refused: IntCounter,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnectionGuard(Arc<ConnectionLimiter>);

impl ConnectionLimiter {
    /// A limiter admitting `max` connections at once, reporting to the gauge of
    /// open connections and the counter of refused ones.
    pub fn new(max: usize, open_gauge: IntGauge, refused: IntCounter) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            open: AtomicUsize::new(0),
            max: max.max(1),
            open_gauge,
            refused,
        })
    }

    /// Admits one more connection, or `None` (counted as refused) at the limit.
    pub fn try_enter(self: &Arc<Self>) -> Option<ConnectionGuard> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        if admitted {
            self.open_gauge.inc();
            Some(ConnectionGuard(Arc::clone(self)))
        } else {
            self.refused.inc();
            None
        }
    }

    /// True while no new connection would be admitted.
    pub fn is_saturated(&self) -> bool {
        self.open.load(Ordering::Acquire) >= self.max
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.open_gauge.dec();
    }
}

/// `proxy.max_connections` when it is 0: half of the descriptors left after a
/// reserve, since a proxied request holds an upstream connection beside its
/// client connection. At least 16.
pub fn derived_max_connections(descriptor_limit: u64) -> usize {
    let usable = descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(usable.max(16)).unwrap_or(usize::MAX)
}

/// The soft `RLIMIT_NOFILE` now (1,024 when it cannot be read).
pub fn descriptor_limit() -> u64 {
    read_descriptor_limit().map_or(1024, |limit| limit.rlim_cur)
}

/// `RLIMIT_NOFILE` as it is now.
fn read_descriptor_limit() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// The soft and hard `RLIMIT_NOFILE` before and after raising the soft limit to
/// the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard limit, as nginx's
/// `worker_rlimit_nofile` lets an operator do: the common default soft limit of
/// 1,024 is far below what an edge proxy holds open.
pub fn raise_descriptor_limit() -> std::io::Result<DescriptorLimits> {
    let mut limit = read_descriptor_limit()?;
    let soft_before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Ok(DescriptorLimits {
        soft_before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_admits_up_to_max_and_frees_on_drop() {
        let open = IntGauge::new("open", "open").unwrap();
        let refused = IntCounter::new("refused", "refused").unwrap();
        let limiter = ConnectionLimiter::new(2, open.clone(), refused.clone());
        let a = limiter.try_enter().unwrap();
        let _b = limiter.try_enter().unwrap();
        assert!(limiter.is_saturated());
        assert!(limiter.try_enter().is_none());
        assert_eq!((open.get(), refused.get()), (2, 1));
        drop(a);
        assert!(!limiter.is_saturated());
        assert!(limiter.try_enter().is_some());
    }

    #[test]
    fn the_derived_limit_leaves_room_for_upstreams() {
        assert_eq!(derived_max_connections(1024), 448);
        assert_eq!(derived_max_connections(100), 16);
        assert_eq!(derived_max_connections(1 << 20), 524_224);
    }
}
