//! Draining across nodes: a pool's instance stops only once every live replica
//! has applied the update that took the pool's endpoints out of service (so no
//! replica starts another request on it) and has reported, after applying it,
//! nothing in flight for the pool's versions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::feed::Feed;
use super::nodes::Nodes;
use crate::pools::DrainGate;

/// The control node's [`DrainGate`].
pub struct ReplicaDrain {
    feed: Arc<Feed>,
    nodes: Arc<Nodes>,
    /// Per drain (its versions), the generation at which replicas were first
    /// seen to be told the endpoints are no longer ready.
    told_at: Mutex<HashMap<Vec<String>, u64>>,
}

impl ReplicaDrain {
    /// The gate over `feed`'s endpoints and `nodes`' reports.
    pub fn new(feed: Arc<Feed>, nodes: Arc<Nodes>) -> ReplicaDrain {
        ReplicaDrain {
            feed,
            nodes,
            told_at: Mutex::new(HashMap::new()),
        }
    }
}

impl DrainGate for ReplicaDrain {
    fn begin(&self, versions: &[String]) {
        let mut key = versions.to_vec();
        key.sort();
        self.told_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&key);
    }

    fn settled(&self, versions: &[String]) -> bool {
        // Not yet told: the endpoint update is on its way (the pools' change
        // reaches the feed within milliseconds).
        if versions
            .iter()
            .any(|v| self.feed.endpoint_state(v).as_deref() == Some("ready"))
        {
            return false;
        }
        let mut key = versions.to_vec();
        key.sort();
        let generation = {
            let mut told_at = self
                .told_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *told_at
                .entry(key.clone())
                .or_insert_with(|| self.feed.generation())
        };
        let settled = self.nodes.settled(self.feed.epoch(), generation, versions);
        if settled {
            self.told_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&key);
        }
        settled
    }
}
