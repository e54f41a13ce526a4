//! The listen backlog of an instance on this host, read from the kernel.
//!
//! Why: a fresh sandbox is often a dev server with a tiny backlog (Python's
//! `socketserver` listens with 5). When its accept queue is full the kernel
//! drops new handshakes, and each such request waits out TCP's retransmission
//! backoff (seconds, up to a minute). With no more of this process's
//! connections in flight than the queue holds (backlog + 1 on Linux), they
//! cannot overflow it however slowly the server accepts; see
//! [`crate::instance_gate`].
//!
//! How: one `sock_diag` netlink dump of the TCP sockets in state LISTEN (what
//! `ss -lt` shows; for a listener, the kernel reports its backlog as
//! `idiag_wqueue`). Only sockets in this process's network namespace are
//! visible, and a wildcard listener is matched only for a loopback address, so
//! an instance on another host (or in another namespace) gives `None`, and the
//! caller falls back to adapting. It is a few microseconds of system calls,
//! made once per fresh instance when its lease is cached.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h` (not in `libc`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` from the kernel's TCP states.
const TCP_LISTEN: u32 = 10;
/// `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the
/// 48-byte `inet_diag_sockid`.
const REQUEST_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, the sockid, then
/// expires, rqueue, wqueue, uid, inode (u32 each).
const MESSAGE_LEN: usize = 72;
/// A dump of a host's listeners fits in a few reads; a kernel that keeps
/// sending past this is not understood, and nothing is concluded.
const MAX_READS: usize = 256;

/// The backlog (`sk_max_ack_backlog`) of the TCP listener that accepts
/// connections to `addr` in this network namespace, or `None` when none is
/// visible or the kernel cannot be asked. With several listeners on the port
/// (`SO_REUSEPORT`), the smallest.
pub fn of(addr: SocketAddr) -> Option<u32> {
    let mut smallest: Option<u32> = None;
    // A listener on `[::]` also accepts IPv4 connections, so both families
    // are asked whatever `addr` is.
    for family in [libc::AF_INET, libc::AF_INET6] {
        for (local, backlog) in dump_listeners(family)? {
            if accepts(local, addr) {
                smallest = Some(smallest.map_or(backlog, |seen| seen.min(backlog)));
            }
        }
    }
    smallest
}

/// True when a listener bound to `local` takes connections to `target`: the
/// same port, and the same address or a wildcard with `target` on loopback
/// (IPv4-mapped addresses compared as IPv4).
fn accepts(local: SocketAddr, target: SocketAddr) -> bool {
    let (local_ip, target_ip) = (local.ip().to_canonical(), target.ip().to_canonical());
    // A wildcard listener takes every address of this host, but which
    // addresses are this host's is not known here: only loopback is trusted,
    // so an instance on another host sharing the port is never matched.
    local.port() == target.port()
        && (local_ip == target_ip || (local_ip.is_unspecified() && target_ip.is_loopback()))
}

/// Every TCP listener of `family` in this namespace: its address and backlog.
fn dump_listeners(family: libc::c_int) -> Option<Vec<(SocketAddr, u32)>> {
    // SAFETY: plain socket(2); the result is checked before use and owned.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // The kernel answers at once; a bound on the wait keeps a surprise from
    // stalling the caller.
    set_receive_timeout(&socket, Duration::from_millis(100))?;

    let request = request(family);
    // SAFETY: `request` is a readable buffer of its length; the destination
    // is a zeroed `sockaddr_nl` (the kernel, port 0).
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            std::ptr::addr_of!(kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if usize::try_from(sent).ok() != Some(request.len()) {
        return None;
    }

    let mut listeners = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    for _ in 0..MAX_READS {
        // SAFETY: `buffer` is writable for its whole length.
        let read = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        let read = match usize::try_from(read) {
            Ok(read) => read,
            // A signal arrived first: ask again (bounded by MAX_READS).
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
                continue;
            }
            Err(_) => return None,
        };
        match parse(&buffer[..read], &mut listeners)? {
            Parsed::Done => return Some(listeners),
            Parsed::More => {}
        }
    }
    None
}

fn set_receive_timeout(socket: &OwnedFd, timeout: Duration) -> Option<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `value` is a valid `timeval` for the duration of the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    (result == 0).then_some(())
}

/// A dump request for the TCP listeners of `family` (host byte order, as
/// netlink wants; the socket id is left zero, which a dump ignores).
fn request(family: libc::c_int) -> Vec<u8> {
    let total = HEADER_LEN + REQUEST_LEN;
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    message.push(family as u8);
    message.push(libc::IPPROTO_TCP as u8);
    message.push(0); // no extensions
    message.push(0); // pad
    message.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    message.resize(total, 0);
    message
}

enum Parsed {
    Done,
    More,
}

/// Appends the listeners in one read of the dump; `None` on an error reply or
/// a message that does not parse.
fn parse(mut bytes: &[u8], listeners: &mut Vec<(SocketAddr, u32)>) -> Option<Parsed> {
    while bytes.len() >= HEADER_LEN {
        let length = u32::from_ne_bytes(bytes[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(bytes[4..6].try_into().ok()?);
        if length < HEADER_LEN || length > bytes.len() {
            return None;
        }
        match i32::from(kind) {
            // DONE carries the dump's error code: zero when it is whole.
            libc::NLMSG_DONE => {
                let code = bytes.get(HEADER_LEN..HEADER_LEN + 4)?;
                return (i32::from_ne_bytes(code.try_into().ok()?) == 0).then_some(Parsed::Done);
            }
            libc::NLMSG_ERROR => return None,
            _ if kind == SOCK_DIAG_BY_FAMILY => {
                listeners.push(listener(&bytes[HEADER_LEN..length])?);
            }
            _ => {}
        }
        // Messages are aligned to four bytes.
        let next = (length + 3) & !3;
        bytes = bytes.get(next..).unwrap_or_default();
    }
    Some(Parsed::More)
}

/// The address and backlog of one `inet_diag_msg`.
fn listener(body: &[u8]) -> Option<(SocketAddr, u32)> {
    if body.len() < MESSAGE_LEN {
        return None;
    }
    let family = i32::from(body[0]);
    // The socket id: source port (big-endian), destination port, then the
    // source address in 16 bytes (the first 4 for IPv4).
    let port = u16::from_be_bytes([body[4], body[5]]);
    let source: [u8; 16] = body[8..24].try_into().ok()?;
    let ip = match family {
        libc::AF_INET => IpAddr::from([source[0], source[1], source[2], source[3]]),
        libc::AF_INET6 => IpAddr::from(source),
        _ => return None,
    };
    // After the 48-byte id (bytes 4..52): expires, rqueue, then wqueue, which for a
    // listener is its backlog.
    let backlog = u32::from_ne_bytes(body[60..64].try_into().ok()?);
    Some((SocketAddr::new(ip, port), backlog))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A listener on `addr` with `backlog` (std picks its own backlog).
    pub(crate) fn listen(addr: SocketAddr, backlog: i32) -> (OwnedFd, SocketAddr) {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(backlog).unwrap();
        let local = socket.local_addr().unwrap().as_socket().unwrap();
        (socket.into(), local)
    }

    #[test]
    fn reads_the_backlog_a_listener_asked_for() {
        let (_five, five) = listen("127.0.0.1:0".parse().unwrap(), 5);
        let (_hundred, hundred) = listen("127.0.0.1:0".parse().unwrap(), 100);
        assert_eq!(of(five), Some(5));
        assert_eq!(of(hundred), Some(100));
    }

    #[test]
    fn a_wildcard_listener_serves_loopback() {
        let (_any, any) = listen("0.0.0.0:0".parse().unwrap(), 7);
        let loopback = SocketAddr::from(([127, 0, 0, 1], any.port()));
        assert_eq!(of(loopback), Some(7));
    }

    #[test]
    fn an_ipv6_listener_is_found_too() {
        let Ok(socket) = std::net::TcpListener::bind("[::1]:0") else {
            return; // no IPv6 on this host: nothing to check
        };
        drop(socket);
        let (_six, six) = listen("[::1]:0".parse().unwrap(), 9);
        assert_eq!(of(six), Some(9));
    }

    #[test]
    fn no_listener_no_backlog() {
        let (socket, addr) = listen("127.0.0.1:0".parse().unwrap(), 5);
        drop(socket);
        assert_eq!(of(addr), None);
    }

    #[test]
    fn addresses_match_by_port_and_ip_or_wildcard() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(accepts(at("0.0.0.0:80"), at("127.0.0.1:80")));
        assert!(accepts(at("[::]:80"), at("127.0.0.1:80")));
        assert!(accepts(at("[::ffff:127.0.0.1]:80"), at("127.0.0.1:80")));
        assert!(!accepts(at("127.0.0.2:80"), at("127.0.0.1:80")));
        assert!(
            !accepts(at("0.0.0.0:80"), at("10.0.0.7:80")),
            "another host's instance is not this host's listener"
        );
        assert!(!accepts(at("127.0.0.1:81"), at("127.0.0.1:80")));
    }

    #[test]
    fn a_truncated_or_error_reply_concludes_nothing() {
        let mut listeners = Vec::new();
        let mut error = vec![0u8; 20];
        error[0..4].copy_from_slice(&20u32.to_ne_bytes());
        error[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        assert!(parse(&error, &mut listeners).is_none());
        let mut short = vec![0u8; 20];
        short[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse(&short, &mut listeners).is_none());
        let mut truncated = vec![0u8; 30];
        truncated[0..4].copy_from_slice(&30u32.to_ne_bytes());
        truncated[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert!(parse(&truncated, &mut listeners).is_none());
        let mut failed = vec![0u8; 20];
        failed[0..4].copy_from_slice(&20u32.to_ne_bytes());
        failed[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        failed[16..20].copy_from_slice(&(-4i32).to_ne_bytes());
        assert!(parse(&failed, &mut listeners).is_none(), "a dump cut short");
        failed[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert!(matches!(parse(&failed, &mut listeners), Some(Parsed::Done)));
        assert!(listeners.is_empty());
    }
}
