//! HTTP/1 connections: the project's own connection loop in front of
//! `pingora-proxy` ([`conn`]), the checks every request head passes before it is
//! proxied ([`head`]), and the limit on open connections ([`limits`]).

pub mod answer;
pub mod conn;
pub mod drain;
pub mod h2;
pub mod head;
pub mod limits;
pub mod rebind;

pub use conn::{ConnOptions, Http1App};
pub use head::HeadLimits;
pub use limits::{derived_max_connections, raise_descriptor_limit, ConnectionLimiter};
