//! The access log: one line per request, written off the request thread.
//!
//! A request builds a small [`AccessRecord`] (copies of the few strings it
//! needs, the rest numbers and shared pointers) and hands it to a bounded
//! channel ([`AccessLog::send`], never blocking). One writer thread formats the
//! records ([`format`]) into a reused buffer and writes them in batches to
//! stdout or a file, which it reopens on SIGUSR1 (logrotate's `postrotate`). A
//! full channel drops the line and counts it in
//! `ingress_access_log_dropped_total`: a slow disk must never hold a request.

pub mod format;
pub mod record;
pub mod writer;

pub use record::{AccessRecord, RequestText};
pub use writer::{install_reopen_signal, AccessLog};
