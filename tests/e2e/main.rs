//! End-to-end tests on a real kube-apiserver: the local control plane
//! (`scripts/control-plane`) or, with `KUBECONFIG` set, an existing cluster.
mod harness;

mod auth;
mod controller;
mod foundation;
