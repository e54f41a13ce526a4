//! Prometheus metrics of the data plane. Uses `prometheus` 0.14, the version
//! `pingora-prometheus` 0.9 uses, in a registry of its own that the admin listener
//! serves. Label lookups are done once at start: the hot path indexes arrays.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::resolve::ResolutionKind;

/// Status classes; "none" is a request that ended before any response was written.
const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The data plane's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Vec<[IntCounter; 6]>,
    /// Seconds from choosing an upstream to its response header.
    pub upstream_latency: Histogram,
    /// Lease-cache hits.
    pub lease_hits: IntCounter,
    /// Lease-cache misses (a lease was asked of the lease source).
    pub lease_misses: IntCounter,
    /// Generation of the snapshot in use.
    pub snapshot_generation: IntGauge,
    /// Seconds a request was held while its version woke, for requests that were
    /// then served.
    pub wake_wait: Histogram,
    wake_requests: [IntCounter; WakeOutcome::ALL.len()],
    /// Open client connections.
    pub connections_open: IntGauge,
    /// Client connections closed at once because `proxy.max_connections` were open.
    pub connections_refused: IntCounter,
    refusals: IntCounterVec,
    /// Requests waiting for a slot on a saturated instance.
    pub queue_length: IntGauge,
    /// Seconds a request waited for a slot on a saturated instance (only requests
    /// that had to wait).
    pub queue_wait: Histogram,
    /// Requests that waited `proxy.queue_timeout` for a slot and got 503.
    pub queue_rejections: IntCounter,
    /// Requests the fast path served itself (the rest went through pingora-proxy).
    pub fast_path_requests: IntCounter,
    /// Access-log lines dropped because the writer fell behind (its channel was
    /// full); a request never waits for the log.
    pub access_log_dropped: IntCounter,
    /// TLS handshakes by result (`ok`, `no_cert`).
    pub tls_handshakes: IntCounterVec,
    /// Loaded certificates by status (`ok`, `expiring`, `expired`).
    pub tls_certificates: IntGaugeVec,
    /// Seconds until each loaded certificate expires (negative once expired).
    pub tls_cert_expiry: GaugeVec,
}

/// How a request for a sleeping version ended, for `ingress_wake_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeOutcome {
    /// Held until the version was ready, then proxied.
    Served,
    /// Held for `wake.timeout`; answered 503.
    Timeout,
    /// `wake.max_waiters` were already held; answered 503 at once.
    Overflow,
    /// The start failed (or is backing off); answered 502.
    Failed,
    /// The client hung up while held.
    ClientGone,
    /// A browser got the "starting" page while the version wakes.
    Page,
    /// Matched `wake.ignore_*`: answered 503 without waking the version.
    Ignored,
}

impl WakeOutcome {
    /// Every outcome, in label order.
    pub const ALL: [WakeOutcome; 7] = [
        WakeOutcome::Served,
        WakeOutcome::Timeout,
        WakeOutcome::Overflow,
        WakeOutcome::Failed,
        WakeOutcome::ClientGone,
        WakeOutcome::Page,
        WakeOutcome::Ignored,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            WakeOutcome::Served => "served",
            WakeOutcome::Timeout => "timeout",
            WakeOutcome::Overflow => "overflow",
            WakeOutcome::Failed => "failed",
            WakeOutcome::ClientGone => "client_gone",
            WakeOutcome::Page => "page",
            WakeOutcome::Ignored => "ignored",
        }
    }
}

impl Metrics {
    /// Creates the metrics in a new registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "ingress_requests_total",
                "Requests by how their host resolved and the class of their status.",
            ),
            &["kind", "status"],
        )?;
        registry.register(Box::new(requests_vec.clone()))?;
        let requests = ResolutionKind::ALL
            .iter()
            .map(|kind| {
                STATUS_CLASSES.map(|class| requests_vec.with_label_values(&[kind.as_str(), class]))
            })
            .collect();
        let upstream_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ingress_upstream_latency_seconds",
                "Seconds from choosing an upstream to receiving its response header.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(upstream_latency.clone()))?;
        let lease_hits = IntCounter::new("ingress_lease_cache_hits_total", "Lease-cache hits.")?;
        registry.register(Box::new(lease_hits.clone()))?;
        let lease_misses = IntCounter::new(
            "ingress_lease_cache_misses_total",
            "Lease-cache misses (a lease was asked of the runtime).",
        )?;
        registry.register(Box::new(lease_misses.clone()))?;
        let snapshot_generation = IntGauge::new(
            "ingress_snapshot_generation",
            "Generation of the routing snapshot in use.",
        )?;
        registry.register(Box::new(snapshot_generation.clone()))?;
        let wake_wait = Histogram::with_opts(
            HistogramOpts::new(
                "ingress_wake_seconds",
                "Seconds a request was held while its version woke, for requests then served.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(wake_wait.clone()))?;
        let wake_vec = IntCounterVec::new(
            Opts::new(
                "ingress_wake_requests_total",
                "Requests that found their version asleep, by how they ended.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(wake_vec.clone()))?;
        let wake_requests =
            WakeOutcome::ALL.map(|outcome| wake_vec.with_label_values(&[outcome.as_str()]));
        let connections_open =
            IntGauge::new("ingress_connections_open", "Open client connections.")?;
        registry.register(Box::new(connections_open.clone()))?;
        let connections_refused = IntCounter::new(
            "ingress_connections_refused_total",
            "Client connections closed at once because proxy.max_connections were open.",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "ingress_requests_refused_total",
                "Requests refused before routing (malformed, ambiguous or over a limit), by status.",
            ),
            &["status"],
        )?;
        registry.register(Box::new(refusals.clone()))?;
        let queue_length = IntGauge::new(
            "ingress_instance_queue_length",
            "Requests waiting for a slot on an instance at runtime.max_conns_per_instance.",
        )?;
        registry.register(Box::new(queue_length.clone()))?;
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "ingress_instance_queue_wait_seconds",
                "Seconds a request waited for a slot on a saturated instance.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(queue_wait.clone()))?;
        let queue_rejections = IntCounter::new(
            "ingress_instance_queue_rejections_total",
            "Requests that waited proxy.queue_timeout for an instance slot and got 503.",
        )?;
        registry.register(Box::new(queue_rejections.clone()))?;
        let fast_path_requests = IntCounter::new(
            "ingress_fast_path_requests_total",
            "Requests served by the fast path rather than pingora-proxy.",
        )?;
        registry.register(Box::new(fast_path_requests.clone()))?;
        let access_log_dropped = IntCounter::new(
            "ingress_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind (log.access_buffer full).",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "ingress_tls_handshakes_total",
                "TLS handshakes by result: ok, or no_cert (no certificate for the SNI; refused).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        let tls_certificates = IntGaugeVec::new(
            Opts::new(
                "ingress_tls_certificates",
                "Loaded certificates by status (ok, expiring within tls.expiry_warning, expired).",
            ),
            &["status"],
        )?;
        registry.register(Box::new(tls_certificates.clone()))?;
        let tls_cert_expiry = GaugeVec::new(
            Opts::new(
                "ingress_tls_cert_expiry_seconds",
                "Seconds until each loaded certificate expires (negative once expired).",
            ),
            &["name"],
        )?;
        registry.register(Box::new(tls_cert_expiry.clone()))?;
        Ok(Metrics {
            registry,
            tls_handshakes,
            tls_certificates,
            tls_cert_expiry,
            fast_path_requests,
            access_log_dropped,
            connections_open,
            connections_refused,
            refusals,
            queue_length,
            queue_wait,
            queue_rejections,
            requests,
            upstream_latency,
            lease_hits,
            lease_misses,
            snapshot_generation,
            wake_wait,
            wake_requests,
        })
    }

    /// Counts one request that found its version asleep.
    pub fn count_wake(&self, outcome: WakeOutcome) {
        self.wake_requests[outcome as usize].inc();
    }

    /// Counts one finished request.
    pub fn count_request(&self, kind: ResolutionKind, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.requests[kind.index()][class].inc();
    }

    /// Counts one request refused before routing, by its status. Rare, so the
    /// label lookup per call costs nothing that matters.
    pub fn count_refusal(&self, status: u16) {
        self.refusals
            .with_label_values(&[status.to_string().as_str()])
            .inc();
    }

    /// The registry, to register more metrics or to serve it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text format.
    pub fn encode_text(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_status_class() {
        let metrics = Metrics::new().unwrap();
        metrics.count_request(ResolutionKind::Label, 200);
        metrics.count_request(ResolutionKind::Label, 204);
        metrics.count_request(ResolutionKind::Gone, 410);
        metrics.count_request(ResolutionKind::NotFound, 0);
        let text = metrics.encode_text();
        assert!(
            text.contains("ingress_requests_total{kind=\"label\",status=\"2xx\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ingress_requests_total{kind=\"gone\",status=\"4xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ingress_requests_total{kind=\"not_found\",status=\"none\"} 1"),
            "{text}"
        );
    }
}
