//! Handing HTTP/2 connections to `pingora-proxy`, with the two bounds it lacks:
//! the client preface must arrive within `proxy.header_timeout` (the h2 server
//! handshake waits for it without a limit, so a client that negotiated `h2` and
//! then sent nothing held its connection forever), and a graceful stop reaches
//! the connection (GOAWAY, then its open streams finish).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;

use super::drain::Drain;
use crate::service::IngressProxy;

/// The HTTP/2 client connection preface is 24 bytes (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// Serves an HTTP/2 connection with `proxy`. It counts as work in progress for
/// a graceful stop, which it sees as a shutdown: GOAWAY, then its open streams
/// finish (within Pingora's `graceful_shutdown_timeout`). `preface_within`
/// bounds the wait for the client preface when it has not been read yet.
pub async fn serve(
    proxy: &Arc<HttpProxy<IngressProxy>>,
    drain: &Arc<Drain>,
    stream: Stream,
    preface_within: Option<Duration>,
    shutdown: &ShutdownWatch,
) {
    let _busy = drain.enter();
    let stream: Stream = match preface_within {
        Some(limit) => Box::new(PrefaceBy::new(stream, limit)),
        None => stream,
    };
    let (stop, stopping) = watch::channel(false);
    let mut pingora = shutdown.clone();
    let mut draining = drain.subscribe();
    let forward = async move {
        tokio::select! {
            _ = pingora.wait_for(|stop| *stop) => {}
            _ = draining.wait_for(|draining| *draining) => {}
        }
        stop.send_replace(true);
        // Keep the sender: the connection finishes its streams first.
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = ServerApp::process_new(proxy, stream, &stopping) => {}
        _ = forward => {}
    }
}

/// A stream whose first [`PREFACE_LEN`] bytes must arrive within a limit; a
/// read after that fails with `TimedOut`, which ends the h2 handshake.
#[derive(Debug)]
struct PrefaceBy {
    inner: Stream,
    /// Preface bytes still to come.
    remaining: usize,
    deadline: Pin<Box<Sleep>>,
}

impl PrefaceBy {
    fn new(inner: Stream, limit: Duration) -> PrefaceBy {
        PrefaceBy {
            inner,
            remaining: PREFACE_LEN,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl AsyncRead for PrefaceBy {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.remaining == 0 {
            return read;
        }
        if let Poll::Ready(Ok(())) = read {
            let got = buf.filled().len() - before;
            this.remaining = this.remaining.saturating_sub(got);
            return read;
        }
        if read.is_pending() && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no HTTP/2 preface within proxy.header_timeout",
            )));
        }
        read
    }
}

impl AsyncWrite for PrefaceBy {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for PrefaceBy {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for PrefaceBy {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for PrefaceBy {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for PrefaceBy {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
}

impl GetProxyDigest for PrefaceBy {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for PrefaceBy {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

impl Peek for PrefaceBy {}
