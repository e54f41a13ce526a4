//! A proxy-only node following its control node: applies the routing stream to
//! its own snapshot handle and endpoint table (the hot path stays one atomic
//! load, no RPC per request), keeps serving its last good state when the control
//! node is unreachable, and reports what it served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ingress_proxy::{AppSpec, RouteSpec, SnapshotDelta, SnapshotHandle, SnapshotInput};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;

use super::client::ControlClients;
use super::remote_leases::RemoteLeases;
use super::wire::{app_spec, route_spec};
use crate::grpc::proto;

/// Longest pause between two attempts to reach a control node.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The replica's metrics.
pub struct ReplicaMetrics {
    generation: IntGauge,
    connected: IntGauge,
    applied: IntCounter,
    refused: IntCounter,
}

impl ReplicaMetrics {
    /// Registers `ingress_routing_generation`, `ingress_control_connected` and
    /// `ingress_routing_updates_total{result}` in `registry`.
    pub fn register(registry: &Registry) -> Result<ReplicaMetrics, prometheus::Error> {
        let generation = IntGauge::new(
            "ingress_routing_generation",
            "Generation of the routing stream this node has applied.",
        )?;
        registry.register(Box::new(generation.clone()))?;
        let connected = IntGauge::new(
            "ingress_control_connected",
            "1 while this replica follows a control node's routing stream.",
        )?;
        registry.register(Box::new(connected.clone()))?;
        let updates = IntCounterVec::new(
            Opts::new(
                "ingress_routing_updates_total",
                "Routing-stream updates by result: applied, or refused (invalid; the previous state kept).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(updates.clone()))?;
        Ok(ReplicaMetrics {
            generation,
            connected,
            applied: updates.with_label_values(&["applied"]),
            refused: updates.with_label_values(&["refused"]),
        })
    }
}

/// How far this replica has applied the routing stream.
pub struct ReplicaStatus {
    epoch: Mutex<String>,
    generation: watch::Sender<u64>,
    connected: AtomicBool,
}

impl ReplicaStatus {
    fn new() -> ReplicaStatus {
        ReplicaStatus {
            epoch: Mutex::new(String::new()),
            generation: watch::channel(0).0,
            connected: AtomicBool::new(false),
        }
    }

    /// The epoch and generation applied (an empty epoch: nothing yet).
    pub fn applied(&self) -> (String, u64) {
        let epoch = self
            .epoch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        (epoch, *self.generation.borrow())
    }

    fn set(&self, epoch: &str, generation: u64) {
        epoch.clone_into(
            &mut self
                .epoch
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        self.generation.send_replace(generation);
    }

    /// Wakes up when a new generation is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether a whole state has been applied (the replica can route).
    pub fn has_state(&self) -> bool {
        !self.applied().0.is_empty()
    }

    /// Whether the routing stream is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// What a replica needs to follow its control node.
pub struct Replica {
    pub node_id: String,
    /// This replica's proxy listener, for the control node's listings.
    pub address: String,
    pub clients: Arc<ControlClients>,
    pub snapshots: Arc<SnapshotHandle>,
    pub leases: Arc<RemoteLeases>,
    pub status: Arc<ReplicaStatus>,
    pub metrics: ReplicaMetrics,
    pub report_interval: Duration,
}

/// Why an update was refused.
struct Refused(String);

impl Replica {
    /// A replica with nothing applied yet.
    pub fn new_status() -> Arc<ReplicaStatus> {
        Arc::new(ReplicaStatus::new())
    }

    /// Follows the routing stream until `stop`: the control nodes in order,
    /// with a back-off between attempts; each (re)connection resumes from the
    /// generation applied.
    pub async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        let mut node = 0;
        let mut warned = false;
        loop {
            if *stop.borrow() {
                return;
            }
            let (epoch, since) = self.status.applied();
            let request = proto::RoutingRequest {
                node_id: self.node_id.clone(),
                epoch,
                since_generation: since,
            };
            let opened = tokio::select! {
                opened = self.clients.routing(node, request) => opened,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            match opened {
                Ok(stream) => {
                    log::info!(
                        "following the routing stream of {} from generation {since}",
                        self.clients.address(node)
                    );
                    warned = false;
                    backoff = Duration::from_millis(100);
                    self.set_connected(true);
                    let ended = self.apply_stream(stream, &mut stop).await;
                    self.set_connected(false);
                    match ended {
                        Ok(()) => log::warn!(
                            "the routing stream of {} ended; serving the last state (generation {})",
                            self.clients.address(node),
                            self.status.applied().1
                        ),
                        Err(Refused(why)) => log::error!(
                            "refused an update from {}: {why}; serving the previous state and asking for the whole state",
                            self.clients.address(node)
                        ),
                    }
                    if *stop.borrow() {
                        return;
                    }
                }
                Err(e) => {
                    if !warned {
                        log::warn!("{e}; serving the last state and trying again");
                        warned = true;
                    }
                    node = (node + 1) % self.clients.len().max(1);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_connected(&self, connected: bool) {
        self.status.connected.store(connected, Ordering::Relaxed);
        self.metrics.connected.set(i64::from(connected));
    }

    /// Applies updates until the stream ends (`Ok`) or one is refused.
    async fn apply_stream(
        &self,
        mut stream: tonic::Streaming<proto::RoutingUpdate>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Refused> {
        let mut chunks: Vec<proto::RoutingUpdate> = Vec::new();
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            };
            let update = match message {
                Ok(Some(update)) => update,
                Ok(None) | Err(_) => return Ok(()),
            };
            let applied = if update.full {
                let last = !update.more;
                chunks.push(update);
                if !last {
                    continue;
                }
                self.apply_full(std::mem::take(&mut chunks))
            } else {
                self.apply_delta(update)
            };
            if let Err(refused) = applied {
                self.metrics.refused.inc();
                // Asked again from nothing: the whole state comes next.
                self.status.set("", 0);
                return Err(refused);
            }
            self.metrics.applied.inc();
        }
    }

    fn apply_full(&self, chunks: Vec<proto::RoutingUpdate>) -> Result<(), Refused> {
        let Some(first) = chunks.first() else {
            return Ok(());
        };
        let (epoch, generation) = (first.epoch.clone(), first.generation);
        let mut input = SnapshotInput {
            apps: Vec::new(),
            routes: Vec::new(),
        };
        let mut endpoints = Vec::new();
        for chunk in chunks {
            if chunk.epoch != epoch || chunk.generation != generation {
                return Err(Refused(
                    "the chunks of a whole state disagree on its generation".into(),
                ));
            }
            input
                .apps
                .extend(chunk.upsert_apps.into_iter().map(app_spec));
            for route in chunk.add_routes {
                input.routes.push(route_spec(route).map_err(Refused)?);
            }
            endpoints.extend(chunk.upsert_endpoints);
        }
        self.snapshots.publish(&input).map_err(|e| {
            Refused(format!(
                "the whole state at generation {generation} is not routable: {e}"
            ))
        })?;
        self.leases.replace_all(&endpoints);
        self.applied(&epoch, generation);
        Ok(())
    }

    fn apply_delta(&self, update: proto::RoutingUpdate) -> Result<(), Refused> {
        let (epoch, applied) = self.status.applied();
        if update.epoch != epoch || update.generation != applied + 1 {
            return Err(Refused(format!(
                "update {}:{} does not follow {epoch}:{applied}",
                update.epoch, update.generation
            )));
        }
        let routing = !update.upsert_apps.is_empty()
            || !update.remove_apps.is_empty()
            || !update.remove_routes.is_empty()
            || !update.add_routes.is_empty();
        if routing {
            let upsert_apps: Vec<AppSpec> = update.upsert_apps.into_iter().map(app_spec).collect();
            let mut remove_routes = Vec::new();
            for route in update.remove_routes {
                remove_routes.push(route_spec(route).map_err(Refused)?.host);
            }
            let mut add_routes: Vec<RouteSpec> = Vec::new();
            for route in update.add_routes {
                add_routes.push(route_spec(route).map_err(Refused)?);
            }
            let delta = SnapshotDelta {
                upsert_apps,
                remove_apps: update.remove_apps,
                remove_routes,
                add_routes,
            };
            let prepared = self.snapshots.prepare_delta(&delta).map_err(|e| {
                Refused(format!(
                    "update {} would make the routing snapshot invalid: {e}",
                    update.generation
                ))
            })?;
            self.snapshots.install(prepared);
        }
        self.leases
            .apply(&update.upsert_endpoints, &update.remove_endpoints);
        self.applied(&update.epoch, update.generation);
        Ok(())
    }

    fn applied(&self, epoch: &str, generation: u64) {
        self.status.set(epoch, generation);
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Reports every `report_interval` the versions this replica served since
    /// the last report (and those with requests in flight or held), with the
    /// generation it has applied, until `stop`.
    pub async fn report(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut since_ms = 0u64;
        let mut ticker = tokio::time::interval(self.report_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let now = ingress_proxy::time::now_unix_millis();
            let mut versions = Vec::new();
            self.snapshots.activity().for_each(|version, activity| {
                let last_seen = activity.last_seen_ms();
                let in_flight = activity.local_in_flight();
                let held = activity.waiting();
                if last_seen > since_ms || in_flight > 0 || held > 0 {
                    versions.push(proto::VersionActivityReport {
                        version: version.to_string(),
                        last_seen_ms: last_seen,
                        in_flight,
                        held,
                    });
                }
            });
            let (epoch, applied_generation) = self.status.applied();
            let report = proto::ActivityReport {
                node_id: self.node_id.clone(),
                address: self.address.clone(),
                epoch,
                applied_generation,
                versions,
            };
            match self.clients.report(report).await {
                Ok(()) => {
                    // Requests seen at `now` itself are reported again next time.
                    since_ms = now.saturating_sub(1);
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        log::warn!("cannot report activity: {e}");
                        failing = true;
                    }
                }
            }
        }
    }
}
