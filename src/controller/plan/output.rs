//! What the plan decides: bindings, prunes, statuses, events and layouts.
use super::*;

/// A binding that should exist exactly like this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBinding {
    pub kind: BindingKind,
    /// Set for RoleBindings.
    pub namespace: Option<String>,
    pub name: String,
    pub role_ref: RoleRef,
    /// Sorted, unique. Shared: a cluster mapping's RoleBindings in every namespace carry
    /// the same list, so the plan doesn't copy it per namespace.
    pub subjects: Arc<[Subject]>,
    pub mapping: MappingKey,
    /// The mapping's labels and annotations, shared by all its bindings: with small parts a
    /// mapping has thousands, and a copy each was a fifth of the controller's peak heap.
    pub labels: Arc<BTreeMap<String, String>>,
    pub annotations: Arc<BTreeMap<String, String>>,
}

#[cfg(test)]
impl DesiredBinding {
    /// A RoleBinding `ns/name` of ClusterRole `view` for cluster mapping `m`, holding
    /// the User subjects `subjects` (unit tests of the writers).
    pub(crate) fn for_test(name: &str, subjects: &[&str]) -> DesiredBinding {
        DesiredBinding {
            kind: BindingKind::RoleBinding,
            namespace: Some("ns".into()),
            name: name.into(),
            role_ref: RoleRef {
                kind: RoleKind::ClusterRole,
                name: "view".into(),
            },
            subjects: subjects.iter().map(|s| Subject::user(*s)).collect(),
            mapping: MappingKey::Cluster { name: "m".into() },
            labels: Arc::default(),
            annotations: Arc::default(),
        }
    }

    /// The binding as the controller's cache reads it back once applied (owner from its
    /// labels, as the I/O layer does): tests plan again on top of a plan's result.
    pub(crate) fn as_existing(&self) -> ExistingBinding {
        ExistingBinding {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            role_ref: self.role_ref.clone(),
            mapping: naming::mapping_key_from_labels(&self.labels, &self.annotations),
            subjects: Arc::clone(&self.subjects),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BindingId {
    pub kind: BindingKind,
    pub namespace: Option<String>,
    pub name: String,
}

/// Condition reasons, in increasing severity (the derive'd order is the severity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Everything planned as specified.
    Reconciled,
    /// A namespace named in `namespaceRoles[].namespaces` does not exist.
    NamespaceNotFound,
    /// A bound Role/ClusterRole does not exist (the binding is still made).
    RoleNotFound,
    /// Some referenced groups are unknown (the others are still bound).
    GroupNotFound,
    /// Some users or groups would become subjects with unsafe names (`system:…`, empty,
    /// too long): they are not bound, the others are.
    SubjectRefused,
    /// The mass-removal guard holds removals until confirmed.
    RemovalHeld,
    /// Subjects × bindings would exceed the fan-out budget: no additions until it fits
    /// (removals still go through). Above `RemovalHeld`: it withholds access from people
    /// who should have it; below the refusals that bind nothing at all for a target.
    FanOutExceeded,
    /// The API server refused a binding (set by the apply layer, e.g. RBAC escalation).
    BindingRefused,
    /// A protected ClusterRole without `allowProtectedRoles: true`: not bound.
    ProtectedRoleRefused,
    /// A protected namespace, or a ClusterRole not allowed cluster-wide: not bound.
    ScopeRefused,
    /// A namespaceSelector is invalid: the mapping is frozen.
    InvalidSelector,
    /// The spec is invalid: the mapping is frozen.
    InvalidSpec,
    /// `spec.expiresAt` has passed: the mapping grants nothing until it is moved.
    Expired,
}

impl Reason {
    /// Every reason, least severe first (the `kube_scim_mappings{reason}` series).
    pub const ALL: [Reason; 13] = [
        Reason::Reconciled,
        Reason::NamespaceNotFound,
        Reason::RoleNotFound,
        Reason::GroupNotFound,
        Reason::SubjectRefused,
        Reason::RemovalHeld,
        Reason::FanOutExceeded,
        Reason::BindingRefused,
        Reason::ProtectedRoleRefused,
        Reason::ScopeRefused,
        Reason::InvalidSelector,
        Reason::InvalidSpec,
        Reason::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Reconciled => "Reconciled",
            Reason::NamespaceNotFound => "NamespaceNotFound",
            Reason::RoleNotFound => "RoleNotFound",
            Reason::GroupNotFound => "GroupNotFound",
            Reason::SubjectRefused => "SubjectRefused",
            Reason::RemovalHeld => "RemovalHeld",
            Reason::FanOutExceeded => "FanOutExceeded",
            Reason::BindingRefused => "BindingRefused",
            Reason::ProtectedRoleRefused => "ProtectedRoleRefused",
            Reason::ScopeRefused => "ScopeRefused",
            Reason::InvalidSelector => "InvalidSelector",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Expired => "Expired",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// An Event describing the mapping's current state. The plan is stateless, so it emits
/// these on every run; publish them when the status changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEvent {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

/// Status of one mapping.
#[derive(Clone, Debug, PartialEq)]
pub struct MappingOutcome {
    pub observed_generation: Option<i64>,
    /// No problems.
    pub ready: bool,
    /// Most severe problem, or `Reconciled`.
    pub reason: Reason,
    /// All problems (most severe first), a summary, then informational notes.
    pub message: String,
    /// Most severe first.
    pub problems: Vec<Problem>,
    /// Informational (skipped members, …); they don't affect readiness.
    pub notes: Vec<String>,
    /// Bindings planned for (or, when frozen/held, kept for) this mapping, sorted.
    pub bindings: Vec<BindingStatus>,
    pub held_removals: Option<HeldRemovals>,
    /// What the fan-out budget withholds (set with [`Reason::FanOutExceeded`]).
    pub fan_out: Option<FanOut>,
    pub events: Vec<PlanEvent>,
    /// The groups the spec names, shortened (the Groups column).
    pub groups: String,
    /// The roles the spec binds, shortened (the Roles column).
    pub roles: String,
    /// Distinct subjects bound; None when nothing was planned (invalid spec).
    pub subject_count: Option<u32>,
    pub(super) summary: String,
}

impl MappingOutcome {
    pub(super) fn new(generation: Option<i64>) -> Self {
        MappingOutcome {
            observed_generation: generation,
            ready: true,
            reason: Reason::Reconciled,
            message: String::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            bindings: Vec::new(),
            held_removals: None,
            fan_out: None,
            events: Vec::new(),
            groups: String::new(),
            roles: String::new(),
            subject_count: None,
            summary: String::new(),
        }
    }

    /// Record a problem; readiness, reason and message follow. The apply layer uses this
    /// with [`Reason::BindingRefused`] when the API server rejects a binding.
    pub fn add_problem(&mut self, reason: Reason, message: impl Into<String>) {
        self.problems.push(Problem {
            reason,
            message: message.into(),
        });
        self.refresh();
    }

    pub(super) fn refresh(&mut self) {
        // Stable sort: problems of equal severity keep their order.
        self.problems.sort_by_key(|p| std::cmp::Reverse(p.reason));
        self.ready = self.problems.is_empty();
        self.reason = self
            .problems
            .first()
            .map_or(Reason::Reconciled, |p| p.reason);
        let parts: Vec<&str> = self
            .problems
            .iter()
            .map(|p| p.message.as_str())
            .chain((!self.summary.is_empty()).then_some(self.summary.as_str()))
            .chain(self.notes.iter().map(String::as_str))
            .collect();
        self.message = parts.join("; ");
    }
}

/// A mapping over the fan-out budget: the numbers, and what is not bound because of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanOut {
    /// [`Settings::max_fanout`].
    pub budget: u64,
    /// Subjects the mapping asks for.
    pub subjects: usize,
    /// Logical bindings it asks for (RoleBindings per namespace, ClusterRoleBindings).
    pub bindings: usize,
    /// New subjects not bound (asked for, in none of its bindings yet).
    pub withheld_subjects: usize,
    /// New logical bindings not made, as (namespace, role); no namespace = cluster-wide.
    pub withheld_bindings: Vec<(Option<String>, RoleRef)>,
}

impl FanOut {
    /// subjects × bindings.
    pub fn total(&self) -> u64 {
        fan_out_total(self.subjects, self.bindings)
    }

    /// The withheld bindings for people: `ClusterRole/view in ns-a`, `… cluster-wide`;
    /// the first five, then `…`.
    pub fn withheld_places(&self) -> String {
        let places: Vec<String> = self
            .withheld_bindings
            .iter()
            .map(|(ns, role)| match ns {
                Some(ns) => format!("{} in {ns}", role_display(role)),
                None => format!("{} cluster-wide", role_display(role)),
            })
            .collect();
        examples(&places.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

pub(super) fn fan_out_total(subjects: usize, bindings: usize) -> u64 {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    n(subjects).saturating_mul(n(bindings))
}

/// Desired status of one ScimUser: why it has which access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserAccess {
    /// Groups the user is a member of, sorted by id (shared by all members of a group).
    pub groups: Vec<Arc<UserGroupRef>>,
    /// Grant blocks, one per (mapping, group) the user gets access through; read them
    /// with [`UserAccess::access`]. Shared between users because a cluster mapping with a
    /// broad namespaceSelector yields one grant per namespace per member: materializing
    /// them all up front cost ~1 s and ~400 MB at 50k users.
    pub grants: Vec<Arc<[AccessGrant]>>,
}

impl UserAccess {
    /// `status.access`: sorted (cluster-wide first, then by namespace) and unique. Only
    /// active users that got a subject (or whose group is a subject) have grants; removals
    /// held by the guard and frozen mappings are not listed.
    pub fn access(&self) -> Vec<AccessGrant> {
        let mut access: Vec<AccessGrant> =
            Vec::with_capacity(self.grants.iter().map(|b| b.len()).sum());
        for block in &self.grants {
            access.extend(block.iter().cloned());
        }
        access.sort();
        access.dedup();
        access
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Bindings to server-side apply, sorted by (kind, namespace, name). Apply them all
    /// before pruning: a subject moving between parts is then never absent.
    pub bindings: Vec<DesiredBinding>,
    /// Managed bindings to delete, sorted. The caller must prune only once every cache
    /// (mappings, users, groups, shards, namespaces, roles, bindings) has synced — a
    /// half-filled cache looks like mass deletion. Bindings in missing or terminating
    /// namespaces are never listed (they go with the namespace).
    pub prune: Vec<BindingId>,
    /// Every mapping not being deleted.
    pub mapping_status: BTreeMap<MappingKey, MappingOutcome>,
    /// Every user, keyed by id (empty when it has no groups, so stale statuses clear).
    pub user_status: BTreeMap<String, UserAccess>,
    /// Every group, keyed by id: the mappings (`ns/name` or `name`) that select it.
    pub group_status: BTreeMap<String, Vec<String>>,
    /// Where each mapping's subjects live (see [`MappingLayout`]).
    pub layouts: BTreeMap<MappingKey, MappingLayout>,
    /// The nearest `expiresAt` after `now` of any mapping: plan again at that moment.
    pub next_expiry: Option<Timestamp>,
}

/// Where a mapping's subjects live, for the revocation fast lane: how it names its
/// subjects, the groups it selects, and every part of each of its logical bindings.
#[derive(Clone, Debug, PartialEq)]
pub struct MappingLayout {
    pub subjects: ResolvedSubjects,
    /// Ids of the groups it selects.
    pub groups: Vec<String>,
    pub targets: Vec<TargetLayout>,
}

/// The parts of one logical binding, in part order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetLayout {
    pub kind: BindingKind,
    pub namespace: Option<String>,
    pub parts: Vec<String>,
    /// A subject's part is [`crate::controller::split::part_of`]; otherwise (held
    /// removals, a frozen mapping, the greedy fallback) any part may hold it.
    pub hashed: bool,
}
