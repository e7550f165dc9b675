//! End-to-end tests on a real kube-apiserver: the local control plane
//! (`scripts/control-plane`) or, with `KUBECONFIG` set, an existing cluster.
mod harness;

mod admission;
mod auth;
mod backoff;
mod chaos;
mod chart_docs;
mod cli;
mod controller;
mod crds;
mod fault_support;
mod faults;
mod foundation;
mod fuzz;
mod helm;
mod membership;
mod observability;
mod partitions;
mod private_plane;
mod proxy;
mod replicas;
mod scim_conformance;
mod scim_entra;
mod scim_okta;
mod scim_protocol;
mod scim_scale;
mod security;
mod watch_expiry;
