//! Prometheus metrics of the control plane (issue 4): starts by result, automatic
//! stops by loop, GC deletions, and versions by observed state. They register into
//! the proxy's registry so that one `/metrics` serves both.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::pools::Observed;

/// The control plane's metrics.
pub struct ControlMetrics {
    starts: IntCounterVec,
    /// Versions stopped by the idle loop.
    pub idle_stops: IntCounter,
    /// Versions stopped because a newer preview of their branch became ready.
    pub supersede_stops: IntCounter,
    /// Expired versions deleted by the GC.
    pub gc_deletions: IntCounter,
    versions: IntGaugeVec,
}

impl ControlMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<ControlMetrics, prometheus::Error> {
        let starts = IntCounterVec::new(
            Opts::new(
                "ingress_wakes_total",
                "Starts of a pool (a wake), by result: ready or failed.",
            ),
            &["result"],
        )?;
        let idle_stops = IntCounter::new(
            "ingress_idle_stops_total",
            "Versions stopped by the idle loop.",
        )?;
        let supersede_stops = IntCounter::new(
            "ingress_supersede_stops_total",
            "Versions stopped because a newer preview of their branch became ready.",
        )?;
        let gc_deletions = IntCounter::new(
            "ingress_gc_deletions_total",
            "Expired versions deleted by the GC sweep.",
        )?;
        let versions = IntGaugeVec::new(
            Opts::new("ingress_versions", "Versions by observed state."),
            &["observed"],
        )?;
        registry.register(Box::new(starts.clone()))?;
        registry.register(Box::new(idle_stops.clone()))?;
        registry.register(Box::new(supersede_stops.clone()))?;
        registry.register(Box::new(gc_deletions.clone()))?;
        registry.register(Box::new(versions.clone()))?;
        Ok(ControlMetrics {
            starts,
            idle_stops,
            supersede_stops,
            gc_deletions,
            versions,
        })
    }

    /// Metrics in a registry of their own, for tests and tools that serve none.
    pub fn unregistered() -> ControlMetrics {
        // Registering into a fresh registry cannot collide.
        ControlMetrics::register(&Registry::new()).unwrap_or_else(|_| unreachable!())
    }

    /// Counts one finished start.
    pub fn count_start(&self, ready: bool) {
        self.starts
            .with_label_values(&[if ready { "ready" } else { "failed" }])
            .inc();
    }

    /// Sets the gauge of versions by observed state from `counts`.
    pub fn set_versions(&self, counts: &[(Observed, i64)]) {
        for state in Observed::ALL {
            let count = counts
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| *n)
                .sum();
            self.versions
                .with_label_values(&[state.as_str()])
                .set(count);
        }
    }
}
