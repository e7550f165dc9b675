//! kube-scim: a SCIM 2.0 endpoint that stores users and groups as custom resources,
//! and a controller that projects them into RoleBindings and ClusterRoleBindings.
pub mod admission;
pub mod auth;
pub mod cli;
pub mod config;
pub mod controller;
pub mod crd;
pub mod explain;
#[cfg(test)]
mod membership_views;
pub mod probes;
pub mod scim;
pub mod store;
pub mod telemetry;
pub mod watch;
