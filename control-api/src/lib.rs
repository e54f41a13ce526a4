//! The control plane of the ingress. So far it holds the `static` runtime, which
//! hands the proxy the fixed upstream addresses of each version; the store, the
//! admin API and the control loops come next (see ARCHITECTURE.md).

pub mod static_runtime;

pub use static_runtime::StaticRuntime;
