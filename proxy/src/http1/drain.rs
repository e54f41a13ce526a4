//! Graceful shutdown of client connections. Pingora cancels every task when its
//! runtimes shut down right after its grace period, so the proxy drains before
//! it tells Pingora to stop: on SIGTERM (or the trigger) idle keep-alive
//! connections close at once, new connections are closed, a request in progress
//! finishes with `Connection: close`, and the stop goes on once no request is in
//! progress or after the drain limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The drain state shared by the connection loop and the shutdown watch.
pub struct Drain {
    draining: watch::Sender<bool>,
    busy: AtomicUsize,
}

/// One request in progress; dropping it ends it.
pub struct Busy(Arc<Drain>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain {
            draining: watch::channel(false).0,
            busy: AtomicUsize::new(0),
        })
    }

    /// Starts draining. Idempotent.
    pub fn start(&self) {
        self.draining.send_replace(true);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// A receiver that changes when draining starts.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Counts a request as in progress until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Requests in progress.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }

    /// Waits until no request is in progress, for at most `limit`.
    pub async fn settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.busy() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn settles_when_the_last_request_ends_or_at_the_limit() {
        let drain = Drain::new();
        let busy = drain.enter();
        assert_eq!(drain.busy(), 1);
        let started = Instant::now();
        drain.settled(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "waited out the limit"
        );
        drop(busy);
        let started = Instant::now();
        drain.settled(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!drain.is_draining());
        drain.start();
        assert!(drain.is_draining());
    }
}
