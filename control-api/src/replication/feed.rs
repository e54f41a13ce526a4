//! The control node's side of the routing stream: every routing change and every
//! endpoint change becomes one update with the next generation, kept in a
//! bounded log so a replica that reconnects gets only what it missed.
//!
//! Generations count from 1 within an epoch (one run of the control node). A
//! replica that asks from a generation the log no longer holds, from another
//! epoch, or from nothing, gets the whole state instead, in chunks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use ingress_proxy::{SnapshotDelta, SnapshotInput};
use tokio::sync::watch;

use super::wire::{app_message, endpoint_message, route_message};
use crate::grpc::proto;
use crate::pools::EndpointView;

/// Updates kept for replicas that reconnect.
const LOG_LEN: usize = 4096;
/// Apps (or endpoints) per chunk of a full update, which keeps a chunk far
/// below tonic's 4 MiB message limit (an app with ten labels is about 350 bytes).
pub const CHUNK: usize = 1000;

/// The routing stream's state.
pub struct Feed {
    epoch: String,
    state: Mutex<FeedState>,
    /// The newest generation, for streams waiting for the next update.
    latest: watch::Sender<u64>,
}

struct FeedState {
    generation: u64,
    log: VecDeque<Arc<proto::RoutingUpdate>>,
    /// Endpoints as last sent, by version.
    endpoints: BTreeMap<String, proto::Endpoint>,
    /// The versions of each pool in `endpoints`.
    by_pool: HashMap<String, BTreeSet<String>>,
}

/// What a replica asking from some point gets first.
pub enum Since {
    /// The updates after that point, in order (none when it is current).
    Updates(Vec<Arc<proto::RoutingUpdate>>),
    /// The whole state is needed.
    Full,
}

impl Feed {
    /// An empty feed with a fresh epoch.
    pub fn new() -> Feed {
        let mut bytes = [0u8; 8];
        // A clock-based epoch is as good if the system's randomness fails.
        if getrandom::fill(&mut bytes).is_err() {
            bytes = ingress_proxy::time::now_unix_millis().to_le_bytes();
        }
        Feed {
            epoch: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            state: Mutex::new(FeedState {
                generation: 0,
                log: VecDeque::new(),
                endpoints: BTreeMap::new(),
                by_pool: HashMap::new(),
            }),
            latest: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This run's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The newest generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Wakes up at each new generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    fn push(&self, state: &mut FeedState, mut update: proto::RoutingUpdate) {
        state.generation += 1;
        update.epoch = self.epoch.clone();
        update.generation = state.generation;
        if state.log.len() == LOG_LEN {
            state.log.pop_front();
        }
        state.log.push_back(Arc::new(update));
        self.latest.send_replace(state.generation);
    }

    /// Records a routing change the control plane just published. Called with
    /// the plane's lock held, so updates follow commits in order.
    pub fn routing(&self, delta: &SnapshotDelta) {
        let update = proto::RoutingUpdate {
            upsert_apps: delta.upsert_apps.iter().cloned().map(app_message).collect(),
            remove_apps: delta.remove_apps.clone(),
            remove_routes: delta
                .remove_routes
                .iter()
                .map(|host| route_message(host.clone(), String::new()))
                .collect(),
            add_routes: delta
                .add_routes
                .iter()
                .map(|r| route_message(r.host.clone(), r.app.clone()))
                .collect(),
            ..Default::default()
        };
        let mut state = self.lock();
        self.push(&mut state, update);
    }

    /// Records the pools' endpoints as they are now: one update with what
    /// changed since the last call, or nothing when nothing did.
    pub fn endpoints(&self, now: &BTreeMap<String, EndpointView>) {
        let mut state = self.lock();
        let mut update = proto::RoutingUpdate::default();
        for (version, view) in now {
            let message = endpoint_message(view);
            if state.endpoints.get(version) != Some(&message) {
                update.upsert_endpoints.push(message);
            }
        }
        for version in state.endpoints.keys() {
            if !now.contains_key(version) {
                update.remove_endpoints.push(version.clone());
            }
        }
        if update.upsert_endpoints.is_empty() && update.remove_endpoints.is_empty() {
            return;
        }
        Self::record(&mut state, &update);
        self.push(&mut state, update);
    }

    /// Records the endpoints of the pools that changed (each with its versions'
    /// endpoints now; none for a pool that is gone): one update with what
    /// differs from what replicas were told, or nothing. Costs what the changed
    /// pools hold, not what all do.
    pub fn pools_changed(&self, changes: Vec<(String, Vec<EndpointView>)>) {
        let mut state = self.lock();
        let mut update = proto::RoutingUpdate::default();
        for (pool, views) in changes {
            let now: BTreeSet<&str> = views.iter().map(|v| v.version.as_str()).collect();
            if let Some(before) = state.by_pool.get(&pool) {
                for version in before {
                    let moved = state.endpoints.get(version).is_some_and(|e| e.pool != pool);
                    if !now.contains(version.as_str()) && !moved {
                        update.remove_endpoints.push(version.clone());
                    }
                }
            }
            for view in &views {
                let message = endpoint_message(view);
                if state.endpoints.get(&view.version) != Some(&message) {
                    update.upsert_endpoints.push(message);
                }
            }
        }
        // A version that moved to another pool that changed too is upserted,
        // not removed.
        let upserted: BTreeSet<String> = update
            .upsert_endpoints
            .iter()
            .map(|e| e.version.clone())
            .collect();
        update.remove_endpoints.retain(|v| !upserted.contains(v));
        if update.upsert_endpoints.is_empty() && update.remove_endpoints.is_empty() {
            return;
        }
        Self::record(&mut state, &update);
        self.push(&mut state, update);
    }

    /// Remembers what `update` tells replicas of endpoints.
    fn record(state: &mut FeedState, update: &proto::RoutingUpdate) {
        for version in &update.remove_endpoints {
            if let Some(old) = state.endpoints.remove(version) {
                if let Some(versions) = state.by_pool.get_mut(&old.pool) {
                    versions.remove(version);
                }
            }
        }
        for message in &update.upsert_endpoints {
            if let Some(old) = state
                .endpoints
                .insert(message.version.clone(), message.clone())
            {
                if old.pool != message.pool {
                    if let Some(versions) = state.by_pool.get_mut(&old.pool) {
                        versions.remove(&message.version);
                    }
                }
            }
            state
                .by_pool
                .entry(message.pool.clone())
                .or_default()
                .insert(message.version.clone());
        }
        state.by_pool.retain(|_, versions| !versions.is_empty());
    }

    /// The state of `version`'s endpoint as replicas were last told
    /// (`ready`, `stopping`, ...), if they were told of it.
    pub fn endpoint_state(&self, version: &str) -> Option<String> {
        self.lock().endpoints.get(version).map(|e| e.state.clone())
    }

    /// What a replica that applied `generation` of `epoch` gets first.
    pub fn since(&self, epoch: &str, generation: u64) -> Since {
        let state = self.lock();
        if epoch != self.epoch || generation > state.generation {
            return Since::Full;
        }
        if generation == state.generation {
            return Since::Updates(Vec::new());
        }
        match state.log.front() {
            // The log holds every generation after `generation`.
            Some(first) if first.generation <= generation + 1 => Since::Updates(
                state
                    .log
                    .iter()
                    .filter(|u| u.generation > generation)
                    .cloned()
                    .collect(),
            ),
            _ => Since::Full,
        }
    }

    /// The whole state as chunks of one full update: `routing` (the plane's
    /// current snapshot input, taken under the plane's lock by the caller, so no
    /// routing change can slip between it and the generation read here) and the
    /// endpoints. Every chunk carries the generation it brings the replica to.
    pub fn full(&self, routing: SnapshotInput) -> Vec<proto::RoutingUpdate> {
        let state = self.lock();
        let chunk = || proto::RoutingUpdate {
            epoch: self.epoch.clone(),
            generation: state.generation,
            full: true,
            more: true,
            ..Default::default()
        };
        let mut chunks = vec![chunk()];
        for app in routing.apps {
            if chunks.last().is_some_and(|c| c.upsert_apps.len() >= CHUNK) {
                chunks.push(chunk());
            }
            if let Some(last) = chunks.last_mut() {
                last.upsert_apps.push(app_message(app));
            }
        }
        for route in routing.routes {
            if chunks.last().is_some_and(|c| c.add_routes.len() >= CHUNK) {
                chunks.push(chunk());
            }
            if let Some(last) = chunks.last_mut() {
                last.add_routes.push(route_message(route.host, route.app));
            }
        }
        for endpoint in state.endpoints.values() {
            if chunks
                .last()
                .is_some_and(|c| c.upsert_endpoints.len() >= CHUNK)
            {
                chunks.push(chunk());
            }
            if let Some(last) = chunks.last_mut() {
                last.upsert_endpoints.push(endpoint.clone());
            }
        }
        if let Some(last) = chunks.last_mut() {
            last.more = false;
        }
        chunks
    }
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingress_proxy::{AppSpec, RouteHost, RouteSpec};

    fn delta(app: &str) -> SnapshotDelta {
        SnapshotDelta {
            upsert_apps: vec![AppSpec {
                name: app.into(),
                active: None,
                previews: Vec::new(),
                expired_labels: Vec::new(),
            }],
            remove_apps: Vec::new(),
            remove_routes: Vec::new(),
            add_routes: Vec::new(),
        }
    }

    fn view(version: &str, state: &'static str) -> EndpointView {
        EndpointView {
            version: version.into(),
            pool: version.into(),
            addrs: Vec::new(),
            incarnation: 1,
            state,
            ready_at_ms: 0,
            failure: String::new(),
            retry_after_ms: 0,
        }
    }

    #[test]
    fn a_replica_gets_what_it_missed_or_the_whole_state() {
        let feed = Feed::new();
        assert!(matches!(feed.since("", 0), Since::Full));
        feed.routing(&delta("a"));
        feed.routing(&delta("b"));
        let epoch = feed.epoch().to_string();
        let Since::Updates(missed) = feed.since(&epoch, 1) else {
            panic!("the log holds generation 2");
        };
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].generation, 2);
        assert_eq!(missed[0].upsert_apps[0].name, "b");
        assert!(matches!(feed.since(&epoch, 2), Since::Updates(u) if u.is_empty()));
        // Another run's epoch, or a generation from the future: start over.
        assert!(matches!(feed.since("other", 1), Since::Full));
        assert!(matches!(feed.since(&epoch, 9), Since::Full));
    }

    #[test]
    fn endpoints_go_out_only_when_they_change() {
        let feed = Feed::new();
        let mut now = BTreeMap::new();
        now.insert("v1".to_string(), view("v1", "stopped"));
        feed.endpoints(&now);
        feed.endpoints(&now);
        assert_eq!(feed.generation(), 1);
        now.insert("v1".to_string(), view("v1", "ready"));
        feed.endpoints(&now);
        now.remove("v1");
        feed.endpoints(&now);
        let Since::Updates(all) = feed.since(feed.epoch(), 0) else {
            panic!("all in the log");
        };
        assert_eq!(all[1].upsert_endpoints[0].state, "ready");
        assert_eq!(all[2].remove_endpoints, ["v1"]);
    }

    #[test]
    fn changed_pools_send_only_their_endpoints() {
        let feed = Feed::new();
        let mut all = BTreeMap::new();
        all.insert("v1".to_string(), view("v1", "stopped"));
        all.insert("v2".to_string(), view("v2", "stopped"));
        feed.endpoints(&all);
        assert_eq!(feed.generation(), 1);
        // v1's pool started: only v1 goes out.
        feed.pools_changed(vec![("v1".into(), vec![view("v1", "ready")])]);
        // Nothing new for v2's pool: no update.
        feed.pools_changed(vec![("v2".into(), vec![view("v2", "stopped")])]);
        // v2's pool is gone: v2 is removed.
        feed.pools_changed(vec![("v2".into(), Vec::new())]);
        let Since::Updates(all) = feed.since(feed.epoch(), 1) else {
            panic!("in the log");
        };
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].upsert_endpoints.len(), 1);
        assert_eq!(all[0].upsert_endpoints[0].version, "v1");
        assert_eq!(all[1].remove_endpoints, ["v2"]);
        assert_eq!(feed.endpoint_state("v2"), None);
    }

    #[test]
    fn a_whole_state_comes_in_chunks_under_the_message_limit() {
        let feed = Feed::new();
        let apps = (0..2500)
            .map(|i| AppSpec {
                name: format!("app{i}"),
                active: None,
                previews: Vec::new(),
                expired_labels: Vec::new(),
            })
            .collect();
        let routes = vec![RouteSpec {
            host: RouteHost::Exact("app0.example.com".into()),
            app: "app0".into(),
        }];
        let chunks = feed.full(SnapshotInput { apps, routes });
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.full));
        assert_eq!(
            chunks.iter().map(|c| c.more).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(
            chunks.iter().map(|c| c.upsert_apps.len()).sum::<usize>(),
            2500
        );
    }
}
