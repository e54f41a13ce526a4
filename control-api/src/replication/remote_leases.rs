//! A replica's lease source: leases answered from the endpoints the routing
//! stream pushed (no RPC on the hot path), and wakes forwarded to the control
//! node, coalesced per version so however many requests wait on this replica,
//! it asks once. The control node's single flight makes it one start across
//! every node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use ingress_proxy::{Grant, LeaseAnswer, LeaseError, LeaseSource, LeaseValidity, Target};
use tokio::sync::watch;

use super::client::ControlClients;
use crate::grpc::proto;

/// One version's endpoint as last pushed.
struct Remote {
    state: String,
    addrs: Vec<SocketAddr>,
    ready_at_ms: u64,
    failure: String,
    /// When a failed start may be tried again.
    retry_at: Option<Instant>,
    /// Revoked when the endpoint changes or goes: cached leases end with it.
    validity: Arc<LeaseValidity>,
}

type WakeResult = Option<Result<Grant, LeaseError>>;

/// The lease source of a proxy-only node.
pub struct RemoteLeases {
    /// Itself, for wakes that outlive the request that began them.
    me: Weak<RemoteLeases>,
    endpoints: DashMap<String, Remote>,
    clients: Arc<ControlClients>,
    node_id: String,
    /// The longest a forwarded wake waits (`wake.timeout`).
    wake_timeout: Duration,
    /// Wakes in progress, by version: later callers wait for the first.
    wakes: Mutex<HashMap<String, watch::Receiver<WakeResult>>>,
}

impl RemoteLeases {
    /// No endpoint yet; wakes go to `clients`.
    pub fn new(
        clients: Arc<ControlClients>,
        node_id: &str,
        wake_timeout: Duration,
    ) -> Arc<RemoteLeases> {
        Arc::new_cyclic(|me| RemoteLeases {
            me: me.clone(),
            endpoints: DashMap::default(),
            clients,
            node_id: node_id.to_string(),
            wake_timeout,
            wakes: Mutex::new(HashMap::new()),
        })
    }

    /// Applies pushed endpoint changes; a changed or removed endpoint revokes
    /// every lease granted from it.
    pub fn apply(&self, upserts: &[proto::Endpoint], removals: &[String]) {
        for endpoint in upserts {
            let remote = remote(endpoint);
            if let Some(old) = self.endpoints.insert(endpoint.version.clone(), remote) {
                old.validity.revoke();
            }
        }
        for version in removals {
            if let Some((_, old)) = self.endpoints.remove(version) {
                old.validity.revoke();
            }
        }
    }

    /// Replaces every endpoint (a full update).
    pub fn replace_all(&self, endpoints: &[proto::Endpoint]) {
        let keep: std::collections::HashSet<&str> =
            endpoints.iter().map(|e| e.version.as_str()).collect();
        let stale: Vec<String> = self
            .endpoints
            .iter()
            .filter(|e| !keep.contains(e.key().as_str()))
            .map(|e| e.key().clone())
            .collect();
        self.apply(endpoints, &stale);
    }

    /// How many endpoints are known.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    async fn forward_wake(&self, app: &str, version: &str) -> Result<Grant, LeaseError> {
        let request = proto::ReplicaWakeRequest {
            node_id: self.node_id.clone(),
            version: version.to_string(),
            wait_ms: u64::try_from(self.wake_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let endpoint = self
            .clients
            .wake(request, self.wake_timeout + Duration::from_secs(1))
            .await
            .map_err(|reason| LeaseError::NotRunning {
                reason: format!("version {version} of app {app} could not be woken: {reason}"),
            })?;
        let remote = remote(&endpoint);
        let answer = answer(app, version, &remote);
        // Keep it until the stream brings the same (or newer) news.
        if let Some(old) = self.endpoints.insert(endpoint.version.clone(), remote) {
            old.validity.revoke();
        }
        match answer {
            Ok(LeaseAnswer::Ready(grant)) => Ok(grant),
            Ok(LeaseAnswer::Asleep) => Err(LeaseError::NotRunning {
                reason: format!("version {version} of app {app} is not ready on the control node"),
            }),
            Err(e) => Err(e),
        }
    }
}

fn remote(endpoint: &proto::Endpoint) -> Remote {
    Remote {
        state: endpoint.state.clone(),
        addrs: endpoint
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect(),
        ready_at_ms: endpoint.ready_at_ms,
        failure: endpoint.failure.clone(),
        retry_at: (endpoint.retry_after_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(endpoint.retry_after_ms)),
        validity: LeaseValidity::new(),
    }
}

fn answer(app: &str, version: &str, remote: &Remote) -> Result<LeaseAnswer, LeaseError> {
    match remote.state.as_str() {
        "ready" if !remote.addrs.is_empty() => Ok(LeaseAnswer::Ready(Grant {
            addrs: remote.addrs.clone(),
            validity: Arc::clone(&remote.validity),
            ready_at_ms: remote.ready_at_ms,
        })),
        "failed" => match remote
            .retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
        {
            Some(wait) if !wait.is_zero() => Err(LeaseError::StartFailed {
                reason: format!(
                    "version {version} of app {app} failed to start: {}; the next start is tried in {}s",
                    remote.failure,
                    wait.as_secs_f64().ceil()
                ),
                retry_after: wait,
            }),
            _ => Ok(LeaseAnswer::Asleep),
        },
        _ => Ok(LeaseAnswer::Asleep),
    }
}

#[async_trait]
impl LeaseSource for RemoteLeases {
    fn lease(&self, target: &Target) -> Result<LeaseAnswer, LeaseError> {
        match self.endpoints.get(&*target.version_id) {
            Some(remote) => answer(&target.app, &target.version_id, &remote),
            None => Ok(LeaseAnswer::Asleep),
        }
    }

    async fn wake(&self, target: &Target) -> Result<Grant, LeaseError> {
        let version = target.version_id.to_string();
        let mut waiting = {
            let mut wakes = self
                .wakes
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match wakes.get(&version) {
                Some(existing) => existing.clone(),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    wakes.insert(version.clone(), receiver.clone());
                    // Asked once, on a task of its own: it goes on when the
                    // request that began it is gone, and every waiter gets it.
                    let me = self.me.clone();
                    let app = target.app.to_string();
                    let version = version.clone();
                    tokio::spawn(async move {
                        let Some(leases) = me.upgrade() else {
                            return;
                        };
                        let result = leases.forward_wake(&app, &version).await;
                        leases
                            .wakes
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .remove(&version);
                        sender.send_replace(Some(result));
                    });
                    receiver
                }
            }
        };
        loop {
            if let Some(result) = waiting.borrow_and_update().clone() {
                return result;
            }
            if waiting.changed().await.is_err() {
                return Err(LeaseError::NotRunning {
                    reason: format!(
                        "version {} of app {} could not be woken: the replica is stopping",
                        target.version_id, target.app
                    ),
                });
            }
        }
    }
}
