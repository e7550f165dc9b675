//! Operator-wide settings of the plan (flags and chart values).
use super::*;

/// Operator-wide settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Subject naming used where a mapping's `spec.subjects` leaves a field unset.
    pub subjects: ResolvedSubjects,
    /// ClusterRoles that need `allowProtectedRoles: true` (cluster-admin always does).
    pub protected_roles: BTreeSet<String>,
    /// Namespaces never bound (kube-system, kube-public, kube-node-lease and the
    /// operator's own, unless the operator is told otherwise): a selector skips them, a
    /// mapping naming one is refused.
    pub protected_namespaces: BTreeSet<String>,
    /// ClusterRoles that may be bound cluster-wide (`clusterRoles`), as names or
    /// `prefix*` patterns. Cluster-wide `edit` can run pods as any ServiceAccount in
    /// kube-system, so by default only `view` may.
    pub cluster_wide_roles: Vec<String>,
    /// Mass-removal guard: a plan that would remove *more than* this share of the
    /// subjects a mapping currently manages is held until confirmed. Current = union of
    /// the subjects in the mapping's existing bindings (outside terminating namespaces);
    /// removed = current − the mapping's resolved subjects. So identity-side changes
    /// (members leaving, deactivations, groups vanishing, groups dropped from the spec)
    /// are guarded, while scope changes made in the spec or on namespaces (roles,
    /// namespaces) are not: they don't change who is bound, only where. A value ≥ 1.0
    /// disables the guard; validate it is a number in (0, 1] when reading config.
    pub mass_removal_threshold: f64,
    /// The guard applies only to mappings currently managing at least this many subjects.
    pub mass_removal_min_subjects: usize,
    /// Most subjects in one binding object; more are split into parts.
    pub max_subjects_per_binding: usize,
    /// Most bytes of serialized subjects in one binding object (etcd objects are limited
    /// to 1.5 MiB; this keeps each part well under 1 MiB).
    pub max_binding_bytes: usize,
    /// About how many bytes one subject change may rewrite across the copies of a
    /// logical binding (a cluster mapping's RoleBinding in every namespace): parts are
    /// sized to `this / copies`, within [`crate::controller::split::MIN_PART_BYTES`] and `max_binding_bytes`.
    pub max_change_bytes: usize,
    /// Fan-out budget: the most subject entries one mapping may write, counted as its
    /// subjects × its logical bindings (a RoleBinding per namespace, a ClusterRoleBinding
    /// counts once; split parts don't multiply it). A mapping that would exceed it keeps
    /// the subjects and bindings it already has, minus removals, and gains nothing until
    /// it fits again. 0 = unlimited.
    ///
    /// Why a budget and not only splitting: splitting bounds each object and each
    /// change, but not the total. One selector matching every namespace with an
    /// all-staff group as User subjects is subjects × namespaces entries in etcd (64–84
    /// bytes each for 25–45-character names, measured as protobuf), and an etcd that
    /// reaches its quota (2 GiB by default) stops every write in the cluster. Removals never wait on it: refusing a removal would keep
    /// access, and a removal only shrinks the fan-out.
    pub max_fanout: u64,
}

/// Default of [`Settings::max_fanout`]: issue 8's target mapping (a 50,000-member group
/// bound as User subjects in 100 namespaces) fits exactly: 0.3–0.4 GB of subjects in etcd.
pub const DEFAULT_MAX_FANOUT: u64 = 5_000_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            subjects: ResolvedSubjects::default(),
            protected_roles: BTreeSet::new(),
            protected_namespaces: DEFAULT_PROTECTED_NAMESPACES
                .iter()
                .map(|n| (*n).to_owned())
                .collect(),
            cluster_wide_roles: vec!["view".to_owned()],
            mass_removal_threshold: 0.5,
            mass_removal_min_subjects: 10,
            max_subjects_per_binding: 10_000,
            max_binding_bytes: 800_000,
            // 8 kB parts at 50 copies (and the 8 KiB floor beyond). A revocation is one
            // JSON patch per copy, and each costs the API server in proportion to the
            // part: 50 patches of 34 kB parts were answered in 0.8 s on the 2-core
            // reference machine, of 8.7 kB in 0.35 s, of 1 kB in 0.28 s (docs/scale.md).
            max_change_bytes: 400_000,
            max_fanout: DEFAULT_MAX_FANOUT,
        }
    }
}

/// Never bound unless the operator is told so (its own namespace is added at start).
pub const DEFAULT_PROTECTED_NAMESPACES: [&str; 3] =
    ["kube-system", "kube-public", "kube-node-lease"];

impl Settings {
    pub(super) fn may_bind_cluster_wide(&self, role: &str) -> bool {
        self.cluster_wide_roles
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => role.starts_with(prefix),
                None => p == role,
            })
    }

    pub(super) fn is_protected(&self, role: &RoleRef) -> bool {
        role.kind == RoleKind::ClusterRole
            && (role.name == ALWAYS_PROTECTED_ROLE || self.protected_roles.contains(&role.name))
    }
}
