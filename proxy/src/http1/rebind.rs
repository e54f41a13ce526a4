//! Moving an accepted client socket onto the reactor of the thread that serves it.
//!
//! Pingora's accept loop runs on one worker thread and registers every accepted
//! socket with that thread's I/O driver, then spawns the connection on a random
//! worker (`work_stealing = false`). For a connection served elsewhere, every
//! readiness event is then picked up by the accept thread's `epoll` and handed
//! over with a cross-thread wake-up. Re-registering the socket where it is served
//! (a `dup`, one `epoll_ctl` each way, a `close`, once per connection) removes
//! that per-request hand-over. The new stream also has no 64 KiB read buffer of
//! its own (the loop buffers), which Pingora's listener gives every connection.

use std::os::fd::FromRawFd;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest};

/// `stream` registered with the current thread's reactor, or `stream` itself
/// when it cannot be moved (TLS, or a failing syscall).
pub fn to_this_thread(stream: Stream) -> Stream {
    if stream.get_ssl_digest().is_some() {
        return stream;
    }
    let fd = stream.id();
    // SAFETY: `fd` is the open socket of `stream`, which we still own; the
    // duplicate is a new descriptor owned by the std stream below.
    let duplicate = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if duplicate < 0 {
        return stream;
    }
    // SAFETY: `duplicate` is a fresh descriptor of a connected TCP socket that
    // nothing else owns.
    let socket = unsafe { std::net::TcpStream::from_raw_fd(duplicate) };
    if socket.set_nonblocking(true).is_err() {
        return stream;
    }
    let Ok(socket) = tokio::net::TcpStream::from_std(socket) else {
        return stream;
    };
    // Deregisters the original from the accept thread's reactor and closes its
    // descriptor; the duplicate keeps the connection open.
    drop(stream);
    let mut moved = L4Stream::from(socket);
    moved.set_socket_digest(SocketDigest::from_raw_fd(duplicate));
    Box::new(moved)
}
