//! The controller: projects ScimGroups into RoleBindings and ClusterRoleBindings.
//! `plan` decides (pure), the rest does the kube I/O around it.
pub mod naming;
pub mod plan;
