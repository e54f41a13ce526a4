//! The replicas a control node knows of, from their activity reports: who they
//! are, how far they have applied the routing stream, and what they serve. A
//! replica that misses [`MISSED_REPORTS`] reports in a row is forgotten, and so is
//! what it had in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use ingress_proxy::ActivityRegistry;

use crate::grpc::proto;

/// Reports a replica may miss before it no longer counts as live.
pub const MISSED_REPORTS: u32 = 3;

/// One replica as its latest report describes it.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub address: String,
    pub epoch: String,
    pub applied_generation: u64,
    /// Unix ms of its latest report.
    pub reported_at_ms: u64,
    /// Requests in flight (and held) on it, by version.
    in_flight: HashMap<String, u64>,
}

/// Every live replica.
pub struct Nodes {
    nodes: Mutex<BTreeMap<String, Node>>,
    /// A replica is forgotten after this long without a report.
    expiry: Duration,
}

impl Nodes {
    /// No replica yet; each is expected to report every `report_interval`.
    pub fn new(report_interval: Duration) -> Nodes {
        Nodes {
            nodes: Mutex::new(BTreeMap::new()),
            expiry: report_interval * MISSED_REPORTS,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Node>> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `report` at `now_ms`: the replica's last-seen times raise the
    /// control node's (`activity`), and its in-flight counts replace its earlier
    /// ones in every version's remote total.
    pub fn report(&self, report: proto::ActivityReport, now_ms: u64, activity: &ActivityRegistry) {
        let mut nodes = self.lock();
        let mut in_flight = HashMap::new();
        for version in &report.versions {
            if version.last_seen_ms > 0 {
                activity
                    .for_version(&version.version)
                    .seen_at(version.last_seen_ms.min(now_ms));
            }
            let busy = version.in_flight.saturating_add(version.held);
            if busy > 0 {
                in_flight.insert(version.version.clone(), busy);
            }
        }
        let node = Node {
            id: report.node_id.clone(),
            address: report.address,
            epoch: report.epoch,
            applied_generation: report.applied_generation,
            reported_at_ms: now_ms,
            in_flight,
        };
        let before = nodes.insert(report.node_id, node);
        Self::recount(&nodes, before.as_ref(), activity);
    }

    /// Forgets replicas silent for longer than the expiry; returns their ids.
    pub fn expire(&self, now_ms: u64, activity: &ActivityRegistry) -> Vec<String> {
        let mut nodes = self.lock();
        let limit = u64::try_from(self.expiry.as_millis()).unwrap_or(u64::MAX);
        let gone: Vec<Node> = nodes
            .values()
            .filter(|n| now_ms.saturating_sub(n.reported_at_ms) > limit)
            .cloned()
            .collect();
        for node in &gone {
            nodes.remove(&node.id);
            Self::recount(&nodes, Some(node), activity);
        }
        gone.into_iter().map(|n| n.id).collect()
    }

    /// Sets the remote in-flight total of every version a replica reported now
    /// or (`before`) earlier.
    fn recount(nodes: &BTreeMap<String, Node>, before: Option<&Node>, activity: &ActivityRegistry) {
        let mut versions: Vec<&String> = nodes.values().flat_map(|n| n.in_flight.keys()).collect();
        if let Some(before) = before {
            versions.extend(before.in_flight.keys());
        }
        versions.sort();
        versions.dedup();
        for version in versions {
            let total = nodes
                .values()
                .filter_map(|n| n.in_flight.get(version))
                .sum();
            activity.for_version(version).set_remote_in_flight(total);
        }
    }

    /// Whether every live replica has applied `generation` of `epoch` and
    /// reported, in that same report, nothing in flight for `versions`.
    pub fn settled(&self, epoch: &str, generation: u64, versions: &[String]) -> bool {
        self.lock().values().all(|node| {
            node.epoch == epoch
                && node.applied_generation >= generation
                && versions.iter().all(|v| !node.in_flight.contains_key(v))
        })
    }

    /// Every replica not yet forgotten, by id.
    pub fn list(&self) -> Vec<Node> {
        self.lock().values().cloned().collect()
    }

    /// Every live replica at `now_ms`, by id: those that reported within the
    /// expiry, whether or not the periodic [`Nodes::expire`] has run since.
    pub fn live(&self, now_ms: u64) -> Vec<Node> {
        let limit = u64::try_from(self.expiry.as_millis()).unwrap_or(u64::MAX);
        self.lock()
            .values()
            .filter(|n| now_ms.saturating_sub(n.reported_at_ms) <= limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, version: &str, last_seen: u64, in_flight: u64) -> proto::ActivityReport {
        proto::ActivityReport {
            node_id: node.into(),
            address: "127.0.0.1:1".into(),
            epoch: "e".into(),
            applied_generation: 7,
            versions: vec![proto::VersionActivityReport {
                version: version.into(),
                last_seen_ms: last_seen,
                in_flight,
                held: 0,
            }],
        }
    }

    #[test]
    fn in_flight_sums_over_live_replicas_and_ends_with_them() {
        let activity = ActivityRegistry::default();
        let nodes = Nodes::new(Duration::from_secs(1));
        nodes.report(report("a", "v1", 1_000, 2), 1_000, &activity);
        nodes.report(report("b", "v1", 1_500, 3), 1_500, &activity);
        let v1 = activity.for_version("v1");
        assert_eq!((v1.in_flight(), v1.last_seen_ms()), (5, 1_500));
        // A later report replaces the replica's earlier count.
        nodes.report(report("a", "v1", 2_000, 0), 2_000, &activity);
        assert_eq!((v1.in_flight(), v1.last_seen_ms()), (3, 2_000));
        // b falls silent for more than three intervals: forgotten with its count.
        assert_eq!(nodes.expire(5_000, &activity), ["b"]);
        assert_eq!(v1.in_flight(), 0);
        assert_eq!(nodes.list().len(), 1);
        // A listing leaves out a replica past the expiry before it is expired.
        assert_eq!(nodes.live(5_000).len(), 1);
        assert!(nodes.live(5_001).is_empty());
    }
}
