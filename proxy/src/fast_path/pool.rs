//! The fast path's upstream connection pool: one per worker thread, so taking and
//! returning a connection takes no lock, spawns no task and makes no syscall
//! (Pingora's pool spawns a watcher task per returned connection and calls
//! `getpeername` per reuse; cloudflare/pingora#998 can even drop a healthy one).
//!
//! Idle connections are kept per upstream address, most recent last (LIFO, as
//! nginx does, so a few warm connections do the work and the rest age out). An
//! idle connection is discarded when it is taken and is past its idle limit or
//! its reuse cap, or is readable (the upstream sent data, closed or failed while
//! idle). Nothing watches idle connections in between: expired ones are swept when
//! connections are returned.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection leaves the pool after this many requests (nginx's
/// `keepalive_requests` default is 1,000).
pub const MAX_REUSES: u32 = 1_000;
/// Idle connections of every address are swept once per this many returns.
const SWEEP_EVERY: u32 = 256;

/// An upstream connection and how many requests it has carried.
pub struct Conn {
    pub stream: TcpStream,
    pub uses: u32,
    /// True when it came from the pool (so a failure before any response byte
    /// may be the upstream having closed it while idle).
    pub reused: bool,
}

struct Idle {
    stream: TcpStream,
    uses: u32,
    expires: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    count: usize,
    returns: u32,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A live idle connection to `addr`, if this thread has one.
pub fn take(addr: SocketAddr) -> Option<Conn> {
    let now = Instant::now();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pool = &mut *pool;
        let idle = pool.idle.get_mut(&addr)?;
        while let Some(candidate) = idle.pop() {
            pool.count -= 1;
            if candidate.expires > now && is_quiet(&candidate.stream) {
                return Some(Conn {
                    stream: candidate.stream,
                    uses: candidate.uses,
                    reused: true,
                });
            }
        }
        None
    })
}

/// Keeps `conn` for reuse for at most `idle_for`, unless it has carried
/// [`MAX_REUSES`] requests or this thread already keeps `cap` idle connections.
pub fn give_back(addr: SocketAddr, conn: Conn, idle_for: Duration, cap: usize) {
    if conn.uses >= MAX_REUSES || idle_for.is_zero() {
        return;
    }
    let now = Instant::now();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pool = &mut *pool;
        pool.returns = pool.returns.wrapping_add(1);
        if pool.returns % SWEEP_EVERY == 0 {
            sweep(pool, now);
        }
        if pool.count >= cap {
            return;
        }
        pool.count += 1;
        pool.idle.entry(addr).or_default().push(Idle {
            stream: conn.stream,
            uses: conn.uses,
            expires: now + idle_for,
        });
    });
}

/// Closes expired and dead idle connections of every address.
fn sweep(pool: &mut Pool, now: Instant) {
    let mut kept = 0;
    pool.idle.retain(|_, idle| {
        idle.retain(|conn| conn.expires > now && is_quiet(&conn.stream));
        kept += idle.len();
        !idle.is_empty()
    });
    pool.count = kept;
}

/// An idle connection must have nothing to read: data, an EOF or an error all
/// mean the upstream will not take another request on it. `try_read` makes no
/// syscall unless the reactor saw the socket become readable.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Idle connections this thread keeps.
pub fn idle_count() -> usize {
    POOL.with(|pool| pool.borrow().count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn lifo_reuse_and_dead_or_expired_connections_are_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, _a_server) = pair(&listener).await;
        let (b, mut b_server) = pair(&listener).await;
        let a_port = a.local_addr().unwrap().port();
        let b_port = b.local_addr().unwrap().port();
        let conn = |stream| Conn {
            stream,
            uses: 1,
            reused: false,
        };
        give_back(addr, conn(a), Duration::from_secs(60), 10);
        give_back(addr, conn(b), Duration::from_secs(60), 10);
        assert_eq!(idle_count(), 2);
        // The most recent first.
        let taken = take(addr).unwrap();
        assert_eq!(taken.stream.local_addr().unwrap().port(), b_port);
        assert!(taken.reused);
        give_back(addr, taken, Duration::from_secs(60), 10);
        // The upstream closes b while idle: b is skipped, a is taken.
        b_server.shutdown().await.unwrap();
        drop(b_server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let taken = take(addr).unwrap();
        assert_eq!(taken.stream.local_addr().unwrap().port(), a_port);
        assert!(take(addr).is_none());
        // Expired connections are never handed out; the cap and the reuse cap hold.
        give_back(addr, taken, Duration::from_millis(1), 10);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(take(addr).is_none());
        let (c, _c_server) = pair(&listener).await;
        give_back(
            addr,
            Conn {
                stream: c,
                uses: MAX_REUSES,
                reused: true,
            },
            Duration::from_secs(60),
            10,
        );
        assert!(take(addr).is_none(), "past the reuse cap");
        let (d, _d_server) = pair(&listener).await;
        give_back(addr, conn(d), Duration::from_secs(60), 0);
        assert!(take(addr).is_none(), "past the per-thread cap");
    }
}
