//! The `static` runtime (SPEC §9): a version's instances are fixed upstream
//! addresses, always ready. Starting one answers at once; stopping is a no-op.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;

use super::{ExitFuture, Instance, Runtime};
use crate::model::RuntimeSpec;

/// Runs `static` specs.
#[derive(Debug, Default)]
pub struct StaticRuntime;

struct FixedAddresses(Vec<SocketAddr>);

#[async_trait]
impl Instance for FixedAddresses {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.0.clone()
    }

    fn exited(&self) -> ExitFuture {
        Box::pin(std::future::pending())
    }

    async fn stop(self: Box<Self>, _grace: Duration) -> String {
        "stopped (static: nothing to stop)".to_string()
    }
}

#[async_trait]
impl Runtime for StaticRuntime {
    async fn start(&self, pool: &str, spec: &RuntimeSpec) -> Result<Box<dyn Instance>, String> {
        match spec {
            RuntimeSpec::Static { upstreams } if !upstreams.is_empty() => {
                Ok(Box::new(FixedAddresses(upstreams.clone())))
            }
            RuntimeSpec::Static { .. } => Err(format!("pool {pool} has no upstream address")),
            other => Err(format!(
                "the static runtime cannot run a {} spec",
                other.kind()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_at_once_on_its_addresses_and_refuses_other_specs() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 4000));
        let instance = StaticRuntime
            .start(
                "v1",
                &RuntimeSpec::Static {
                    upstreams: vec![addr],
                },
            )
            .await
            .unwrap();
        assert_eq!(instance.addrs(), vec![addr]);
        instance.stop(Duration::ZERO).await;
        let empty = StaticRuntime
            .start("v1", &RuntimeSpec::Static { upstreams: vec![] })
            .await;
        assert!(empty.is_err());
        let process = RuntimeSpec::Process {
            command: "true".into(),
            ready: crate::model::ReadyCheck::Tcp,
        };
        assert!(StaticRuntime.start("v1", &process).await.is_err());
    }
}
