//! The pure core of the admission webhook: which access checks a mapping needs, and the
//! decision from their results. No kube or HTTP types here.
//!
//! The rule is the API server's own escalation check for RoleBindings and
//! ClusterRoleBindings, applied to the mapping's author: a mapping may bind a role in a
//! scope only when its author could create that binding themselves, i.e. holds `bind` on
//! the role there, or already holds every permission of the role there.
//!
//! Scopes: a GroupRoleMapping reaches its own namespace. A ClusterGroupRoleMapping reaches
//! the whole cluster for `clusterRoles`, each listed namespace for
//! `namespaceRoles[].namespaces`, and the whole cluster for a `namespaceSelector` (any
//! namespace can be labelled to match later). `allowProtectedRoles: true` additionally
//! needs the author's own `bind` on each protected role the mapping binds, cluster-wide.
use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use crate::controller::plan::ALWAYS_PROTECTED_ROLE;
use crate::crd::{ClusterGroupRoleMappingSpec, GroupRoleMappingSpec, RoleKind};

/// Where a binding would take effect.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every namespace and cluster-scoped resources (a ClusterRoleBinding).
    Cluster,
    /// One namespace (a RoleBinding).
    Namespace(String),
}

impl Scope {
    /// The namespace of a SubjectAccessReview: empty for cluster-wide.
    pub fn sar_namespace(&self) -> &str {
        match self {
            Scope::Cluster => "",
            Scope::Namespace(ns) => ns,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster => f.write_str("cluster-wide"),
            Scope::Namespace(ns) => write!(f, "in namespace {ns}"),
        }
    }
}

/// What a check demands of the author.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    /// Could create the binding: `bind` on the role, or every permission of the role.
    Grant,
    /// Their own `bind` on the role (for `allowProtectedRoles`).
    Bind,
}

/// One access check for the mapping's author.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Check {
    pub need: Need,
    pub kind: RoleKind,
    pub role: String,
    /// The namespace of a Role (always the mapping's); None for a ClusterRole.
    pub role_namespace: Option<String>,
    pub scope: Scope,
}

impl Check {
    /// The resource of the `bind` verb: `roles` or `clusterroles`.
    pub fn rbac_resource(&self) -> &'static str {
        match self.kind {
            RoleKind::Role => "roles",
            RoleKind::ClusterRole => "clusterroles",
        }
    }

    fn role_text(&self) -> String {
        match self.kind {
            RoleKind::Role => format!("Role {}", self.role),
            RoleKind::ClusterRole => format!("ClusterRole {}", self.role),
        }
    }
}

/// A mapping as submitted, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Mapping {
    Namespaced {
        namespace: String,
        spec: GroupRoleMappingSpec,
    },
    Cluster(ClusterGroupRoleMappingSpec),
}

/// Why a request could not be reviewed (answered as a denial).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReviewError {
    #[error("kube-scim's webhook does not review kind {0}")]
    UnknownKind(String),
    #[error("the {kind} has no namespace")]
    NoNamespace { kind: &'static str },
    #[error("the request carries no object")]
    NoObject,
    #[error("spec of the {kind} is invalid: {message}")]
    InvalidSpec { kind: &'static str, message: String },
}

pub const GROUP_ROLE_MAPPING: &str = "GroupRoleMapping";
pub const CLUSTER_GROUP_ROLE_MAPPING: &str = "ClusterGroupRoleMapping";

/// Parse the submitted object (`kind` from the request, `namespace` of the request).
pub fn parse(kind: &str, namespace: Option<&str>, object: &Value) -> Result<Mapping, ReviewError> {
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    match kind {
        GROUP_ROLE_MAPPING => {
            let namespace =
                namespace
                    .filter(|ns| !ns.is_empty())
                    .ok_or(ReviewError::NoNamespace {
                        kind: GROUP_ROLE_MAPPING,
                    })?;
            let spec = serde_json::from_value(spec).map_err(|e| ReviewError::InvalidSpec {
                kind: GROUP_ROLE_MAPPING,
                message: e.to_string(),
            })?;
            Ok(Mapping::Namespaced {
                namespace: namespace.to_string(),
                spec,
            })
        }
        CLUSTER_GROUP_ROLE_MAPPING => {
            let spec = serde_json::from_value(spec).map_err(|e| ReviewError::InvalidSpec {
                kind: CLUSTER_GROUP_ROLE_MAPPING,
                message: e.to_string(),
            })?;
            Ok(Mapping::Cluster(spec))
        }
        other => Err(ReviewError::UnknownKind(other.to_string())),
    }
}

/// An update that leaves `spec` as it was grants nothing new: the controller's own
/// finalizer and status writes, label edits, and deletion (finalizer removal) pass
/// without checks.
pub fn spec_unchanged(old: Option<&Value>, new: &Value) -> bool {
    match old {
        Some(old) => old.get("spec") == new.get("spec"),
        None => false,
    }
}

/// Whether the operator treats this ClusterRole as protected.
pub fn is_protected(role: &str, protected_roles: &[String]) -> bool {
    role == ALWAYS_PROTECTED_ROLE || protected_roles.iter().any(|p| p == role)
}

/// The checks a mapping needs, deduplicated and in a stable order.
pub fn checks(mapping: &Mapping, protected_roles: &[String]) -> Vec<Check> {
    let mut out = BTreeSet::new();
    let allow_protected;
    match mapping {
        Mapping::Namespaced { namespace, spec } => {
            allow_protected = spec.allow_protected_roles;
            let role_namespace = match spec.role_ref.kind {
                RoleKind::Role => Some(namespace.clone()),
                RoleKind::ClusterRole => None,
            };
            out.insert(Check {
                need: Need::Grant,
                kind: spec.role_ref.kind,
                role: spec.role_ref.name.clone(),
                role_namespace,
                scope: Scope::Namespace(namespace.clone()),
            });
        }
        Mapping::Cluster(spec) => {
            allow_protected = spec.allow_protected_roles;
            let grant = |role: &str, scope: Scope| Check {
                need: Need::Grant,
                kind: RoleKind::ClusterRole,
                role: role.to_string(),
                role_namespace: None,
                scope,
            };
            for role in &spec.cluster_roles {
                out.insert(grant(role, Scope::Cluster));
            }
            for nr in &spec.namespace_roles {
                for ns in &nr.namespaces {
                    out.insert(grant(&nr.cluster_role, Scope::Namespace(ns.clone())));
                }
                if nr.namespace_selector.is_some() {
                    out.insert(grant(&nr.cluster_role, Scope::Cluster));
                }
            }
        }
    }
    if allow_protected {
        let protected: Vec<Check> = out
            .iter()
            .filter(|c| c.kind == RoleKind::ClusterRole && is_protected(&c.role, protected_roles))
            .map(|c| Check {
                need: Need::Bind,
                scope: Scope::Cluster,
                ..c.clone()
            })
            .collect();
        out.extend(protected);
    }
    // A cluster-wide Grant on a role makes its namespace Grants redundant (SAR at cluster
    // scope is stricter), but they stay: each answer names its own scope, and the
    // namespaced ones are usually answered by one `bind` SAR.
    out.into_iter().collect()
}

/// What the API server said about one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The author holds `bind` on the role in the scope.
    Bind,
    /// The author holds every permission of the role in the scope.
    HoldsPermissions,
    /// Neither: no `bind`, and these permissions of the role are missing (a sample).
    Missing(Vec<String>),
    /// No `bind`, and the role does not exist (so its permissions can't be compared).
    RoleNotFound,
}

/// Allowed, or the message a refused author sees: the first failed check, named by role
/// and scope, and how many others failed.
pub fn decide(user: &str, results: &[(Check, Finding)]) -> Result<(), String> {
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(check, finding)| failure(user, check, finding))
        .collect();
    match failures.split_first() {
        None => Ok(()),
        Some((first, rest)) => {
            let mut msg = first.clone();
            if !rest.is_empty() {
                msg.push_str(&format!(" (and {} more refused grant(s))", rest.len()));
            }
            msg.push_str(". kube-scim binds only what the mapping's author could bind themselves");
            Err(msg)
        }
    }
}

fn failure(user: &str, check: &Check, finding: &Finding) -> Option<String> {
    let role = check.role_text();
    let scope = &check.scope;
    match (check.need, finding) {
        (Need::Bind, Finding::Bind) => None,
        (Need::Bind, _) => Some(format!(
            "{user} may not set allowProtectedRoles for {role}: that needs {user}'s own `bind` on {role} cluster-wide"
        )),
        (Need::Grant, Finding::Bind | Finding::HoldsPermissions) => None,
        (Need::Grant, Finding::RoleNotFound) => Some(format!(
            "{user} may not bind {role} {scope}: no `bind` on it there, and the role does not exist"
        )),
        (Need::Grant, Finding::Missing(missing)) => {
            let sample = if missing.is_empty() {
                String::new()
            } else {
                format!(" (missing: {})", missing.join(", "))
            };
            Some(format!(
                "{user} may not bind {role} {scope}: no `bind` on it there, and {user} does not hold all of its permissions{sample}"
            ))
        }
    }
}

/// One permission of a role, as the SubjectAccessReviews that test whether the author
/// holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permission::Resource {
                verb,
                group,
                resource,
                subresource,
                name,
            } => {
                write!(f, "{verb} {resource}")?;
                if !subresource.is_empty() {
                    write!(f, "/{subresource}")?;
                }
                if !group.is_empty() {
                    write!(f, ".{group}")?;
                }
                if !name.is_empty() {
                    write!(f, " {name}")?;
                }
                Ok(())
            }
            Permission::NonResource { verb, path } => write!(f, "{verb} {path}"),
        }
    }
}

/// A PolicyRule as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// Every permission a rule grants, one per verb × group × resource × name (wildcards
/// kept: a SubjectAccessReview for `*` is allowed only to someone holding `*`, which is
/// the API server's own "covers" rule).
pub fn permissions(rules: &[Rule]) -> Vec<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for verb in &rule.verbs {
            for path in &rule.non_resource_urls {
                out.insert(Permission::NonResource {
                    verb: verb.clone(),
                    path: path.clone(),
                });
            }
            for group in &rule.api_groups {
                for res in &rule.resources {
                    let (resource, subresource) = match res.split_once('/') {
                        Some((r, s)) => (r.to_string(), s.to_string()),
                        None => (res.clone(), String::new()),
                    };
                    let names: Vec<String> = if rule.resource_names.is_empty() {
                        vec![String::new()]
                    } else {
                        rule.resource_names.clone()
                    };
                    for name in names {
                        out.insert(Permission::Resource {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: resource.clone(),
                            subresource: subresource.clone(),
                            name,
                        });
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grm(ns: &str, spec: Value) -> Mapping {
        parse(GROUP_ROLE_MAPPING, Some(ns), &json!({ "spec": spec })).expect("parse")
    }

    fn cgrm(spec: Value) -> Mapping {
        parse(CLUSTER_GROUP_ROLE_MAPPING, None, &json!({ "spec": spec })).expect("parse")
    }

    fn grant(kind: RoleKind, role: &str, role_ns: Option<&str>, scope: Scope) -> Check {
        Check {
            need: Need::Grant,
            kind,
            role: role.into(),
            role_namespace: role_ns.map(str::to_string),
            scope,
        }
    }

    fn ns(n: &str) -> Scope {
        Scope::Namespace(n.into())
    }

    #[test]
    fn a_group_role_mapping_needs_its_role_in_its_namespace() {
        let m = grm(
            "team",
            json!({"groups": [{"displayName": "g"}], "roleRef": {"kind": "ClusterRole", "name": "admin"}}),
        );
        assert_eq!(
            checks(&m, &[]),
            vec![grant(RoleKind::ClusterRole, "admin", None, ns("team"))]
        );
        let m = grm(
            "team",
            json!({"groups": [], "roleRef": {"kind": "Role", "name": "deployer"}}),
        );
        assert_eq!(
            checks(&m, &[]),
            vec![grant(RoleKind::Role, "deployer", Some("team"), ns("team"))]
        );
    }

    #[test]
    fn a_cluster_mapping_needs_each_scope_and_a_selector_needs_the_cluster() {
        let m = cgrm(json!({
            "groups": [{"externalId": "x"}],
            "clusterRoles": ["view"],
            "namespaceRoles": [
                {"clusterRole": "edit", "namespaces": ["a", "b"]},
                {"clusterRole": "admin", "namespaceSelector": {"matchLabels": {"team": "x"}}},
                {"clusterRole": "edit", "namespaces": ["a"]},
            ],
        }));
        assert_eq!(
            checks(&m, &[]),
            vec![
                grant(RoleKind::ClusterRole, "admin", None, Scope::Cluster),
                grant(RoleKind::ClusterRole, "edit", None, ns("a")),
                grant(RoleKind::ClusterRole, "edit", None, ns("b")),
                grant(RoleKind::ClusterRole, "view", None, Scope::Cluster),
            ]
        );
    }

    #[test]
    fn allow_protected_roles_needs_cluster_wide_bind_on_each_protected_role() {
        let m = grm(
            "team",
            json!({"groups": [], "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"},
                   "allowProtectedRoles": true}),
        );
        let c = checks(&m, &[]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c.contains(&Check {
            need: Need::Bind,
            kind: RoleKind::ClusterRole,
            role: "cluster-admin".into(),
            role_namespace: None,
            scope: Scope::Cluster,
        }));
        // A role protected by configuration counts too; an unprotected one adds nothing.
        let m = cgrm(
            json!({"groups": [], "clusterRoles": ["ops", "view"], "allowProtectedRoles": true}),
        );
        let binds: Vec<_> = checks(&m, &["ops".to_string()])
            .into_iter()
            .filter(|c| c.need == Need::Bind)
            .map(|c| c.role)
            .collect();
        assert_eq!(binds, vec!["ops"]);
        // Without the flag, protected roles need no bind check (the controller refuses them).
        let m = cgrm(json!({"groups": [], "clusterRoles": ["cluster-admin"]}));
        assert!(checks(&m, &[]).iter().all(|c| c.need == Need::Grant));
    }

    #[test]
    fn parse_refuses_what_it_cannot_review() {
        assert_eq!(
            parse(GROUP_ROLE_MAPPING, None, &json!({"spec": {}})),
            Err(ReviewError::NoNamespace {
                kind: GROUP_ROLE_MAPPING
            })
        );
        assert!(matches!(
            parse(
                GROUP_ROLE_MAPPING,
                Some("a"),
                &json!({"spec": {"groups": 3}})
            ),
            Err(ReviewError::InvalidSpec { .. })
        ));
        assert!(matches!(
            parse("Pod", Some("a"), &json!({})),
            Err(ReviewError::UnknownKind(_))
        ));
    }

    #[test]
    fn an_update_without_a_spec_change_needs_nothing() {
        let old = json!({"metadata": {"finalizers": []}, "spec": {"a": 1}});
        let new = json!({"metadata": {"finalizers": ["x"]}, "spec": {"a": 1}});
        assert!(spec_unchanged(Some(&old), &new));
        assert!(!spec_unchanged(Some(&old), &json!({"spec": {"a": 2}})));
        assert!(!spec_unchanged(None, &new));
    }

    #[test]
    fn the_decision_names_role_and_scope() {
        let c = grant(RoleKind::ClusterRole, "admin", None, ns("team"));
        assert_eq!(decide("alice", &[(c.clone(), Finding::Bind)]), Ok(()));
        assert_eq!(
            decide("alice", &[(c.clone(), Finding::HoldsPermissions)]),
            Ok(())
        );
        let err = decide(
            "alice",
            &[(c.clone(), Finding::Missing(vec!["create pods".into()]))],
        )
        .unwrap_err();
        assert!(
            err.starts_with("alice may not bind ClusterRole admin in namespace team"),
            "{err}"
        );
        assert!(err.contains("missing: create pods"), "{err}");
        let err = decide(
            "bob",
            &[
                (
                    grant(RoleKind::ClusterRole, "edit", None, Scope::Cluster),
                    Finding::RoleNotFound,
                ),
                (c.clone(), Finding::Missing(vec![])),
            ],
        )
        .unwrap_err();
        assert!(err.contains("ClusterRole edit cluster-wide"), "{err}");
        assert!(err.contains("and 1 more"), "{err}");
        // Bind checks accept only bind.
        let protected = Check {
            need: Need::Bind,
            scope: Scope::Cluster,
            ..c
        };
        let err = decide("alice", &[(protected, Finding::HoldsPermissions)]).unwrap_err();
        assert!(err.contains("allowProtectedRoles"), "{err}");
    }

    #[test]
    fn permissions_expand_rules_with_subresources_names_and_urls() {
        let rules = vec![
            Rule {
                verbs: vec!["get".into(), "list".into()],
                api_groups: vec!["".into(), "apps".into()],
                resources: vec!["pods/log".into()],
                ..Default::default()
            },
            Rule {
                verbs: vec!["use".into()],
                api_groups: vec!["policy".into()],
                resources: vec!["podsecuritypolicies".into()],
                resource_names: vec!["restricted".into()],
                ..Default::default()
            },
            Rule {
                verbs: vec!["get".into()],
                non_resource_urls: vec!["/healthz".into()],
                ..Default::default()
            },
        ];
        let p = permissions(&rules);
        assert_eq!(p.len(), 6, "{p:?}");
        let text: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"get pods/log".to_string()), "{text:?}");
        assert!(text.contains(&"list pods/log.apps".to_string()), "{text:?}");
        assert!(
            text.contains(&"use podsecuritypolicies.policy restricted".to_string()),
            "{text:?}"
        );
        assert!(text.contains(&"get /healthz".to_string()), "{text:?}");
    }
}
