//! The controller's pure decision core: a snapshot of the world in, the bindings that
//! should exist, the managed bindings to delete and every status out. No I/O, no kube
//! client or object types: the I/O layer fills [`PlanInput`] from reflector caches,
//! applies [`Plan::bindings`] (server-side apply), then deletes [`Plan::prune`] and writes
//! the statuses.
//!
//! Rules, per mapping:
//! 1. A mapping being deleted plans nothing and is not guarded (deleting is an explicit
//!    human act): its bindings are pruned, then the caller removes its finalizer. It has
//!    no entry in [`Plan::mapping_status`].
//! 2. An invalid spec or selector (`InvalidSpec`, `InvalidSelector`) *freezes* the
//!    mapping: its existing bindings are neither updated nor pruned until the spec is
//!    fixed, so a typo never revokes access. (The CRD schema should reject most of these.)
//! 3. Groups resolve by exact displayName or externalId. Unknown refs → `GroupNotFound`;
//!    the groups that are found are bound anyway.
//! 4. Subjects: `spec.subjects` overrides [`Settings::subjects`] field by field. `User`:
//!    one subject per active, known member that has the chosen attribute, prefixed;
//!    `Group`: one per group that has the chosen attribute, prefixed; `UserAndGroup`: both.
//!    Deduplicated and sorted. Skipped members/groups are counted in the message only.
//!    A final name (prefix included) that fails [`check_subject_name`] (`system:…`,
//!    empty, too long) is never bound: `SubjectRefused` names the user or group.
//! 5. Targets: GroupRoleMapping → one RoleBinding in its namespace. ClusterGroupRoleMapping
//!    → one ClusterRoleBinding per `clusterRoles` entry and one RoleBinding (to the
//!    ClusterRole) per namespace listed or selected by a `namespaceRoles` entry (existing,
//!    not terminating). Protected ClusterRoles (cluster-admin plus
//!    [`Settings::protected_roles`]) are refused without `allowProtectedRoles: true`; a
//!    missing role is still bound (RBAC allows dangling roleRefs) but reported.
//! 6. Zero subjects → no binding object (an empty binding grants nothing; creating one
//!    would only add objects); status shows no bindings and says "no subjects".
//! 7. Mass-removal guard (see [`Settings::mass_removal_threshold`]).
//! 8. Bindings too big for one object, or copied into so many namespaces that one change
//!    would rewrite too much, are split into parts (see [`crate::controller::split`]).
//! 9. Fan-out budget (see [`Settings::max_fanout`]): a mapping whose subjects × logical
//!    bindings would exceed it gets no additions — no new subject, no new namespace —
//!    while its removals go through as usual (`FanOutExceeded`).
//!
//! Reasons, most severe first (several problems → Ready=False with the most severe reason
//! and a message listing all): `Expired`, `InvalidSpec`, `InvalidSelector`, `ScopeRefused`,
//! `ProtectedRoleRefused`, `BindingRefused` (set by the apply layer via
//! [`MappingOutcome::add_problem`] when the API server forbids a binding),
//! `FanOutExceeded`, `RemovalHeld`, `SubjectRefused`, `GroupNotFound`, `RoleNotFound`,
//! `NamespaceNotFound`; `Reconciled` when there is none.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;

use super::naming;
pub use super::naming::mapping_key_from_labels;
use super::split::{split_subjects, Limits};
use crate::crd::subject_name::{check_subject_name, UnsafeName};
use crate::crd::user::{AccessGrant, GrantScope, UserGroupRef};
use crate::crd::{
    BindingStatus, ClusterGroupRoleMappingSpec, GroupAttribute, GroupRef, GroupRoleMappingSpec,
    HeldRemovals, RoleKind, RoleRef, SubjectKind, SubjectOptions, UserAttribute,
    CONFIRM_REMOVAL_ANNOTATION,
};

/// apiGroup of every subject kube-scim writes.
pub const RBAC_API_GROUP: &str = "rbac.authorization.k8s.io";
/// Always protected, whatever [`Settings::protected_roles`] says.
pub const ALWAYS_PROTECTED_ROLE: &str = "cluster-admin";

// ---------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------

/// Which mapping: a GroupRoleMapping (namespaced) or a ClusterGroupRoleMapping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MappingKey {
    Namespaced { namespace: String, name: String },
    Cluster { name: String },
}

impl MappingKey {
    /// The mapping's kind, as in labels and Events.
    pub fn kind(&self) -> &'static str {
        match self {
            MappingKey::Namespaced { .. } => naming::KIND_GROUP_ROLE_MAPPING,
            MappingKey::Cluster { .. } => naming::KIND_CLUSTER_GROUP_ROLE_MAPPING,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            MappingKey::Namespaced { name, .. } | MappingKey::Cluster { name } => name,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            MappingKey::Namespaced { namespace, .. } => Some(namespace),
            MappingKey::Cluster { .. } => None,
        }
    }
}

/// `namespace/name` or `name`: the form used in ScimUser and ScimGroup statuses.
impl fmt::Display for MappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MappingKey::Namespaced { namespace, name } => write!(f, "{namespace}/{name}"),
            MappingKey::Cluster { name } => f.write_str(name),
        }
    }
}

/// The spec of either mapping kind.
#[derive(Clone, Debug, PartialEq)]
pub enum MappingSpec {
    Namespaced(GroupRoleMappingSpec),
    Cluster(ClusterGroupRoleMappingSpec),
}

impl MappingSpec {
    /// `spec.groups`.
    pub fn groups(&self) -> &[GroupRef] {
        match self {
            MappingSpec::Namespaced(s) => &s.groups,
            MappingSpec::Cluster(s) => &s.groups,
        }
    }

    fn subjects(&self) -> Option<&SubjectOptions> {
        match self {
            MappingSpec::Namespaced(s) => s.subjects.as_ref(),
            MappingSpec::Cluster(s) => s.subjects.as_ref(),
        }
    }

    fn allow_protected_roles(&self) -> bool {
        match self {
            MappingSpec::Namespaced(s) => s.allow_protected_roles,
            MappingSpec::Cluster(s) => s.allow_protected_roles,
        }
    }

    /// `spec.expiresAt`.
    pub fn expires_at(&self) -> Option<Timestamp> {
        match self {
            MappingSpec::Namespaced(s) => s.expires_at.as_ref(),
            MappingSpec::Cluster(s) => s.expires_at.as_ref(),
        }
        .map(|t| t.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MappingInput {
    pub key: MappingKey,
    /// `metadata.generation`, echoed as `observedGeneration`.
    pub generation: Option<i64>,
    /// `status.observedGeneration`: the spec last reconciled. When it differs from
    /// `generation` the spec was edited, and only then does the mass-removal guard apply.
    pub observed_generation: Option<i64>,
    pub spec: MappingSpec,
    /// Value of the [`CONFIRM_REMOVAL_ANNOTATION`] annotation, if set.
    pub confirm_annotation: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

/// A ScimGroup with its members resolved (inline and shards).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupInput {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    /// Member user ids.
    pub members: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInput {
    pub id: String,
    pub user_name: String,
    pub external_id: Option<String>,
    /// `emails[type=work].value`, else the primary email, else the first.
    pub work_email: Option<String>,
    pub active: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInput {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `status.phase == Terminating`: nothing gets created there any more.
    pub terminating: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BindingKind {
    RoleBinding,
    ClusterRoleBinding,
}

impl BindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingKind::RoleBinding => "RoleBinding",
            BindingKind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }
}

/// Kind of an RBAC subject kube-scim writes (apiGroup is always [`RBAC_API_GROUP`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubjectType {
    User,
    Group,
}

impl SubjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectType::User => "User",
            SubjectType::Group => "Group",
        }
    }

    /// `User` / `Group`; anything else (e.g. ServiceAccount) is not kube-scim's.
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "User" => Some(SubjectType::User),
            "Group" => Some(SubjectType::Group),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    pub kind: SubjectType,
    pub name: String,
}

impl Subject {
    pub fn user(name: impl Into<String>) -> Self {
        Subject {
            kind: SubjectType::User,
            name: name.into(),
        }
    }

    pub fn group(name: impl Into<String>) -> Self {
        Subject {
            kind: SubjectType::Group,
            name: name.into(),
        }
    }

    /// Bytes this subject adds to a binding serialized as JSON, list comma included:
    /// `{"kind":"User","apiGroup":"rbac.authorization.k8s.io","name":"…"},`.
    pub fn json_len(&self) -> usize {
        const USER: usize =
            r#"{"kind":"User","apiGroup":"rbac.authorization.k8s.io","name":""},"#.len();
        const GROUP: usize =
            r#"{"kind":"Group","apiGroup":"rbac.authorization.k8s.io","name":""},"#.len();
        let fixed = match self.kind {
            SubjectType::User => USER,
            SubjectType::Group => GROUP,
        };
        let escaped: usize = self
            .name
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' => 2,
                0..=0x1f => 6, // \u00XX
                _ => 1,
            })
            .sum();
        fixed + escaped
    }
}

/// A binding kube-scim currently manages (label-selected from the cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingBinding {
    pub kind: BindingKind,
    pub namespace: Option<String>,
    pub name: String,
    pub role_ref: RoleRef,
    /// Owner, from [`naming::mapping_key_from_labels`]; `None` = orphan, always pruned.
    pub mapping: Option<MappingKey>,
    /// Its User and Group subjects (other kinds are not kube-scim's; leave them out).
    /// Shared with the cache: copies of one list in many namespaces are one allocation.
    pub subjects: Arc<[Subject]>,
}

/// How subjects are named, every field resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSubjects {
    pub kind: SubjectKind,
    pub user_attribute: UserAttribute,
    pub user_prefix: String,
    pub group_attribute: GroupAttribute,
    pub group_prefix: String,
}

impl Default for ResolvedSubjects {
    fn default() -> Self {
        ResolvedSubjects {
            kind: SubjectKind::User,
            user_attribute: UserAttribute::UserName,
            user_prefix: String::new(),
            group_attribute: GroupAttribute::ExternalId,
            group_prefix: String::new(),
        }
    }
}

impl ResolvedSubjects {
    /// These defaults with every field `options` sets taking precedence.
    pub fn with_overrides(&self, options: Option<&SubjectOptions>) -> Self {
        let Some(o) = options else {
            return self.clone();
        };
        ResolvedSubjects {
            kind: o.kind.unwrap_or(self.kind),
            user_attribute: o.user_attribute.unwrap_or(self.user_attribute),
            user_prefix: o
                .user_prefix
                .clone()
                .unwrap_or_else(|| self.user_prefix.clone()),
            group_attribute: o.group_attribute.unwrap_or(self.group_attribute),
            group_prefix: o
                .group_prefix
                .clone()
                .unwrap_or_else(|| self.group_prefix.clone()),
        }
    }

    pub(crate) fn binds_users(&self) -> bool {
        matches!(self.kind, SubjectKind::User | SubjectKind::UserAndGroup)
    }

    pub(crate) fn binds_groups(&self) -> bool {
        matches!(self.kind, SubjectKind::Group | SubjectKind::UserAndGroup)
    }

    fn user_attr<'u>(&self, u: &'u UserInput) -> Option<&'u str> {
        let v = match self.user_attribute {
            UserAttribute::UserName => Some(u.user_name.as_str()),
            UserAttribute::Email => u.work_email.as_deref(),
            UserAttribute::ExternalId => u.external_id.as_deref(),
        };
        v.filter(|v| !v.is_empty())
    }

    fn group_attr<'g>(&self, g: &'g GroupInput) -> Option<&'g str> {
        let v = match self.group_attribute {
            GroupAttribute::ExternalId => g.external_id.as_deref(),
            GroupAttribute::DisplayName => Some(g.display_name.as_str()),
        };
        v.filter(|v| !v.is_empty())
    }

    /// The subject a user becomes: its attribute with the prefix, checked.
    fn user_subject(&self, u: &UserInput) -> Named {
        Named::check(self.user_attr(u), &self.user_prefix)
    }

    /// The User subject `u` is bound as, if any (whatever its active state).
    pub(crate) fn user_subject_name(&self, u: &UserInput) -> Option<Subject> {
        match self.user_subject(u) {
            Named::Bound(name) => Some(Subject::user(name)),
            _ => None,
        }
    }

    /// The subject a group becomes: its attribute with the prefix, checked.
    fn group_subject(&self, g: &GroupInput) -> Named {
        Named::check(self.group_attr(g), &self.group_prefix)
    }

    /// The User subject `u` becomes, or why it becomes none (for people: `kube-scim access`).
    pub(crate) fn explain_user_subject(&self, u: &UserInput) -> Result<Subject, NoSubject> {
        match self.user_subject(u) {
            Named::Bound(name) => Ok(Subject::user(name)),
            Named::Missing => Err(NoSubject::Missing(format!(
                "user has no {}",
                self.user_attribute_name()
            ))),
            Named::Refused(name, why) => Err(NoSubject::Refused(refusal(
                format!("user {}", u.id),
                self.user_attribute_name(),
                &name,
                why,
            ))),
        }
    }

    /// The Group subject `g` becomes, or why it becomes none.
    pub(crate) fn explain_group_subject(&self, g: &GroupInput) -> Result<Subject, NoSubject> {
        match self.group_subject(g) {
            Named::Bound(name) => Ok(Subject::group(name)),
            Named::Missing => Err(NoSubject::Missing(format!(
                "group {:?} has no {}",
                g.display_name,
                self.group_attribute_name()
            ))),
            Named::Refused(name, why) => Err(NoSubject::Refused(refusal(
                format!("group {:?}", g.display_name),
                self.group_attribute_name(),
                &name,
                why,
            ))),
        }
    }

    fn user_attribute_name(&self) -> &'static str {
        match self.user_attribute {
            UserAttribute::UserName => "userName",
            UserAttribute::Email => "email",
            UserAttribute::ExternalId => "externalId",
        }
    }

    fn group_attribute_name(&self) -> &'static str {
        match self.group_attribute {
            GroupAttribute::ExternalId => "externalId",
            GroupAttribute::DisplayName => "displayName",
        }
    }
}

/// Why a user or group becomes no subject of a mapping's bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoSubject {
    /// The attribute that names subjects is absent or empty.
    Missing(String),
    /// The final name is unsafe (see [`check_subject_name`]): never bound.
    Refused(String),
}

/// What a user's or group's attribute becomes as an RBAC subject name.
enum Named {
    /// The attribute is absent or empty.
    Missing,
    /// The final name (prefix included) fails [`check_subject_name`]: never bound.
    Refused(String, UnsafeName),
    Bound(String),
}

impl Named {
    fn check(attr: Option<&str>, prefix: &str) -> Named {
        let Some(a) = attr else {
            return Named::Missing;
        };
        let name = format!("{prefix}{a}");
        match check_subject_name(&name) {
            Ok(()) => Named::Bound(name),
            Err(why) => Named::Refused(name, why),
        }
    }

    fn is_bound(&self) -> bool {
        matches!(self, Named::Bound(_))
    }
}

/// `who` (`user <id>` / `group <displayName>`) refused as `name`, for status messages:
/// the name is attacker-chosen, so it is shortened and debug-quoted.
fn refusal(who: String, attribute: &str, name: &str, why: UnsafeName) -> String {
    let shown: String = name.chars().take(64).collect();
    let ellipsis = if shown.len() < name.len() { "…" } else { "" };
    format!("{who} ({attribute} → subject {shown:?}{ellipsis} {why})")
}

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
            max_change_bytes: 1_500_000,
            max_fanout: DEFAULT_MAX_FANOUT,
        }
    }
}

/// Never bound unless the operator is told so (its own namespace is added at start).
pub const DEFAULT_PROTECTED_NAMESPACES: [&str; 3] =
    ["kube-system", "kube-public", "kube-node-lease"];

impl Settings {
    fn may_bind_cluster_wide(&self, role: &str) -> bool {
        self.cluster_wide_roles
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => role.starts_with(prefix),
                None => p == role,
            })
    }

    fn is_protected(&self, role: &RoleRef) -> bool {
        role.kind == RoleKind::ClusterRole
            && (role.name == ALWAYS_PROTECTED_ROLE || self.protected_roles.contains(&role.name))
    }
}

/// Everything the plan looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanInput {
    pub mappings: Vec<MappingInput>,
    pub groups: Vec<GroupInput>,
    pub users: Vec<UserInput>,
    pub namespaces: Vec<NamespaceInput>,
    /// Names of existing ClusterRoles.
    pub cluster_roles: BTreeSet<String>,
    /// Existing Roles as (namespace, name).
    pub roles: BTreeSet<(String, String)>,
    /// Bindings currently labelled as managed by kube-scim.
    pub existing: Vec<ExistingBinding>,
    /// When the plan is made: a mapping whose `expiresAt` is at or before it grants nothing.
    pub now: Timestamp,
}

// ---------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------

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
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
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
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
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
    summary: String,
}

impl MappingOutcome {
    fn new(generation: Option<i64>) -> Self {
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

    fn refresh(&mut self) {
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

fn fan_out_total(subjects: usize, bindings: usize) -> u64 {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    n(subjects).saturating_mul(n(bindings))
}

/// Desired status of one ScimUser: why it has which access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserAccess {
    /// Groups the user is a member of, sorted by id.
    pub groups: Vec<UserGroupRef>,
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

// ---------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------

/// Lookups built once per plan. Users and groups are addressed by dense indices (their
/// position in the input) so the per-mapping work indexes arrays instead of hashing ids:
/// at 50k users that is most of the plan's time.
struct Index<'a> {
    users: Vec<&'a UserInput>,
    groups: Vec<&'a GroupInput>,
    /// Per group: members that are known users, as user indices, without repeats.
    members: Vec<Vec<usize>>,
    /// Per group: member ids that match no user.
    unknown_members: Vec<Vec<&'a str>>,
    groups_by_name: HashMap<&'a str, Vec<usize>>,
    groups_by_external_id: HashMap<&'a str, Vec<usize>>,
    namespaces: HashMap<&'a str, &'a NamespaceInput>,
    namespaces_sorted: Vec<&'a NamespaceInput>,
    existing: HashMap<&'a MappingKey, Vec<&'a ExistingBinding>>,
    cluster_roles: &'a BTreeSet<String>,
    roles: &'a BTreeSet<(String, String)>,
}

impl<'a> Index<'a> {
    fn new(input: &'a PlanInput) -> Self {
        let user_ix: HashMap<&str, usize> = input
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.as_str(), i))
            .collect();
        let mut groups_by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut groups_by_external_id: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut members = Vec::with_capacity(input.groups.len());
        let mut unknown_members = Vec::with_capacity(input.groups.len());
        for (gi, g) in input.groups.iter().enumerate() {
            groups_by_name.entry(&g.display_name).or_default().push(gi);
            if let Some(e) = g.external_id.as_deref() {
                groups_by_external_id.entry(e).or_default().push(gi);
            }
            let mut known = Vec::with_capacity(g.members.len());
            let mut unknown = Vec::new();
            for m in &g.members {
                match user_ix.get(m.as_str()) {
                    Some(ui) => known.push(*ui),
                    None => unknown.push(m.as_str()),
                }
            }
            known.sort_unstable();
            known.dedup();
            members.push(known);
            unknown_members.push(unknown);
        }
        let mut existing: HashMap<&MappingKey, Vec<&ExistingBinding>> = HashMap::new();
        for b in &input.existing {
            if let Some(k) = &b.mapping {
                existing.entry(k).or_default().push(b);
            }
        }
        let mut namespaces_sorted: Vec<&NamespaceInput> = input.namespaces.iter().collect();
        namespaces_sorted.sort_by(|a, b| a.name.cmp(&b.name));
        Index {
            users: input.users.iter().collect(),
            groups: input.groups.iter().collect(),
            members,
            unknown_members,
            groups_by_name,
            groups_by_external_id,
            namespaces: input
                .namespaces
                .iter()
                .map(|n| (n.name.as_str(), n))
                .collect(),
            namespaces_sorted,
            existing,
            cluster_roles: &input.cluster_roles,
            roles: &input.roles,
        }
    }

    /// A binding in this namespace can exist and be written (cluster scope always can).
    fn namespace_live(&self, ns: Option<&str>) -> bool {
        ns.is_none_or(|ns| self.namespaces.get(ns).is_some_and(|n| !n.terminating))
    }
}

/// One logical binding of a mapping: (kind, namespace, roleRef). Split parts share it.
type TargetKey = (BindingKind, Option<String>, RoleRef);

/// What one mapping contributes to the plan.
struct MappingPlan<'a> {
    outcome: MappingOutcome,
    bindings: Vec<DesiredBinding>,
    /// Existing bindings left exactly as they are (frozen mapping or held prune).
    keep: Vec<&'a ExistingBinding>,
    /// Indices of the groups the mapping selects.
    groups: Vec<usize>,
    /// Targets users get access through (empty when frozen).
    grant_targets: Vec<TargetKey>,
    /// Targets whose parts are hash-addressed (see [`TargetLayout::hashed`]).
    hashed: HashSet<TargetKey>,
    subjects: ResolvedSubjects,
    /// Subjects the fan-out budget keeps out: members they stand for get no grant.
    withheld: HashSet<Subject>,
}

/// Plan the whole world. Deterministic: the same input gives the same plan.
pub fn plan(settings: &Settings, input: &PlanInput) -> Plan {
    let idx = Index::new(input);
    let mut out = Plan::default();
    let mut keep: HashSet<(BindingKind, Option<&str>, &str)> = HashSet::new();
    let mut group_mappings: Vec<BTreeSet<String>> = vec![BTreeSet::new(); idx.groups.len()];
    let mut grants: Vec<Vec<Arc<[AccessGrant]>>> = vec![Vec::new(); idx.users.len()];
    let mut seen = HashSet::new();

    // By key, so every output (down to the order of grant blocks) is independent of input order.
    let mut mappings: Vec<&MappingInput> = input.mappings.iter().collect();
    mappings.sort_by(|a, b| a.key.cmp(&b.key));
    for m in mappings {
        if m.deleting || !seen.insert(&m.key) {
            continue;
        }
        if let Some(at) = m.spec.expires_at().filter(|at| *at > input.now) {
            out.next_expiry = Some(out.next_expiry.map_or(at, |n| n.min(at)));
        }
        let mp = plan_mapping(settings, &idx, m, input.now);
        let display = m.key.to_string();
        for gi in &mp.groups {
            group_mappings[*gi].insert(display.clone());
        }
        collect_grants(&idx, &mp, &display, &mut grants);
        out.layouts.insert(m.key.clone(), layout(&idx, &mp));
        for b in &mp.keep {
            keep.insert((b.kind, b.namespace.as_deref(), &b.name));
        }
        out.bindings.extend(mp.bindings);
        out.mapping_status.insert(m.key.clone(), mp.outcome);
    }
    out.bindings
        .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));

    let desired: HashSet<(BindingKind, Option<&str>, &str)> = out
        .bindings
        .iter()
        .map(|b| (b.kind, b.namespace.as_deref(), b.name.as_str()))
        .collect();
    for b in &input.existing {
        let id = (b.kind, b.namespace.as_deref(), b.name.as_str());
        if desired.contains(&id)
            || keep.contains(&id)
            || !idx.namespace_live(b.namespace.as_deref())
        {
            continue;
        }
        out.prune.push(BindingId {
            kind: b.kind,
            namespace: b.namespace.clone(),
            name: b.name.clone(),
        });
    }
    out.prune.sort();
    out.prune.dedup();

    let mut user_groups: Vec<Vec<usize>> = vec![Vec::new(); idx.users.len()];
    for (gi, members) in idx.members.iter().enumerate() {
        for ui in members {
            user_groups[*ui].push(gi);
        }
    }
    // Collected then bulk-built: BTreeMap::from_iter sorts once instead of 50k inserts.
    out.user_status = idx
        .users
        .iter()
        .zip(user_groups)
        .zip(grants)
        .map(|((u, group_ixs), grants)| {
            let mut groups: Vec<UserGroupRef> = group_ixs
                .into_iter()
                .map(|gi| UserGroupRef {
                    id: idx.groups[gi].id.clone(),
                    display_name: Some(idx.groups[gi].display_name.clone()),
                })
                .collect();
            groups.sort();
            groups.dedup();
            (u.id.clone(), UserAccess { groups, grants })
        })
        .collect();
    out.group_status = idx
        .groups
        .iter()
        .zip(group_mappings)
        .map(|(g, mappings)| (g.id.clone(), mappings.into_iter().collect()))
        .collect();
    out
}

fn layout(idx: &Index<'_>, mp: &MappingPlan<'_>) -> MappingLayout {
    // Parts of one target are consecutive in `bindings`, in part order.
    let mut targets: Vec<(TargetKey, TargetLayout)> = Vec::new();
    let planned = mp
        .bindings
        .iter()
        .map(|b| (b.kind, &b.namespace, &b.role_ref, &b.name, true));
    let kept = mp
        .keep
        .iter()
        .map(|b| (b.kind, &b.namespace, &b.role_ref, &b.name, false));
    for (kind, namespace, role, name, planned) in planned.chain(kept) {
        let key = (kind, namespace.clone(), role.clone());
        let hashed = planned && mp.hashed.contains(&key);
        match targets.iter_mut().find(|(k, _)| *k == key) {
            Some((_, t)) => {
                t.parts.push(name.clone());
                t.hashed &= hashed;
            }
            None => targets.push((
                key,
                TargetLayout {
                    kind,
                    namespace: namespace.clone(),
                    parts: vec![name.clone()],
                    hashed,
                },
            )),
        }
    }
    MappingLayout {
        subjects: mp.subjects.clone(),
        groups: mp
            .groups
            .iter()
            .map(|gi| idx.groups[*gi].id.clone())
            .collect(),
        targets: targets.into_iter().map(|(_, t)| t).collect(),
    }
}

fn collect_grants(
    idx: &Index<'_>,
    mp: &MappingPlan<'_>,
    display: &str,
    grants: &mut [Vec<Arc<[AccessGrant]>>],
) {
    if mp.grant_targets.is_empty() {
        return;
    }
    let cfg = &mp.subjects;
    let scopes = grant_scopes(&mp.grant_targets);
    for &gi in &mp.groups {
        let g = idx.groups[gi];
        let block: Arc<[AccessGrant]> = scopes
            .iter()
            .map(|(role, namespace, scope)| AccessGrant {
                role_kind: naming::role_kind_str(role.kind).to_owned(),
                role_name: role.name.clone(),
                namespace: namespace.clone(),
                scope: Some(*scope),
                mapping: display.to_owned(),
                group: g.display_name.clone(),
            })
            .collect();
        // A subject the fan-out budget withholds grants nothing (yet).
        let admitted = |named: Named, subject: fn(String) -> Subject| match named {
            Named::Bound(name) => mp.withheld.is_empty() || !mp.withheld.contains(&subject(name)),
            _ => false,
        };
        let via_group = cfg.binds_groups() && admitted(cfg.group_subject(g), Subject::group);
        for &ui in &idx.members[gi] {
            let u = idx.users[ui];
            let via_user = cfg.binds_users() && admitted(cfg.user_subject(u), Subject::user);
            if !u.active || !(via_user || via_group) {
                continue;
            }
            grants[ui].push(Arc::clone(&block));
        }
    }
}

/// One grant per role and scope: a role bound in several namespaces is one
/// `SelectedNamespaces` grant, so a user's status stays small (50,000 users × 100
/// namespaces would be 5M entries) and unchanged when a selected namespace comes or goes.
fn grant_scopes(targets: &[TargetKey]) -> Vec<(&RoleRef, Option<String>, GrantScope)> {
    let mut namespaces: BTreeMap<&RoleRef, Vec<&str>> = BTreeMap::new();
    let mut out = Vec::new();
    for (kind, ns, role) in targets {
        match (kind, ns) {
            (BindingKind::RoleBinding, Some(ns)) => namespaces.entry(role).or_default().push(ns),
            _ => out.push((role, None, GrantScope::Cluster)),
        }
    }
    for (role, nss) in namespaces {
        match nss.as_slice() {
            [one] => out.push((role, Some((*one).to_owned()), GrantScope::Namespace)),
            _ => out.push((role, None, GrantScope::SelectedNamespaces)),
        }
    }
    out
}

/// Problems found while reading a spec, grouped by reason.
#[derive(Default)]
struct SpecFindings {
    invalid: Vec<String>,
    bad_selectors: Vec<String>,
    missing_namespaces: BTreeSet<String>,
    missing_roles: BTreeSet<String>,
    refused_roles: BTreeSet<String>,
    /// Targets refused for their scope, as messages.
    refused_scopes: BTreeSet<String>,
    /// Protected namespaces a selector matched (skipped, noted).
    skipped_namespaces: BTreeSet<String>,
    missing_groups: Vec<String>,
}

fn plan_mapping<'a>(
    settings: &Settings,
    idx: &Index<'a>,
    m: &'a MappingInput,
    now: Timestamp,
) -> MappingPlan<'a> {
    let mut outcome = MappingOutcome::new(m.generation);
    outcome.groups = groups_summary(m.spec.groups());
    outcome.roles = roles_summary(&m.spec);
    let mut f = SpecFindings::default();
    let subjects_cfg = settings.subjects.with_overrides(m.spec.subjects());
    let targets = targets(settings, idx, m, &mut f);
    let groups = resolve_groups(idx, m.spec.groups(), &mut f);
    let existing: &[&ExistingBinding] = idx.existing.get(&m.key).map_or(&[], Vec::as_slice);

    // Expired: nothing is bound, everything it had is pruned (explicit, like a deletion:
    // not held by the mass-removal guard), whatever else the spec says.
    let expires_at = m.spec.expires_at();
    if let Some(at) = expires_at.filter(|at| *at <= now) {
        let msg = format!(
            "expired at {at}: its bindings are removed; move spec.expiresAt into the future to renew"
        );
        outcome.events.push(PlanEvent {
            type_: EventType::Normal,
            reason: Reason::Expired.as_str().to_owned(),
            note: msg.clone(),
        });
        outcome.problems.push(problem(Reason::Expired, msg));
        outcome.subject_count = Some(0);
        outcome.refresh();
        return MappingPlan {
            outcome,
            bindings: Vec::new(),
            keep: Vec::new(),
            groups,
            grant_targets: Vec::new(),
            hashed: HashSet::new(),
            subjects: subjects_cfg,
            withheld: HashSet::new(),
        };
    }

    for msg in &f.invalid {
        outcome
            .problems
            .push(problem(Reason::InvalidSpec, msg.clone()));
    }
    for msg in &f.bad_selectors {
        outcome
            .problems
            .push(problem(Reason::InvalidSelector, msg.clone()));
    }
    if !f.invalid.is_empty() || !f.bad_selectors.is_empty() {
        outcome.summary = "existing bindings are left unchanged until the spec is fixed".into();
        outcome.bindings = binding_statuses(existing.iter().map(|b| existing_part(b)));
        outcome.refresh();
        return MappingPlan {
            outcome,
            bindings: Vec::new(),
            keep: existing.to_vec(),
            groups,
            grant_targets: Vec::new(),
            hashed: HashSet::new(),
            subjects: subjects_cfg,
            withheld: HashSet::new(),
        };
    }

    for msg in &f.refused_scopes {
        outcome.events.push(warning(Reason::ScopeRefused, msg));
        outcome
            .problems
            .push(problem(Reason::ScopeRefused, msg.clone()));
    }
    for role in &f.refused_roles {
        let msg = format!(
            "ClusterRole {role} is protected and was not bound: set allowProtectedRoles: true to bind it"
        );
        outcome
            .events
            .push(warning(Reason::ProtectedRoleRefused, &msg));
        outcome
            .problems
            .push(problem(Reason::ProtectedRoleRefused, msg));
    }
    if !f.missing_groups.is_empty() {
        let msg = format!("groups not found: {}", f.missing_groups.join(", "));
        outcome.problems.push(problem(Reason::GroupNotFound, msg));
    }
    if !f.missing_roles.is_empty() {
        let roles: Vec<&str> = f.missing_roles.iter().map(String::as_str).collect();
        let msg = format!(
            "roles not found: {} (bound anyway; access starts once they exist)",
            roles.join(", ")
        );
        outcome.problems.push(problem(Reason::RoleNotFound, msg));
    }
    if !f.missing_namespaces.is_empty() {
        let names: Vec<&str> = f.missing_namespaces.iter().map(String::as_str).collect();
        let msg = format!("namespaces not found: {}", names.join(", "));
        outcome
            .problems
            .push(problem(Reason::NamespaceNotFound, msg));
    }

    let ResolvedMembers {
        subjects,
        notes,
        refused,
    } = resolve_subjects(&subjects_cfg, &groups, idx);
    outcome.notes = notes;
    if let Some(at) = expires_at {
        outcome.notes.push(format!("expires at {at}"));
    }
    if !f.skipped_namespaces.is_empty() {
        let names: Vec<&str> = f.skipped_namespaces.iter().map(String::as_str).collect();
        outcome.notes.push(format!(
            "the namespaceSelector skips protected namespaces: {}",
            names.join(", ")
        ));
    }
    if !refused.is_empty() {
        let msg = format!(
            "{} subject(s) refused for unsafe names, not bound: {}",
            refused.len(),
            examples(&refused.iter().map(String::as_str).collect::<Vec<_>>())
        );
        outcome.problems.push(problem(Reason::SubjectRefused, msg));
    }

    // Existing bindings that can still be written; others go with their namespace.
    let live: Vec<&ExistingBinding> = existing
        .iter()
        .copied()
        .filter(|b| idx.namespace_live(b.namespace.as_deref()))
        .collect();
    let held = guard(settings, m, &live, &subjects, &mut outcome);
    // After the guard: the budget changes what is added, never what is removed.
    let (subjects, targets, withheld) = budget(
        settings,
        &live,
        subjects,
        targets,
        &subjects_cfg,
        bound_groups(&subjects_cfg, &groups, idx),
        &mut outcome,
    );

    // Held subjects stay in the logical bindings they were in.
    let mut extras: HashMap<TargetKey, BTreeSet<&Subject>> = HashMap::new();
    let mut existing_parts: HashMap<TargetKey, usize> = HashMap::new();
    for b in &live {
        let key = (b.kind, b.namespace.clone(), b.role_ref.clone());
        *existing_parts.entry(key.clone()).or_default() += 1;
        if !held.is_empty() {
            let kept: Vec<&Subject> = b.subjects.iter().filter(|s| held.contains(*s)).collect();
            if !kept.is_empty() {
                extras.entry(key).or_default().extend(kept);
            }
        }
    }
    let mut keep = Vec::new();
    if !extras.is_empty() {
        // A binding that would be pruned while it holds held subjects: hold the prune too.
        keep = live
            .iter()
            .copied()
            .filter(|b| {
                let key = (b.kind, b.namespace.clone(), b.role_ref.clone());
                extras.contains_key(&key) && !targets.contains(&key)
            })
            .collect();
    }

    let (labels, annotations) = naming::mapping_metadata(&m.key);
    let mut bindings = Vec::new();
    let mut grant_targets = Vec::new();
    // Targets without held extras share one split per part count (which depends only on
    // the current part count, so on `preferred`).
    // (parts, addressed by hash) per part count.
    type Split = (Vec<Arc<[Subject]>>, bool);
    let mut split_cache: HashMap<usize, Split> = HashMap::new();
    let mut hashed = HashSet::new();
    let limits = Limits::for_copies(
        settings.max_subjects_per_binding,
        settings.max_binding_bytes,
        settings.max_change_bytes,
        targets.len(),
    );
    for target in &targets {
        let (kind, ns, role_ref) = target;
        let preferred = existing_parts.get(target).copied().unwrap_or(0);
        let (parts, addressed): (Vec<Arc<[Subject]>>, bool) = match extras.get(target) {
            Some(extra) => {
                let mut merged: Vec<Subject> = subjects
                    .iter()
                    .chain(extra.iter().copied())
                    .cloned()
                    .collect();
                merged.sort();
                merged.dedup();
                // Held subjects are not where the hash puts them: not addressed.
                let (parts, _) = split_subjects(&merged, limits, preferred);
                (parts.into_iter().map(Arc::from).collect(), false)
            }
            None if subjects.is_empty() => continue,
            None => split_cache
                .entry(preferred)
                .or_insert_with(|| {
                    let (parts, addressed) = split_subjects(&subjects, limits, preferred);
                    (parts.into_iter().map(Arc::from).collect(), addressed)
                })
                .clone(),
        };
        if parts.iter().all(|p| p.is_empty()) {
            continue;
        }
        if addressed {
            hashed.insert(target.clone());
        }
        grant_targets.push(target.clone());
        let base = naming::binding_name(&m.key, *kind, role_ref);
        for (i, part) in parts.into_iter().enumerate() {
            bindings.push(DesiredBinding {
                kind: *kind,
                namespace: ns.clone(),
                name: naming::part_name(&base, i),
                role_ref: role_ref.clone(),
                subjects: part,
                mapping: m.key.clone(),
                labels: labels.clone(),
                annotations: annotations.clone(),
            });
        }
    }

    outcome.bindings = binding_statuses(
        bindings
            .iter()
            .map(|b| (b.kind, &b.namespace, &b.role_ref, &b.name, b.subjects.len()))
            .chain(keep.iter().map(|b| existing_part(b))),
    );
    outcome.subject_count = Some(u32::try_from(subjects.len()).unwrap_or(u32::MAX));
    outcome.summary = if subjects.is_empty() {
        "no subjects: the groups have no bindable members".to_owned()
    } else {
        format!(
            "{} binding(s) for {} subject(s)",
            outcome.bindings.len(),
            subjects.len()
        )
    };
    outcome.refresh();

    MappingPlan {
        outcome,
        bindings,
        keep,
        groups,
        grant_targets,
        hashed,
        subjects: subjects_cfg,
        withheld,
    }
}

/// The mass-removal guard. Returns the subjects whose removal is held (empty = none).
fn guard<'e>(
    settings: &Settings,
    m: &MappingInput,
    live: &[&'e ExistingBinding],
    desired: &[Subject],
    outcome: &mut MappingOutcome,
) -> HashSet<&'e Subject> {
    let current = current_subjects(live);
    if current.is_empty() || current.len() < settings.mass_removal_min_subjects {
        return HashSet::new();
    }
    // Revocation is never held: with the spec unchanged since the last reconcile, every
    // removal comes from the identity side (deactivation, deletion, leaving a group).
    if m.generation.is_some() && m.generation == m.observed_generation {
        return HashSet::new();
    }
    let desired: HashSet<&Subject> = desired.iter().collect();
    let mut removed: Vec<&Subject> = current
        .iter()
        .copied()
        .filter(|s| !desired.contains(s))
        .collect();
    let share = removed.len() as f64 / current.len() as f64;
    if removed.is_empty() || share <= settings.mass_removal_threshold {
        return HashSet::new();
    }
    removed.sort();
    let token = naming::confirm_token(removed.iter().copied());
    let what = format!(
        "removal of {} of {} managed subjects ({:.0}% > {:.0}%)",
        removed.len(),
        current.len(),
        share * 100.0,
        settings.mass_removal_threshold * 100.0
    );
    if m.confirm_annotation.as_deref() == Some(token.as_str()) {
        outcome.events.push(PlanEvent {
            type_: EventType::Normal,
            reason: "RemovalConfirmed".into(),
            note: format!("{what} confirmed by annotation {CONFIRM_REMOVAL_ANNOTATION}"),
        });
        return HashSet::new();
    }
    let examples: Vec<&str> = removed.iter().take(5).map(|s| s.name.as_str()).collect();
    let mut msg = format!(
        "holding {what}, e.g. {}: set annotation {CONFIRM_REMOVAL_ANNOTATION}={token} to let it through",
        examples.join(", ")
    );
    if let Some(other) = &m.confirm_annotation {
        msg.push_str(&format!(
            " (the current value {other:?} confirms a different removal)"
        ));
    }
    outcome.events.push(warning(Reason::RemovalHeld, &msg));
    outcome.problems.push(problem(Reason::RemovalHeld, msg));
    // The edit is not applied yet: keep reporting the spec last applied in full, so the
    // next passes still see an edit and keep holding.
    outcome.observed_generation = m.observed_generation;
    outcome.held_removals = Some(HeldRemovals {
        subjects: count_u32(removed.len()),
        managed_subjects: count_u32(current.len()),
        confirm_token: token,
    });
    removed.into_iter().collect()
}

/// The subjects a mapping's live bindings hold, all parts and namespaces together.
fn current_subjects<'e>(live: &[&'e ExistingBinding]) -> HashSet<&'e Subject> {
    // A cluster mapping's RoleBindings usually carry identical lists: hash each list once.
    let mut distinct: Vec<&[Subject]> = Vec::new();
    for b in live {
        // Copies in many namespaces are usually one shared list: compare pointers first.
        let list = &b.subjects[..];
        if !distinct
            .iter()
            .any(|d| std::ptr::eq(*d, list) || *d == list)
        {
            distinct.push(list);
        }
    }
    distinct.iter().flat_map(|l| l.iter()).collect()
}

/// How many of `groups` have a Group subject name under `cfg` (what Group subjects
/// would bind, for the fan-out message).
fn bound_groups(cfg: &ResolvedSubjects, groups: &[usize], idx: &Index<'_>) -> usize {
    groups
        .iter()
        .filter(|gi| cfg.group_subject(idx.groups[**gi]).is_bound())
        .count()
}

/// The fan-out budget ([`Settings::max_fanout`]). Within it, returns `subjects` and
/// `targets` as they are. Over it, refuses every addition and nothing else: the subjects
/// still desired that some live binding of the mapping already holds, the targets that
/// already exist (still desired), and the new subjects it withholds. A removal is never
/// affected (whatever leaves `subjects` leaves the result), and a new namespace a
/// selector matches gets nothing until the mapping fits.
///
/// All or nothing rather than "fill up to the budget": which new members got in would
/// depend on the order of names, and a member who can't tell why a colleague got access
/// and they didn't is worse off than one told the mapping is over budget.
fn budget(
    settings: &Settings,
    live: &[&ExistingBinding],
    subjects: Vec<Subject>,
    targets: Vec<TargetKey>,
    cfg: &ResolvedSubjects,
    groups: usize,
    outcome: &mut MappingOutcome,
) -> (Vec<Subject>, Vec<TargetKey>, HashSet<Subject>) {
    let total = fan_out_total(subjects.len(), targets.len());
    if settings.max_fanout == 0 || total <= settings.max_fanout {
        return (subjects, targets, HashSet::new());
    }
    let current = current_subjects(live);
    let existing: HashSet<(BindingKind, Option<&str>, &RoleRef)> = live
        .iter()
        .map(|b| (b.kind, b.namespace.as_deref(), &b.role_ref))
        .collect();
    let asked = (subjects.len(), targets.len());
    let (kept, withheld): (Vec<Subject>, Vec<Subject>) =
        subjects.into_iter().partition(|s| current.contains(s));
    let (kept_targets, new_targets): (Vec<TargetKey>, Vec<TargetKey>) = targets
        .into_iter()
        .partition(|(kind, ns, role)| existing.contains(&(*kind, ns.as_deref(), role)));
    let budget = settings.max_fanout;

    // Stable while the mapping stays over budget (no counts that move with every member),
    // so it makes one Event per transition; the numbers go in a note.
    let advice = if cfg.binds_users() {
        "bind Group subjects (spec.subjects.kind: Group, one subject per group) or narrow the namespaces"
    } else {
        "narrow the namespaces or split the mapping"
    };
    let msg = format!(
        "fan-out over budget: subjects × bindings would exceed {budget} (the operator's --max-fanout), so new subjects and namespaces are not bound until it fits; removals still apply; {advice}"
    );
    outcome.events.push(warning(Reason::FanOutExceeded, &msg));
    outcome.problems.push(problem(Reason::FanOutExceeded, msg));
    let fan = FanOut {
        budget,
        subjects: asked.0,
        bindings: asked.1,
        withheld_subjects: withheld.len(),
        withheld_bindings: new_targets
            .into_iter()
            .map(|(_, ns, role)| (ns, role))
            .collect(),
    };
    let mut note = format!(
        "fan-out {} subject(s) × {} binding(s) = {total} > {budget}: {} new subject(s) and {} new binding(s) withheld",
        fan.subjects,
        fan.bindings,
        fan.withheld_subjects,
        fan.withheld_bindings.len()
    );
    if !fan.withheld_bindings.is_empty() {
        note.push_str(&format!(" ({})", fan.withheld_places()));
    }
    if cfg.kind == SubjectKind::User {
        note.push_str(&format!(
            "; as Group subjects: {groups} × {} = {}",
            fan.bindings,
            fan_out_total(groups, fan.bindings)
        ));
    }
    outcome.notes.push(note);
    outcome.fan_out = Some(fan);
    (kept, kept_targets, withheld.into_iter().collect())
}

/// The logical bindings a spec asks for, deduplicated and sorted; records spec problems.
fn targets(
    settings: &Settings,
    idx: &Index<'_>,
    m: &MappingInput,
    f: &mut SpecFindings,
) -> Vec<TargetKey> {
    let mut wanted: BTreeSet<TargetKey> = BTreeSet::new();
    if m.spec.groups().is_empty() {
        f.invalid.push("spec.groups is empty".into());
    }
    match (&m.key, &m.spec) {
        (MappingKey::Namespaced { namespace, .. }, MappingSpec::Namespaced(spec)) => {
            if spec.role_ref.name.is_empty() {
                f.invalid.push("spec.roleRef.name is empty".into());
            } else if settings.protected_namespaces.contains(namespace) {
                f.refused_scopes.insert(format!(
                    "namespace {namespace} is protected: kube-scim binds nothing there unless the operator lists it"
                ));
            } else if !idx
                .namespaces
                .get(namespace.as_str())
                .is_some_and(|n| n.terminating)
            {
                // Only a terminating namespace is skipped: an unknown one is cache lag (the mapping lives there).
                wanted.insert((
                    BindingKind::RoleBinding,
                    Some(namespace.clone()),
                    spec.role_ref.clone(),
                ));
            }
        }
        (MappingKey::Cluster { .. }, MappingSpec::Cluster(spec)) => {
            if spec.cluster_roles.is_empty() && spec.namespace_roles.is_empty() {
                f.invalid
                    .push("spec sets neither clusterRoles nor namespaceRoles".into());
            }
            for (i, role) in spec.cluster_roles.iter().enumerate() {
                if role.is_empty() {
                    f.invalid.push(format!("spec.clusterRoles[{i}] is empty"));
                    continue;
                }
                if !settings.may_bind_cluster_wide(role) {
                    f.refused_scopes.insert(format!(
                        "ClusterRole {role} may not be bound cluster-wide: the operator allows {} there (bind it per namespace with namespaceRoles instead)",
                        settings.cluster_wide_roles.join(", ")
                    ));
                    continue;
                }
                wanted.insert((BindingKind::ClusterRoleBinding, None, cluster_role(role)));
            }
            for (i, nr) in spec.namespace_roles.iter().enumerate() {
                if nr.cluster_role.is_empty() {
                    f.invalid
                        .push(format!("spec.namespaceRoles[{i}].clusterRole is empty"));
                    continue;
                }
                if nr.namespaces.is_empty() && nr.namespace_selector.is_none() {
                    f.invalid.push(format!(
                        "spec.namespaceRoles[{i}] sets neither namespaces nor namespaceSelector"
                    ));
                    continue;
                }
                let role = cluster_role(&nr.cluster_role);
                for ns in &nr.namespaces {
                    if settings.protected_namespaces.contains(ns) {
                        f.refused_scopes.insert(format!(
                            "namespace {ns} is protected: kube-scim binds nothing there unless the operator lists it"
                        ));
                        continue;
                    }
                    match idx.namespaces.get(ns.as_str()) {
                        None => {
                            f.missing_namespaces.insert(ns.clone());
                        }
                        Some(n) if n.terminating => {}
                        Some(_) => {
                            wanted.insert((
                                BindingKind::RoleBinding,
                                Some(ns.clone()),
                                role.clone(),
                            ));
                        }
                    }
                }
                if let Some(sel) = &nr.namespace_selector {
                    if let Err(e) = validate_selector(sel) {
                        f.bad_selectors
                            .push(format!("spec.namespaceRoles[{i}].namespaceSelector: {e}"));
                        continue;
                    }
                    for n in &idx.namespaces_sorted {
                        if !n.terminating && selector_matches(sel, &n.labels) {
                            if settings.protected_namespaces.contains(&n.name) {
                                f.skipped_namespaces.insert(n.name.clone());
                                continue;
                            }
                            wanted.insert((
                                BindingKind::RoleBinding,
                                Some(n.name.clone()),
                                role.clone(),
                            ));
                        }
                    }
                }
            }
        }
        (MappingKey::Namespaced { .. }, MappingSpec::Cluster(_)) => {
            f.invalid
                .push("a GroupRoleMapping key carries a ClusterGroupRoleMapping spec".into());
        }
        (MappingKey::Cluster { .. }, MappingSpec::Namespaced(_)) => {
            f.invalid
                .push("a ClusterGroupRoleMapping key carries a GroupRoleMapping spec".into());
        }
    }

    let allow_protected = m.spec.allow_protected_roles();
    let mut out = Vec::with_capacity(wanted.len());
    for target in wanted {
        let (_, ns, role) = &target;
        if settings.is_protected(role) && !allow_protected {
            f.refused_roles.insert(role.name.clone());
            continue;
        }
        let exists = match role.kind {
            RoleKind::ClusterRole => idx.cluster_roles.contains(&role.name),
            RoleKind::Role => ns
                .as_ref()
                .is_some_and(|ns| idx.roles.contains(&(ns.clone(), role.name.clone()))),
        };
        if !exists {
            f.missing_roles.insert(match ns {
                Some(ns) if role.kind == RoleKind::Role => format!("Role {ns}/{}", role.name),
                _ => format!("{} {}", naming::role_kind_str(role.kind), role.name),
            });
        }
        out.push(target);
    }
    out
}

/// The groups a spec names, deduplicated by id; records unknown and malformed refs.
fn resolve_groups(idx: &Index<'_>, refs: &[GroupRef], f: &mut SpecFindings) -> Vec<usize> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in refs.iter().enumerate() {
        let (found, label) = match (r.display_name.as_deref(), r.external_id.as_deref()) {
            (Some(d), None) if !d.is_empty() => {
                (idx.groups_by_name.get(d), format!("displayName {d:?}"))
            }
            (None, Some(e)) if !e.is_empty() => (
                idx.groups_by_external_id.get(e),
                format!("externalId {e:?}"),
            ),
            _ => {
                f.invalid.push(format!(
                    "spec.groups[{i}] must set exactly one of displayName and externalId"
                ));
                continue;
            }
        };
        match found {
            Some(groups) => {
                for gi in groups {
                    if seen.insert(*gi) {
                        out.push(*gi);
                    }
                }
            }
            None => f.missing_groups.push(label),
        }
    }
    out
}

/// The mapping's subjects.
struct ResolvedMembers {
    /// Sorted, unique.
    subjects: Vec<Subject>,
    /// About members and groups that were skipped; informational.
    notes: Vec<String>,
    /// Users and groups whose subject name is unsafe (see [`check_subject_name`]): never
    /// bound, and reported as a problem so a person looks at them.
    refused: Vec<String>,
}

fn resolve_subjects(cfg: &ResolvedSubjects, groups: &[usize], idx: &Index<'_>) -> ResolvedMembers {
    let mut subjects = Vec::new();
    let mut notes = Vec::new();
    let mut refused = Vec::new();
    if cfg.binds_groups() {
        let mut skipped = Vec::new();
        for g in groups.iter().map(|gi| idx.groups[*gi]) {
            match cfg.group_subject(g) {
                Named::Bound(name) => subjects.push(Subject::group(name)),
                Named::Refused(name, why) => refused.push(refusal(
                    format!("group {:?}", g.display_name),
                    cfg.group_attribute_name(),
                    &name,
                    why,
                )),
                Named::Missing => skipped.push(g.display_name.as_str()),
            }
        }
        if !skipped.is_empty() {
            notes.push(format!(
                "{} group(s) skipped for lacking {}: {}",
                skipped.len(),
                cfg.group_attribute_name(),
                examples(&skipped)
            ));
        }
    }
    if cfg.binds_users() {
        let mut seen = vec![false; idx.users.len()];
        let mut unknown: HashSet<&str> = HashSet::new();
        let mut inactive = 0usize;
        let mut no_attr = Vec::new();
        for &gi in groups {
            unknown.extend(idx.unknown_members[gi].iter().copied());
            for &ui in &idx.members[gi] {
                if std::mem::replace(&mut seen[ui], true) {
                    continue;
                }
                let u = idx.users[ui];
                if !u.active {
                    inactive += 1;
                    continue;
                }
                match cfg.user_subject(u) {
                    Named::Bound(name) => subjects.push(Subject::user(name)),
                    Named::Refused(name, why) => refused.push(refusal(
                        format!("user {}", u.id),
                        cfg.user_attribute_name(),
                        &name,
                        why,
                    )),
                    Named::Missing => no_attr.push(u.id.as_str()),
                }
            }
        }
        let unknown = unknown.len();
        if !no_attr.is_empty() {
            no_attr.sort_unstable();
            notes.push(format!(
                "{} member(s) skipped for lacking {}: {}",
                no_attr.len(),
                cfg.user_attribute_name(),
                examples(&no_attr)
            ));
        }
        if inactive > 0 {
            notes.push(format!("{inactive} inactive member(s) not bound"));
        }
        if unknown > 0 {
            notes.push(format!("{unknown} member id(s) not found as ScimUser"));
        }
    }
    subjects.sort_unstable();
    subjects.dedup();
    refused.sort_unstable();
    ResolvedMembers {
        subjects,
        notes,
        refused,
    }
}

fn examples(items: &[&str]) -> String {
    let mut s = items.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(", …");
    }
    s
}

// ---------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------

/// Checks what the API server would: In/NotIn need values, Exists/DoesNotExist must have
/// none, no other operators, no empty keys.
fn validate_selector(sel: &LabelSelector) -> Result<(), String> {
    for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
        let has_values = r.values.as_ref().is_some_and(|v| !v.is_empty());
        if r.key.is_empty() {
            return Err(format!("matchExpressions[{i}].key is empty"));
        }
        match r.operator.as_str() {
            "In" | "NotIn" if !has_values => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} needs values",
                    r.operator
                ))
            }
            "Exists" | "DoesNotExist" if has_values => {
                return Err(format!(
                    "matchExpressions[{i}]: operator {} takes no values",
                    r.operator
                ))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(format!("matchExpressions[{i}]: unknown operator {other:?}")),
        }
    }
    Ok(())
}

/// Kubernetes semantics: all requirements must hold; an empty selector matches everything;
/// NotIn holds when the key is absent. Call only on a validated selector.
fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel.match_expressions.iter().flatten().all(|r| {
            let value = labels.get(&r.key);
            let in_values = || value.is_some_and(|v| r.values.iter().flatten().any(|x| x == v));
            match r.operator.as_str() {
                "In" => in_values(),
                "NotIn" => !in_values(),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn cluster_role(name: &str) -> RoleRef {
    RoleRef {
        kind: RoleKind::ClusterRole,
        name: name.to_owned(),
    }
}

/// Longest summary column (groups, roles) before it is shortened to "a, b, +N".
pub const MAX_COLUMN: usize = 48;

/// Items joined by ", ", as many as fit in [`MAX_COLUMN`] characters, then "+N" for
/// the rest (at least the first item, itself cut if needed).
fn shorten_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let rest = items.len() - i - 1;
        let more = if rest > 0 {
            format!(", +{rest}").len()
        } else {
            0
        };
        let sep = if i == 0 { 0 } else { 2 };
        if i > 0 && out.len() + sep + item.len() + more > MAX_COLUMN {
            out.push_str(&format!(", +{}", items.len() - i));
            return out;
        }
        if i > 0 {
            out.push_str(", ");
        }
        if i == 0 && item.chars().count() > MAX_COLUMN {
            out.extend(item.chars().take(MAX_COLUMN - 3));
            out.push_str("...");
        } else {
            out.push_str(item);
        }
    }
    out
}

/// The groups of a spec as a column: displayName, else externalId.
fn groups_summary(groups: &[GroupRef]) -> String {
    shorten_list(
        groups
            .iter()
            .filter_map(|g| g.display_name.as_deref().or(g.external_id.as_deref())),
    )
}

/// The roles of a spec as a column: the role name; a ClusterGroupRoleMapping's
/// cluster-wide roles, then its per-namespace roles marked `(ns)`, without repeats.
fn roles_summary(spec: &MappingSpec) -> String {
    match spec {
        MappingSpec::Namespaced(s) => shorten_list([s.role_ref.name.as_str()]),
        MappingSpec::Cluster(s) => {
            let mut seen = BTreeSet::new();
            let names: Vec<String> = s
                .cluster_roles
                .iter()
                .cloned()
                .chain(
                    s.namespace_roles
                        .iter()
                        .map(|r| format!("{} (ns)", r.cluster_role)),
                )
                .filter(|n| seen.insert(n.clone()))
                .collect();
            shorten_list(names.iter().map(String::as_str))
        }
    }
}

/// `ClusterRole/edit` or `Role/deployer`, as in `BindingStatus.role`.
fn role_display(role: &RoleRef) -> String {
    format!("{}/{}", naming::role_kind_str(role.kind), role.name)
}

/// A binding object as (kind, namespace, role, name, subject count).
type PartInfo<'a> = (
    BindingKind,
    &'a Option<String>,
    &'a RoleRef,
    &'a String,
    usize,
);

fn existing_part(b: &ExistingBinding) -> PartInfo<'_> {
    (b.kind, &b.namespace, &b.role_ref, &b.name, b.subjects.len())
}

/// One status entry per logical binding, sorted: its first part's name, the part count
/// and the subjects of all parts. Per part, a mapping reaching 100 namespaces with a
/// 50,000-member group would list thousands of entries and rewrite them all on every
/// membership change.
fn binding_statuses<'a>(parts: impl Iterator<Item = PartInfo<'a>>) -> Vec<BindingStatus> {
    type Key<'k> = (BindingKind, &'k Option<String>, &'k RoleRef);
    let mut by_target: BTreeMap<Key<'a>, (BindingStatus, u32)> = BTreeMap::new();
    for (kind, namespace, role, name, subjects) in parts {
        let (entry, count) = by_target.entry((kind, namespace, role)).or_insert_with(|| {
            let status = BindingStatus {
                kind: kind.as_str().to_owned(),
                namespace: namespace.clone(),
                name: name.clone(),
                role: role_display(role),
                parts: None,
                subjects: 0,
            };
            (status, 0)
        });
        // The unsuffixed part 0 sorts first.
        if *name < entry.name {
            entry.name = name.clone();
        }
        entry.subjects = entry.subjects.saturating_add(count_u32(subjects));
        *count += 1;
    }
    let mut out: Vec<BindingStatus> = by_target
        .into_values()
        .map(|(status, count)| BindingStatus {
            parts: (count > 1).then_some(count),
            ..status
        })
        .collect();
    out.sort();
    out
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn problem(reason: Reason, message: String) -> Problem {
    Problem { reason, message }
}

fn warning(reason: Reason, note: &str) -> PlanEvent {
    PlanEvent {
        type_: EventType::Warning,
        reason: reason.as_str().to_owned(),
        note: note.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::NamespaceRole;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn every_reason_is_listed_once_in_severity_order() {
        // No wildcard: a new variant stops this compiling until it is added here and to
        // `Reason::ALL` (the metric would otherwise never report it).
        let listed = |r: Reason| match r {
            Reason::Reconciled
            | Reason::NamespaceNotFound
            | Reason::RoleNotFound
            | Reason::GroupNotFound
            | Reason::SubjectRefused
            | Reason::RemovalHeld
            | Reason::FanOutExceeded
            | Reason::BindingRefused
            | Reason::ProtectedRoleRefused
            | Reason::ScopeRefused
            | Reason::InvalidSelector
            | Reason::InvalidSpec
            | Reason::Expired => Reason::ALL.contains(&r),
        };
        assert!(Reason::ALL.iter().all(|r| listed(*r)));
        assert!(
            Reason::ALL.windows(2).all(|w| w[0] < w[1]),
            "sorted, no repeats"
        );
        let names: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    // ----- fixtures ---------------------------------------------------------------------

    fn user(id: &str) -> UserInput {
        UserInput {
            id: id.into(),
            user_name: format!("{id}@example.com"),
            external_id: Some(format!("ext-{id}")),
            work_email: Some(format!("{id}@work.example")),
            active: true,
        }
    }

    fn group(id: &str, members: &[&str]) -> GroupInput {
        GroupInput {
            id: format!("id-{id}"),
            display_name: id.into(),
            external_id: Some(format!("gx-{id}")),
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> NamespaceInput {
        NamespaceInput {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminating: false,
        }
    }

    fn by_name(n: &str) -> GroupRef {
        GroupRef {
            display_name: Some(n.into()),
            external_id: None,
        }
    }

    fn by_ext(e: &str) -> GroupRef {
        GroupRef {
            display_name: None,
            external_id: Some(e.into()),
        }
    }

    fn role(name: &str) -> RoleRef {
        RoleRef {
            kind: RoleKind::Role,
            name: name.into(),
        }
    }

    fn ns_key(ns: &str, name: &str) -> MappingKey {
        MappingKey::Namespaced {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn c_key(name: &str) -> MappingKey {
        MappingKey::Cluster { name: name.into() }
    }

    fn grm(ns: &str, name: &str, groups: Vec<GroupRef>, role_ref: RoleRef) -> MappingInput {
        MappingInput {
            key: ns_key(ns, name),
            generation: Some(3),
            observed_generation: None,
            spec: MappingSpec::Namespaced(GroupRoleMappingSpec {
                groups,
                role_ref,
                subjects: None,
                allow_protected_roles: false,
                expires_at: None,
            }),
            confirm_annotation: None,
            deleting: false,
        }
    }

    fn cgrm(
        name: &str,
        groups: Vec<GroupRef>,
        cluster_roles: &[&str],
        namespace_roles: Vec<NamespaceRole>,
    ) -> MappingInput {
        MappingInput {
            key: c_key(name),
            generation: Some(1),
            observed_generation: None,
            spec: MappingSpec::Cluster(ClusterGroupRoleMappingSpec {
                groups,
                cluster_roles: cluster_roles.iter().map(|r| r.to_string()).collect(),
                namespace_roles,
                subjects: None,
                allow_protected_roles: false,
                expires_at: None,
            }),
            confirm_annotation: None,
            deleting: false,
        }
    }

    fn ns_role(role: &str, namespaces: &[&str], selector: Option<LabelSelector>) -> NamespaceRole {
        NamespaceRole {
            cluster_role: role.into(),
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            namespace_selector: selector,
        }
    }

    fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        }
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn match_exprs(exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(exprs),
        }
    }

    fn set_subjects(m: &mut MappingInput, o: SubjectOptions) {
        match &mut m.spec {
            MappingSpec::Namespaced(s) => s.subjects = Some(o),
            MappingSpec::Cluster(s) => s.subjects = Some(o),
        }
    }

    fn allow_protected(m: &mut MappingInput) {
        match &mut m.spec {
            MappingSpec::Namespaced(s) => s.allow_protected_roles = true,
            MappingSpec::Cluster(s) => s.allow_protected_roles = true,
        }
    }

    /// alice, bob, carol active, dave inactive, erin in no group; devs = alice, bob, dave and
    /// an unknown id; ops = carol, alice.
    fn world() -> PlanInput {
        let mut dave = user("dave");
        dave.active = false;
        let mut dying = namespace("dying", &[("team", "pay")]);
        dying.terminating = true;
        PlanInput {
            mappings: vec![],
            groups: vec![
                group("devs", &["alice", "bob", "dave", "ghost"]),
                group("ops", &["carol", "alice"]),
            ],
            users: vec![
                user("alice"),
                user("bob"),
                user("carol"),
                dave,
                user("erin"),
            ],
            namespaces: vec![
                namespace("payments", &[("team", "pay"), ("env", "prod")]),
                namespace("shop", &[("team", "shop"), ("env", "dev")]),
                namespace("tools", &[]),
                dying,
            ],
            cluster_roles: [
                "edit",
                "view",
                "admin",
                "cluster-admin",
                "system:aggregate-to-edit",
            ]
            .iter()
            .map(|r| r.to_string())
            .collect(),
            roles: [("payments".to_string(), "deployer".to_string())]
                .into_iter()
                .collect(),
            existing: vec![],
            now: "2026-06-01T12:00:00Z".parse().unwrap(),
        }
    }

    fn expire(m: &mut MappingInput, at: &str) {
        let at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            at.parse().unwrap(),
        ));
        match &mut m.spec {
            MappingSpec::Namespaced(s) => s.expires_at = at,
            MappingSpec::Cluster(s) => s.expires_at = at,
        }
    }

    #[test]
    fn an_expired_mapping_binds_nothing_and_a_moved_expiry_renews_it() {
        let mut w = world();
        let mut m = grm(
            "payments",
            "temp",
            vec![by_name("devs")],
            cluster_role("edit"),
        );
        let other = cgrm("lasting", vec![by_name("ops")], &["view"], vec![]);
        // Expires in 3 s: bound, and the plan asks to be run again at the expiry.
        expire(&mut m, "2026-06-01T12:00:03Z");
        w.mappings = vec![m.clone(), other.clone()];
        let p = run(&w);
        let st = status(&p, &m.key);
        assert!(st.ready, "{st:?}");
        assert!(
            st.message.contains("expires at 2026-06-01T12:00:03Z"),
            "{st:?}"
        );
        assert_eq!(p.next_expiry, Some("2026-06-01T12:00:03Z".parse().unwrap()));
        w.existing = applied(&p);
        let key = m.key.clone();
        let mine = |p: &Plan| p.bindings.iter().filter(|b| b.mapping == key).count();
        assert_eq!(mine(&p), 1);
        assert!(p.user_status["alice"]
            .access()
            .iter()
            .any(|g| g.role_name == "edit"));

        // At the expiry: no bindings, the existing one pruned without the mass-removal
        // guard, Ready=False/Expired with an Event; the other mapping is untouched.
        w.now = "2026-06-01T12:00:03Z".parse().unwrap();
        let p = run(&w);
        let st = status(&p, &m.key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::Expired);
        assert!(st.held_removals.is_none());
        assert_eq!(st.subject_count, Some(0));
        assert!(st.bindings.is_empty());
        assert!(st
            .events
            .iter()
            .any(|e| e.reason == "Expired" && e.type_ == EventType::Normal));
        assert_eq!(mine(&p), 0);
        let pruned: Vec<&str> = p.prune.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(pruned.len(), 1, "{pruned:?}");
        assert!(w
            .existing
            .iter()
            .any(|b| b.name == pruned[0] && b.mapping.as_ref() == Some(&m.key)));
        assert!(!p.user_status["alice"]
            .access()
            .iter()
            .any(|g| g.role_name == "edit"));
        assert!(status(&p, &other.key).ready);
        assert_eq!(p.next_expiry, None, "nothing expires any more");

        // Renewed: moving the time binds again.
        w.existing = applied(&p);
        expire(&mut m, "2026-06-02T12:00:00Z");
        w.mappings = vec![m.clone(), other.clone()];
        let p = run(&w);
        assert!(status(&p, &m.key).ready);
        assert_eq!(mine(&p), 1);
        assert_eq!(p.next_expiry, Some("2026-06-02T12:00:00Z".parse().unwrap()));
    }

    #[test]
    fn the_nearest_future_expiry_wakes_the_controller() {
        let mut w = world();
        let mut a = cgrm("a", vec![by_name("ops")], &["view"], vec![]);
        let mut b = cgrm("b", vec![by_name("ops")], &["view"], vec![]);
        let mut c = cgrm("c", vec![by_name("ops")], &["view"], vec![]);
        expire(&mut a, "2026-06-01T13:00:00Z");
        expire(&mut b, "2026-06-01T12:30:00Z");
        expire(&mut c, "2026-06-01T11:00:00Z"); // past: not a wake-up
        w.mappings = vec![a, b, c.clone()];
        let p = run(&w);
        assert_eq!(p.next_expiry, Some("2026-06-01T12:30:00Z".parse().unwrap()));
        assert_eq!(status(&p, &c.key).reason, Reason::Expired);
    }

    #[test]
    fn columns_summarize_groups_roles_and_subjects() {
        let mut w = world();
        let m = grm(
            "payments",
            "devs",
            vec![by_name("devs"), by_name("ops")],
            cluster_role("edit"),
        );
        let c = cgrm(
            "wide",
            vec![by_name("ops")],
            &["view"],
            vec![
                ns_role("edit", &["payments"], None),
                ns_role("edit", &["shop"], None),
            ],
        );
        w.mappings = vec![m.clone(), c.clone()];
        let p = run(&w);
        let st = status(&p, &m.key);
        assert_eq!(st.groups, "devs, ops");
        assert_eq!(st.roles, "edit");
        // alice, bob (devs; dave inactive, ghost unknown) and carol (ops): alice once.
        assert_eq!(st.subject_count, Some(3));
        let st = status(&p, &c.key);
        assert_eq!(st.roles, "view, edit (ns)");
        assert_eq!(st.subject_count, Some(2));

        let many: Vec<String> = (0..20).map(|i| format!("group-number-{i}")).collect();
        let s = shorten_list(many.iter().map(String::as_str));
        assert!(s.len() <= MAX_COLUMN, "{s}");
        assert!(
            s.starts_with("group-number-0, ") && s.ends_with(", +18"),
            "{s}"
        );
        let long = "x".repeat(100);
        let s = shorten_list([long.as_str(), "b"]);
        assert!(s.starts_with("xxx") && s.contains("..., +1"), "{s}");
        assert_eq!(shorten_list([]), "");
    }

    /// Any ClusterRole may be bound cluster-wide here; the scope rules have their own tests.
    fn run(input: &PlanInput) -> Plan {
        let settings = Settings {
            cluster_wide_roles: vec!["*".into()],
            ..Settings::default()
        };
        plan(&settings, input)
    }

    #[test]
    fn protected_namespaces_are_never_bound_and_cluster_wide_is_view_only() {
        let mut w = world();
        w.namespaces
            .push(namespace("kube-system", &[("team", "pay")]));
        w.namespaces.push(namespace("kube-public", &[]));
        let into_system = grm(
            "kube-system",
            "sys",
            vec![by_name("ops")],
            cluster_role("view"),
        );
        let broad = cgrm(
            "broad",
            vec![by_name("ops")],
            &["view", "edit"],
            vec![
                ns_role("edit", &[], Some(match_labels(&[("team", "pay")]))),
                ns_role("view", &["kube-public"], None),
            ],
        );
        w.mappings = vec![into_system.clone(), broad.clone()];
        let p = plan(&Settings::default(), &w);

        assert!(of(&p, &into_system.key).is_empty());
        let st = status(&p, &into_system.key);
        assert_eq!(st.reason, Reason::ScopeRefused);
        assert!(
            st.message.contains("namespace kube-system is protected"),
            "{}",
            st.message
        );
        assert!(st.events.iter().any(|e| e.reason == "ScopeRefused"));

        let targets: BTreeSet<(BindingKind, Option<String>, String)> = of(&p, &broad.key)
            .iter()
            .map(|b| (b.kind, b.namespace.clone(), b.role_ref.name.clone()))
            .collect();
        assert_eq!(
            targets,
            [
                (
                    BindingKind::RoleBinding,
                    Some("dying".to_owned()),
                    "edit".to_owned()
                ),
                (
                    BindingKind::RoleBinding,
                    Some("payments".to_owned()),
                    "edit".to_owned()
                ),
                (BindingKind::ClusterRoleBinding, None, "view".to_owned()),
            ]
            .into_iter()
            .filter(|t| t.1.as_deref() != Some("dying"))
            .collect()
        );
        let st = status(&p, &broad.key);
        assert_eq!(st.reason, Reason::ScopeRefused);
        assert!(
            st.message
                .contains("ClusterRole edit may not be bound cluster-wide"),
            "{}",
            st.message
        );
        assert!(
            st.message.contains("namespace kube-public is protected"),
            "{}",
            st.message
        );
        assert!(
            st.message
                .contains("skips protected namespaces: kube-system"),
            "{}",
            st.message
        );

        // The operator can list namespaces and cluster-wide roles explicitly.
        let open = Settings {
            protected_namespaces: BTreeSet::new(),
            cluster_wide_roles: vec!["view".into(), "ed*".into()],
            ..Settings::default()
        };
        let p = plan(&open, &w);
        assert!(status(&p, &into_system.key).ready);
        assert!(status(&p, &broad.key).ready, "{:?}", status(&p, &broad.key));
    }

    fn of<'p>(p: &'p Plan, key: &MappingKey) -> Vec<&'p DesiredBinding> {
        p.bindings.iter().filter(|b| &b.mapping == key).collect()
    }

    fn names(b: &DesiredBinding) -> Vec<&str> {
        b.subjects.iter().map(|s| s.name.as_str()).collect()
    }

    fn status<'p>(p: &'p Plan, key: &MappingKey) -> &'p MappingOutcome {
        &p.mapping_status[key]
    }

    /// What the cluster holds after the plan is applied, read back like the I/O layer does.
    fn applied(p: &Plan) -> Vec<ExistingBinding> {
        p.bindings
            .iter()
            .map(|b| ExistingBinding {
                kind: b.kind,
                namespace: b.namespace.clone(),
                name: b.name.clone(),
                role_ref: b.role_ref.clone(),
                mapping: naming::mapping_key_from_labels(&b.labels, &b.annotations),
                subjects: Arc::clone(&b.subjects),
            })
            .collect()
    }

    fn ids(p: &Plan) -> BTreeSet<(BindingKind, Option<String>, String)> {
        p.bindings
            .iter()
            .map(|b| (b.kind, b.namespace.clone(), b.name.clone()))
            .collect()
    }

    // ----- subjects -----------------------------------------------------------------------

    #[test]
    fn user_subjects_are_active_known_members_by_user_name() {
        let mut w = world();
        w.mappings = vec![grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        )];
        let p = run(&w);
        let key = ns_key("payments", "devs");
        let bs = of(&p, &key);
        assert_eq!(bs.len(), 1);
        let b = bs[0];
        assert_eq!(b.kind, BindingKind::RoleBinding);
        assert_eq!(b.namespace.as_deref(), Some("payments"));
        assert_eq!(b.role_ref, cluster_role("edit"));
        assert_eq!(names(b), ["alice@example.com", "bob@example.com"]);
        assert!(b.subjects.iter().all(|s| s.kind == SubjectType::User));
        let st = status(&p, &key);
        assert!(st.ready, "{st:?}");
        assert_eq!(st.reason, Reason::Reconciled);
        assert_eq!(st.observed_generation, Some(3));
        assert!(
            st.message.contains("1 inactive member(s) not bound"),
            "{}",
            st.message
        );
        assert!(
            st.message.contains("1 member id(s) not found"),
            "{}",
            st.message
        );
        assert_eq!(st.bindings.len(), 1);
        assert_eq!(st.bindings[0].subjects, 2);
        assert_eq!(st.bindings[0].role, "ClusterRole/edit");
        assert!(p.prune.is_empty());
    }

    #[test]
    fn group_subjects_use_group_attribute_and_prefix() {
        let mut w = world();
        let mut m = grm(
            "payments",
            "devs",
            vec![by_name("devs"), by_name("ops")],
            cluster_role("edit"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                kind: Some(SubjectKind::Group),
                group_prefix: Some("oidc:".into()),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = run(&w);
        let b = of(&p, &m.key)[0];
        assert_eq!(
            &b.subjects[..],
            [
                Subject::group("oidc:gx-devs"),
                Subject::group("oidc:gx-ops")
            ]
        );

        set_subjects(
            &mut m,
            SubjectOptions {
                kind: Some(SubjectKind::Group),
                group_attribute: Some(GroupAttribute::DisplayName),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = run(&w);
        assert_eq!(
            &of(&p, &m.key)[0].subjects[..],
            [Subject::group("devs"), Subject::group("ops")]
        );
    }

    #[test]
    fn group_without_external_id_is_skipped_and_noted() {
        let mut w = world();
        w.groups[1].external_id = None;
        let mut m = grm(
            "payments",
            "devs",
            vec![by_name("devs"), by_name("ops")],
            cluster_role("edit"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                kind: Some(SubjectKind::Group),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = run(&w);
        assert_eq!(&of(&p, &m.key)[0].subjects[..], [Subject::group("gx-devs")]);
        let st = status(&p, &m.key);
        assert!(st.ready);
        assert!(
            st.message
                .contains("1 group(s) skipped for lacking externalId: ops"),
            "{}",
            st.message
        );
    }

    #[test]
    fn user_and_group_binds_both() {
        let mut w = world();
        let mut m = grm(
            "payments",
            "ops",
            vec![by_name("ops")],
            cluster_role("view"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                kind: Some(SubjectKind::UserAndGroup),
                user_prefix: Some("u:".into()),
                group_prefix: Some("g:".into()),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = run(&w);
        assert_eq!(
            &of(&p, &m.key)[0].subjects[..],
            [
                Subject::user("u:alice@example.com"),
                Subject::user("u:carol@example.com"),
                Subject::group("g:gx-ops"),
            ]
        );
    }

    #[test]
    fn reserved_and_unsafe_subject_names_are_never_bound_and_are_reported() {
        // The live hole: a SCIM client names a group `system:authenticated` and a user
        // `system:anonymous`. Bound as UserAndGroup, that would grant every identity.
        let mut w = world();
        let mut evil = group("evil", &["alice", "mallory", "long"]);
        evil.external_id = Some("system:authenticated".into());
        let mut mallory = user("mallory");
        mallory.user_name = "system:anonymous".into();
        let mut long = user("long");
        long.user_name = "x".repeat(400);
        w.users.extend([mallory, long]);
        w.groups.push(evil);
        let mut m = grm(
            "payments",
            "evil",
            vec![by_name("evil")],
            cluster_role("edit"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                kind: Some(SubjectKind::UserAndGroup),
                ..Default::default()
            },
        );
        // A prefix is part of the final name: "SYSTEM:" hides nothing, "oidc:" makes it safe.
        let mut prefixed = grm(
            "shop",
            "prefixed",
            vec![by_name("ops")],
            cluster_role("view"),
        );
        set_subjects(
            &mut prefixed,
            SubjectOptions {
                kind: Some(SubjectKind::UserAndGroup),
                user_prefix: Some("SYSTEM:".into()),
                group_prefix: Some("oidc:".into()),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone(), prefixed.clone()];
        let p = run(&w);

        for b in &p.bindings {
            for s in b.subjects.iter() {
                assert!(
                    check_subject_name(&s.name).is_ok(),
                    "{} bound {:?}",
                    b.name,
                    s
                );
            }
        }
        assert_eq!(
            &of(&p, &m.key)[0].subjects[..],
            [Subject::user("alice@example.com")]
        );
        let st = status(&p, &m.key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::SubjectRefused);
        assert!(
            st.message.contains("3 subject(s) refused"),
            "{}",
            st.message
        );
        assert!(
            st.message.contains("group \"evil\" (externalId"),
            "{}",
            st.message
        );
        assert!(
            st.message.contains("user mallory (userName"),
            "{}",
            st.message
        );
        assert!(st.message.contains("user long (userName"), "{}", st.message);
        assert!(
            st.message.contains("longer than 320 bytes"),
            "{}",
            st.message
        );
        assert!(st.message.len() < 2_000, "the long name is shortened");

        assert_eq!(
            &of(&p, &prefixed.key)[0].subjects[..],
            [Subject::group("oidc:gx-ops")]
        );
        assert_eq!(status(&p, &prefixed.key).reason, Reason::SubjectRefused);

        // Nobody is told they have access through a refused subject.
        assert!(p.user_status["mallory"].access().is_empty());
        assert!(p.user_status["long"].access().is_empty());
        assert!(!p.user_status["alice"].access().is_empty());
    }

    #[test]
    fn a_role_in_several_namespaces_is_one_grant_in_the_user_status() {
        let mut w = world();
        let m = cgrm(
            "ops",
            vec![by_name("ops")],
            &["view"],
            vec![
                ns_role("edit", &[], Some(match_labels(&[]))),
                ns_role("admin", &["payments"], None),
            ],
        );
        w.mappings = vec![m];
        let p = run(&w);
        let access = p.user_status["carol"].access();
        let summary: Vec<(&str, Option<&str>, Option<GrantScope>)> = access
            .iter()
            .map(|g| (g.role_name.as_str(), g.namespace.as_deref(), g.scope))
            .collect();
        assert_eq!(
            summary,
            [
                ("view", None, Some(GrantScope::Cluster)),
                ("edit", None, Some(GrantScope::SelectedNamespaces)),
                ("admin", Some("payments"), Some(GrantScope::Namespace)),
            ]
        );
    }

    #[test]
    fn user_attributes_and_missing_attribute() {
        let mut w = world();
        w.users[1].work_email = None; // bob
        let mut m = grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                user_attribute: Some(UserAttribute::Email),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = run(&w);
        assert_eq!(names(of(&p, &m.key)[0]), ["alice@work.example"]);
        let st = status(&p, &m.key);
        assert!(st.ready);
        assert!(
            st.message
                .contains("1 member(s) skipped for lacking email: bob"),
            "{}",
            st.message
        );
        // bob has no subject, so no grant either.
        assert!(p.user_status["bob"].access().is_empty());

        set_subjects(
            &mut m,
            SubjectOptions {
                user_attribute: Some(UserAttribute::ExternalId),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = run(&w);
        assert_eq!(names(of(&p, &m.key)[0]), ["ext-alice", "ext-bob"]);
    }

    #[test]
    fn mapping_options_override_settings_field_by_field() {
        let mut w = world();
        let settings = Settings {
            subjects: ResolvedSubjects {
                user_prefix: "sso:".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut m = grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                user_attribute: Some(UserAttribute::ExternalId),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = plan(&settings, &w);
        assert_eq!(names(of(&p, &m.key)[0]), ["sso:ext-alice", "sso:ext-bob"]);
    }

    #[test]
    fn duplicate_subjects_collapse() {
        let mut w = world();
        w.users[1].work_email = Some("alice@work.example".into()); // bob shares alice's email
        let mut m = grm(
            "payments",
            "all",
            vec![by_name("devs"), by_name("ops"), by_ext("gx-ops")],
            cluster_role("edit"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                user_attribute: Some(UserAttribute::Email),
                ..Default::default()
            },
        );
        w.mappings = vec![m.clone()];
        let p = run(&w);
        assert_eq!(
            names(of(&p, &m.key)[0]),
            ["alice@work.example", "carol@work.example"]
        );
    }

    #[test]
    fn removed_members_lose_their_subject() {
        let mut w = world();
        w.mappings = vec![grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        )];
        let before = run(&w);
        w.existing = applied(&before);
        w.groups[0].members.retain(|m| m != "bob");
        let p = run(&w);
        assert_eq!(
            names(of(&p, &ns_key("payments", "devs"))[0]),
            ["alice@example.com"]
        );
        assert!(p.prune.is_empty(), "same binding, updated in place");
    }

    // ----- targets ------------------------------------------------------------------------

    #[test]
    fn namespaced_mapping_binds_in_its_namespace_with_labels() {
        let mut w = world();
        w.mappings = vec![grm(
            "payments",
            "deployers",
            vec![by_name("ops")],
            role("deployer"),
        )];
        let p = run(&w);
        let key = ns_key("payments", "deployers");
        let b = of(&p, &key)[0];
        assert_eq!(b.role_ref, role("deployer"));
        assert!(
            b.name.starts_with("kube-scim.deployers.deployer-"),
            "{}",
            b.name
        );
        assert_eq!(b.labels["app.kubernetes.io/managed-by"], "kube-scim");
        assert_eq!(b.labels[naming::MAPPING_KIND_LABEL], "GroupRoleMapping");
        assert_eq!(b.labels[naming::MAPPING_NAME_LABEL], "deployers");
        assert_eq!(b.labels[naming::MAPPING_NAMESPACE_LABEL], "payments");
        assert_eq!(
            naming::mapping_key_from_labels(&b.labels, &b.annotations),
            Some(key.clone())
        );
        assert!(status(&p, &key).ready);
        assert_eq!(status(&p, &key).bindings[0].role, "Role/deployer");
    }

    #[test]
    fn cluster_mapping_binds_cluster_roles_and_namespace_union() {
        let mut w = world();
        w.mappings = vec![cgrm(
            "devs",
            vec![by_name("devs")],
            &["view"],
            vec![ns_role(
                "edit",
                &["tools", "dying"],
                Some(match_labels(&[("team", "pay")])),
            )],
        )];
        let p = run(&w);
        let key = c_key("devs");
        let bs = of(&p, &key);
        let got: Vec<(BindingKind, Option<&str>, &str)> = bs
            .iter()
            .map(|b| (b.kind, b.namespace.as_deref(), b.role_ref.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (BindingKind::RoleBinding, Some("payments"), "edit"),
                (BindingKind::RoleBinding, Some("tools"), "edit"),
                (BindingKind::ClusterRoleBinding, None, "view"),
            ]
        );
        assert!(bs[0].name.starts_with("kube-scim.c.devs.edit-"));
        assert_eq!(bs[0].name, bs[1].name, "same name in every namespace");
        assert!(!bs[0].labels.contains_key(naming::MAPPING_NAMESPACE_LABEL));
        let st = status(&p, &key);
        assert!(
            st.ready,
            "terminating namespaces are skipped silently: {st:?}"
        );
        assert_eq!(st.bindings.len(), 3);
    }

    #[test]
    fn missing_listed_namespace_is_reported_and_others_proceed() {
        let mut w = world();
        w.mappings = vec![cgrm(
            "devs",
            vec![by_name("devs")],
            &[],
            vec![ns_role("edit", &["shop", "nope"], None)],
        )];
        let p = run(&w);
        let key = c_key("devs");
        assert_eq!(of(&p, &key).len(), 1);
        let st = status(&p, &key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::NamespaceNotFound);
        assert!(
            st.message.contains("namespaces not found: nope"),
            "{}",
            st.message
        );
    }

    #[test]
    fn selector_expressions() {
        let labels: BTreeMap<String, String> = [("team", "pay"), ("env", "prod")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let yes = |s: LabelSelector| {
            assert!(validate_selector(&s).is_ok());
            selector_matches(&s, &labels)
        };
        assert!(
            yes(LabelSelector::default()),
            "empty selector matches everything"
        );
        assert!(yes(match_labels(&[("team", "pay")])));
        assert!(!yes(match_labels(&[("team", "pay"), ("env", "dev")])));
        assert!(yes(match_exprs(vec![expr("env", "In", &["dev", "prod"])])));
        assert!(!yes(match_exprs(vec![expr("env", "In", &["dev"])])));
        assert!(yes(match_exprs(vec![expr("env", "NotIn", &["dev"])])));
        assert!(
            yes(match_exprs(vec![expr("tier", "NotIn", &["x"])])),
            "NotIn holds for absent keys"
        );
        assert!(!yes(match_exprs(vec![expr("env", "NotIn", &["prod"])])));
        assert!(yes(match_exprs(vec![expr("team", "Exists", &[])])));
        assert!(!yes(match_exprs(vec![expr("tier", "Exists", &[])])));
        assert!(yes(match_exprs(vec![expr("tier", "DoesNotExist", &[])])));
        assert!(!yes(match_exprs(vec![
            expr("team", "DoesNotExist", &[]),
            expr("env", "Exists", &[])
        ])));

        for bad in [
            match_exprs(vec![expr("env", "In", &[])]),
            match_exprs(vec![expr("env", "NotIn", &[])]),
            match_exprs(vec![expr("env", "Exists", &["x"])]),
            match_exprs(vec![expr("env", "DoesNotExist", &["x"])]),
            match_exprs(vec![expr("env", "Gt", &["1"])]),
            match_exprs(vec![expr("", "Exists", &[])]),
        ] {
            assert!(validate_selector(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn selector_expressions_through_the_plan() {
        let mut w = world();
        let sel = match_exprs(vec![
            expr("env", "In", &["prod", "dev"]),
            expr("team", "NotIn", &["shop"]),
        ]);
        w.mappings = vec![cgrm(
            "devs",
            vec![by_name("devs")],
            &[],
            vec![ns_role("edit", &[], Some(sel))],
        )];
        let p = run(&w);
        let nss: Vec<_> = of(&p, &c_key("devs"))
            .iter()
            .map(|b| b.namespace.clone())
            .collect();
        assert_eq!(nss, [Some("payments".to_string())]);
    }

    #[test]
    fn invalid_selector_freezes_the_mapping() {
        let mut w = world();
        let good = cgrm(
            "devs",
            vec![by_name("devs")],
            &[],
            vec![ns_role("edit", &[], Some(match_labels(&[("team", "pay")])))],
        );
        w.mappings = vec![good.clone()];
        w.existing = applied(&run(&w));
        assert_eq!(w.existing.len(), 1);

        let mut bad = good.clone();
        bad.spec = MappingSpec::Cluster(ClusterGroupRoleMappingSpec {
            groups: vec![by_name("devs")],
            cluster_roles: vec![],
            namespace_roles: vec![ns_role(
                "edit",
                &["shop"],
                Some(match_exprs(vec![expr("env", "In", &[])])),
            )],
            subjects: None,
            allow_protected_roles: false,
            expires_at: None,
        });
        w.mappings = vec![bad];
        w.groups[0].members.clear(); // would otherwise remove everyone
        let p = run(&w);
        let st = status(&p, &c_key("devs"));
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::InvalidSelector);
        assert!(
            st.message.contains("namespaceRoles[0].namespaceSelector"),
            "{}",
            st.message
        );
        assert!(p.bindings.is_empty(), "nothing new is planned");
        assert!(p.prune.is_empty(), "nothing is removed");
        assert_eq!(st.bindings.len(), 1, "the kept binding is still reported");
    }

    #[test]
    fn missing_group_is_reported_and_found_groups_still_bound() {
        let mut w = world();
        w.mappings = vec![grm(
            "payments",
            "devs",
            vec![by_name("devs"), by_name("nope"), by_ext("gx-nope")],
            cluster_role("edit"),
        )];
        let p = run(&w);
        let key = ns_key("payments", "devs");
        assert_eq!(
            names(of(&p, &key)[0]),
            ["alice@example.com", "bob@example.com"]
        );
        let st = status(&p, &key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::GroupNotFound);
        assert!(
            st.message
                .contains(r#"groups not found: displayName "nope", externalId "gx-nope""#),
            "{}",
            st.message
        );
    }

    #[test]
    fn missing_role_is_still_bound_but_not_ready() {
        let mut w = world();
        w.mappings = vec![
            grm("payments", "a", vec![by_name("devs")], cluster_role("nope")),
            grm("shop", "b", vec![by_name("devs")], role("deployer")), // the Role lives in payments only
        ];
        let p = run(&w);
        for (key, text) in [
            (ns_key("payments", "a"), "ClusterRole nope"),
            (ns_key("shop", "b"), "Role shop/deployer"),
        ] {
            assert_eq!(of(&p, &key).len(), 1);
            let st = status(&p, &key);
            assert!(!st.ready);
            assert_eq!(st.reason, Reason::RoleNotFound);
            assert!(st.message.contains(text), "{}", st.message);
        }
    }

    #[test]
    fn protected_roles_are_refused_unless_allowed() {
        let mut w = world();
        let settings = Settings {
            protected_roles: ["admin".to_string()].into_iter().collect(),
            cluster_wide_roles: vec!["*".into()],
            ..Default::default()
        };
        let m = cgrm(
            "devs",
            vec![by_name("devs")],
            &["cluster-admin", "view"],
            vec![ns_role("admin", &["shop"], None)],
        );
        w.mappings = vec![
            m.clone(),
            grm(
                "payments",
                "x",
                vec![by_name("devs")],
                role("cluster-admin"),
            ),
        ];
        w.roles.insert(("payments".into(), "cluster-admin".into()));
        let p = plan(&settings, &w);
        let bs = of(&p, &m.key);
        assert_eq!(bs.len(), 1);
        assert_eq!(bs[0].role_ref, cluster_role("view"));
        let st = status(&p, &m.key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::ProtectedRoleRefused);
        assert!(
            st.message.contains("ClusterRole admin is protected"),
            "{}",
            st.message
        );
        assert!(
            st.message
                .contains("ClusterRole cluster-admin is protected"),
            "{}",
            st.message
        );
        assert_eq!(st.events.len(), 2);
        assert!(st.events.iter().all(|e| e.type_ == EventType::Warning));
        // A namespaced Role that happens to be named cluster-admin is not the ClusterRole.
        assert!(status(&p, &ns_key("payments", "x")).ready);

        let mut allowed = m.clone();
        allow_protected(&mut allowed);
        w.mappings = vec![allowed];
        let p = plan(&settings, &w);
        assert_eq!(of(&p, &m.key).len(), 3);
        assert!(status(&p, &m.key).ready);
    }

    #[test]
    fn invalid_specs_freeze_the_mapping() {
        let mut w = world();
        let good = grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        );
        w.mappings = vec![good.clone()];
        w.existing = applied(&run(&w));

        let mut both = good.clone();
        let mut neither = good.clone();
        let mut empty = good.clone();
        if let MappingSpec::Namespaced(s) = &mut both.spec {
            s.groups = vec![GroupRef {
                display_name: Some("devs".into()),
                external_id: Some("gx-devs".into()),
            }];
        }
        if let MappingSpec::Namespaced(s) = &mut neither.spec {
            s.groups = vec![by_name("devs"), GroupRef::default()];
        }
        if let MappingSpec::Namespaced(s) = &mut empty.spec {
            s.groups = vec![];
        }
        let mut mismatched = good.clone();
        mismatched.spec = cgrm("x", vec![by_name("devs")], &["view"], vec![]).spec;
        for (m, text) in [
            (both, "spec.groups[0] must set exactly one"),
            (neither, "spec.groups[1] must set exactly one"),
            (empty, "spec.groups is empty"),
            (mismatched, "carries a ClusterGroupRoleMapping spec"),
        ] {
            w.mappings = vec![m];
            let p = run(&w);
            let st = status(&p, &good.key);
            assert!(!st.ready);
            assert_eq!(st.reason, Reason::InvalidSpec);
            assert!(st.message.contains(text), "{}", st.message);
            assert!(p.bindings.is_empty() && p.prune.is_empty(), "frozen: {p:?}");
        }

        let mut w = world();
        w.mappings = vec![
            cgrm("none", vec![by_name("devs")], &[], vec![]),
            cgrm(
                "blank",
                vec![by_name("devs")],
                &[""],
                vec![ns_role("edit", &[], None)],
            ),
        ];
        let p = run(&w);
        assert!(status(&p, &c_key("none"))
            .message
            .contains("neither clusterRoles nor namespaceRoles"));
        let blank = &status(&p, &c_key("blank")).message;
        assert!(
            blank.contains("clusterRoles[0] is empty")
                && blank.contains("sets neither namespaces nor namespaceSelector"),
            "{blank}"
        );
        assert!(p.bindings.is_empty());
    }

    #[test]
    fn several_problems_report_the_most_severe_and_list_all() {
        let mut w = world();
        w.mappings = vec![cgrm(
            "devs",
            vec![by_name("devs"), by_name("nope")],
            &["cluster-admin", "missing-role"],
            vec![ns_role("edit", &["nowhere"], None)],
        )];
        let p = run(&w);
        let st = status(&p, &c_key("devs"));
        assert_eq!(st.reason, Reason::ProtectedRoleRefused);
        let reasons: Vec<Reason> = st.problems.iter().map(|p| p.reason).collect();
        assert_eq!(
            reasons,
            [
                Reason::ProtectedRoleRefused,
                Reason::GroupNotFound,
                Reason::RoleNotFound,
                Reason::NamespaceNotFound
            ]
        );
        for text in [
            "cluster-admin is protected",
            "groups not found",
            "roles not found",
            "namespaces not found",
        ] {
            assert!(st.message.contains(text), "{}", st.message);
        }
        assert!(st
            .message
            .starts_with("ClusterRole cluster-admin is protected"));
    }

    #[test]
    fn apply_layer_can_report_a_refused_binding() {
        let mut w = world();
        w.mappings = vec![grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        )];
        let mut p = run(&w);
        let st = p
            .mapping_status
            .get_mut(&ns_key("payments", "devs"))
            .unwrap();
        st.add_problem(
            Reason::BindingRefused,
            "RoleBinding payments/x: forbidden: attempt to grant extra privileges",
        );
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::BindingRefused);
        assert!(
            st.message.starts_with("RoleBinding payments/x: forbidden"),
            "{}",
            st.message
        );
    }

    #[test]
    fn zero_subjects_means_no_binding_but_ready() {
        let mut w = world();
        w.groups.push(group("empty", &[]));
        w.mappings = vec![grm(
            "payments",
            "e",
            vec![by_name("empty")],
            cluster_role("edit"),
        )];
        let p = run(&w);
        assert!(p.bindings.is_empty());
        let st = status(&p, &ns_key("payments", "e"));
        assert!(st.ready);
        assert!(st.bindings.is_empty());
        assert!(st.message.contains("no subjects"), "{}", st.message);
    }

    #[test]
    fn overlapping_namespace_roles_give_one_binding() {
        let mut w = world();
        w.mappings = vec![cgrm(
            "devs",
            vec![by_name("devs")],
            &[],
            vec![
                ns_role("edit", &["payments"], None),
                ns_role("edit", &[], Some(match_labels(&[("team", "pay")]))),
            ],
        )];
        let p = run(&w);
        assert_eq!(p.bindings.len(), 1);
    }

    // ----- names --------------------------------------------------------------------------

    #[test]
    fn plan_is_deterministic_and_order_independent() {
        let mut w = world();
        w.mappings = vec![
            grm(
                "payments",
                "devs",
                vec![by_name("devs")],
                cluster_role("edit"),
            ),
            cgrm(
                "ops",
                vec![by_name("ops"), by_name("devs")],
                &["view"],
                vec![ns_role(
                    "system:aggregate-to-edit",
                    &["shop", "payments"],
                    None,
                )],
            ),
        ];
        let a = run(&w);
        assert_eq!(a, run(&w));
        let mut shuffled = w.clone();
        shuffled.mappings.reverse();
        shuffled.groups.reverse();
        shuffled.users.reverse();
        shuffled.namespaces.reverse();
        for g in &mut shuffled.groups {
            g.members.reverse();
        }
        assert_eq!(a, run(&shuffled));
        let sanitized = a
            .bindings
            .iter()
            .find(|b| b.role_ref.name == "system:aggregate-to-edit")
            .unwrap();
        assert!(
            sanitized
                .name
                .starts_with("kube-scim.c.ops.system-aggregate-to-edit-"),
            "{}",
            sanitized.name
        );
    }

    #[test]
    fn namespaced_and_cluster_mappings_of_one_name_do_not_collide() {
        let mut w = world();
        w.mappings = vec![
            grm(
                "payments",
                "devs",
                vec![by_name("devs")],
                cluster_role("edit"),
            ),
            cgrm(
                "devs",
                vec![by_name("ops")],
                &[],
                vec![ns_role("edit", &["payments"], None)],
            ),
        ];
        let p = run(&w);
        assert_eq!(ids(&p).len(), 2);
        assert_eq!(of(&p, &ns_key("payments", "devs")).len(), 1);
        assert_eq!(of(&p, &c_key("devs")).len(), 1);
    }

    // ----- splitting ----------------------------------------------------------------------

    #[test]
    fn split_bindings_get_part_names() {
        let mut w = world();
        let members: Vec<String> = (0..20_000).map(|i| format!("u{i}")).collect();
        w.users = members
            .iter()
            .map(|id| UserInput {
                user_name: format!("{id:0>6}@payments-team.corp.example.com"),
                ..user(id)
            })
            .collect();
        w.groups = vec![GroupInput {
            members: members.clone(),
            ..group("everyone", &[])
        }];
        w.mappings = vec![cgrm(
            "everyone",
            vec![by_name("everyone")],
            &["view"],
            vec![],
        )];
        let p = run(&w);
        let base = naming::binding_name(
            &c_key("everyone"),
            BindingKind::ClusterRoleBinding,
            &cluster_role("view"),
        );
        let got: Vec<&str> = p.bindings.iter().map(|b| b.name.as_str()).collect();
        assert!(got.len() >= 2);
        let mut want: Vec<String> = (0..got.len())
            .map(|i| naming::part_name(&base, i))
            .collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            p.bindings.iter().map(|b| b.subjects.len()).sum::<usize>(),
            20_000
        );
        // The status has one entry for the logical binding, not one per part.
        let st = status(&p, &c_key("everyone"));
        assert_eq!(st.bindings.len(), 1);
        assert_eq!(st.bindings[0].name, base);
        assert_eq!(st.bindings[0].parts, Some(got.len() as u32));
        assert_eq!(st.bindings[0].subjects, 20_000);
        // Re-planning against what was applied keeps the same objects.
        w.existing = applied(&p);
        let again = run(&w);
        assert_eq!(again.bindings, p.bindings);
        assert!(again.prune.is_empty());
    }

    // ----- mass-removal guard ----------------------------------------------------------------

    /// A mapping over group "big" with `n` members u00…, applied.
    fn guarded_world(n: usize) -> PlanInput {
        let mut w = world();
        let ids: Vec<String> = (0..n).map(|i| format!("u{i:02}")).collect();
        w.users.extend(ids.iter().map(|id| user(id)));
        w.groups.push(GroupInput {
            members: ids,
            ..group("big", &[])
        });
        w.mappings = vec![cgrm(
            "big",
            vec![by_name("big")],
            &["view"],
            vec![ns_role("edit", &["payments", "shop"], None)],
        )];
        w.existing = applied(&run(&w));
        assert_eq!(w.existing.len(), 3);
        w
    }

    fn keep_members(w: &mut PlanInput, n: usize) {
        let g = w
            .groups
            .iter_mut()
            .find(|g| g.display_name == "big")
            .unwrap();
        g.members.truncate(n);
    }

    fn subject_count(p: &Plan, key: &MappingKey) -> BTreeSet<usize> {
        of(p, key).iter().map(|b| b.subjects.len()).collect()
    }

    #[test]
    fn mass_removal_is_held_until_confirmed() {
        let mut w = guarded_world(20);
        let key = c_key("big");
        keep_members(&mut w, 5);
        let p = run(&w);
        assert_eq!(subject_count(&p, &key), [20].into(), "nobody loses access");
        assert!(p.prune.is_empty());
        let st = status(&p, &key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::RemovalHeld);
        let held = st.held_removals.clone().unwrap();
        assert_eq!((held.subjects, held.managed_subjects), (15, 20));
        assert!(st.message.contains(&held.confirm_token), "{}", st.message);
        assert!(st
            .events
            .iter()
            .any(|e| e.type_ == EventType::Warning && e.reason == "RemovalHeld"));
        assert_eq!(
            run(&w).mapping_status[&key].held_removals,
            Some(held.clone()),
            "stable token"
        );

        // Confirmed with the right token: the removal goes through.
        w.mappings[0].confirm_annotation = Some(held.confirm_token.clone());
        let p = run(&w);
        assert_eq!(subject_count(&p, &key), [5].into());
        let st = status(&p, &key);
        assert!(st.ready, "{st:?}");
        assert!(st.held_removals.is_none());
        assert!(st.events.iter().any(|e| e.reason == "RemovalConfirmed"));
    }

    #[test]
    fn revocation_is_never_held_only_spec_edits_are() {
        // The spec is the one last reconciled: 15 of 20 members leaving (or being
        // deactivated, or deleted) is identity-side revocation and goes through at once.
        let mut w = guarded_world(20);
        let key = c_key("big");
        w.mappings[0].observed_generation = w.mappings[0].generation;
        keep_members(&mut w, 5);
        let p = run(&w);
        assert_eq!(subject_count(&p, &key), [5].into());
        let st = status(&p, &key);
        assert!(st.ready && st.held_removals.is_none(), "{st:?}");
        assert_eq!(st.observed_generation, w.mappings[0].generation);

        // An edit that drops the group is a configuration-driven wipe: held, and the
        // status keeps the generation last applied in full until it is confirmed.
        let mut w = guarded_world(20);
        w.mappings[0].observed_generation = Some(1);
        w.mappings[0].generation = Some(2);
        w.groups.push(group("small", &["u00"]));
        if let MappingSpec::Cluster(spec) = &mut w.mappings[0].spec {
            spec.groups = vec![by_name("small")];
        }
        let p = run(&w);
        let st = status(&p, &key);
        assert_eq!(st.reason, Reason::RemovalHeld);
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(subject_count(&p, &key), [20].into());
        w.mappings[0].confirm_annotation = Some(st.held_removals.clone().unwrap().confirm_token);
        let st = status(&run(&w), &key).clone();
        assert!(st.ready);
        assert_eq!(st.observed_generation, Some(2));
    }

    #[test]
    fn a_different_removal_needs_a_new_confirmation() {
        let mut w = guarded_world(20);
        let key = c_key("big");
        keep_members(&mut w, 5);
        let first = run(&w).mapping_status[&key].held_removals.clone().unwrap();
        keep_members(&mut w, 2);
        w.mappings[0].confirm_annotation = Some(first.confirm_token.clone());
        let p = run(&w);
        let st = status(&p, &key);
        let second = st.held_removals.clone().unwrap();
        assert_ne!(second.confirm_token, first.confirm_token);
        assert_eq!(second.subjects, 18);
        assert!(
            st.message.contains("confirms a different removal"),
            "{}",
            st.message
        );
        assert_eq!(subject_count(&p, &key), [20].into());
    }

    #[test]
    fn small_removals_pass_straight_through() {
        let mut w = guarded_world(20);
        let key = c_key("big");
        // Two deactivations: 10%.
        for u in w
            .users
            .iter_mut()
            .filter(|u| u.id == "u03" || u.id == "u07")
        {
            u.active = false;
        }
        let p = run(&w);
        assert_eq!(subject_count(&p, &key), [18].into());
        assert!(status(&p, &key).ready);
        // Exactly at the threshold (10 of 20 = 50%) still passes: the guard needs more.
        let mut w = guarded_world(20);
        keep_members(&mut w, 10);
        assert_eq!(subject_count(&run(&w), &key), [10].into());
    }

    #[test]
    fn guard_needs_enough_managed_subjects() {
        let mut w = guarded_world(9); // dave is inactive, so 9 managed subjects < 10
        keep_members(&mut w, 0);
        let p = run(&w);
        assert!(p.bindings.is_empty());
        assert_eq!(p.prune.len(), 3);
        assert!(status(&p, &c_key("big")).ready);
    }

    #[test]
    fn additions_pass_while_removals_are_held() {
        let mut w = guarded_world(20);
        let key = c_key("big");
        keep_members(&mut w, 5);
        w.users.push(user("newbie"));
        w.groups
            .iter_mut()
            .find(|g| g.display_name == "big")
            .unwrap()
            .members
            .push("newbie".into());
        let p = run(&w);
        for b in of(&p, &key) {
            assert_eq!(b.subjects.len(), 21);
            assert!(names(b).contains(&"newbie@example.com"));
        }
        assert_eq!(
            status(&p, &key).held_removals.as_ref().unwrap().subjects,
            15
        );
    }

    #[test]
    fn held_subjects_keep_bindings_that_would_be_pruned() {
        let mut w = guarded_world(20);
        let key = c_key("big");
        keep_members(&mut w, 5);
        // At the same time the spec drops the shop namespace.
        w.mappings[0].spec = cgrm(
            "big",
            vec![by_name("big")],
            &["view"],
            vec![ns_role("edit", &["payments"], None)],
        )
        .spec;
        let p = run(&w);
        assert_eq!(of(&p, &key).len(), 2);
        assert!(
            p.prune.is_empty(),
            "the shop binding is held too: {:?}",
            p.prune
        );
        let st = status(&p, &key);
        assert_eq!(st.bindings.len(), 3);
        assert!(st
            .bindings
            .iter()
            .any(|b| b.namespace.as_deref() == Some("shop") && b.subjects == 20));
    }

    #[test]
    fn scope_changes_are_not_guarded() {
        let mut w = guarded_world(20);
        w.mappings[0].spec = cgrm("big", vec![by_name("big")], &["view"], vec![]).spec;
        let p = run(&w);
        assert_eq!(p.prune.len(), 2);
        assert!(status(&p, &c_key("big")).ready);
    }

    #[test]
    fn deleting_a_mapping_is_not_guarded() {
        let mut w = guarded_world(20);
        w.mappings[0].deleting = true;
        let p = run(&w);
        assert!(p.bindings.is_empty());
        assert_eq!(p.prune.len(), 3);
        assert!(!p.mapping_status.contains_key(&c_key("big")));
        assert!(p.group_status["id-big"].is_empty());
    }

    // ----- fan-out budget ----------------------------------------------------------------

    fn run_with_budget(input: &PlanInput, max_fanout: u64) -> Plan {
        let settings = Settings {
            cluster_wide_roles: vec!["*".into()],
            max_fanout,
            ..Settings::default()
        };
        plan(&settings, input)
    }

    /// Group "big" with members u00…u03 bound by cgrm "big" (view cluster-wide, edit in
    /// payments and shop: 3 bindings), applied: 4 × 3 = 12, the budget these tests use.
    fn fan_world() -> PlanInput {
        let mut w = guarded_world(4);
        w.existing = applied(&run_with_budget(&w, 12));
        w
    }

    fn join(w: &mut PlanInput, id: &str) {
        w.users.push(user(id));
        w.groups
            .iter_mut()
            .find(|g| g.display_name == "big")
            .unwrap()
            .members
            .push(id.into());
    }

    fn bound_names(p: &Plan, key: &MappingKey) -> BTreeSet<Vec<String>> {
        of(p, key)
            .iter()
            .map(|b| names(b).into_iter().map(str::to_owned).collect())
            .collect()
    }

    fn members(ids: &[&str]) -> BTreeSet<Vec<String>> {
        [ids.iter().map(|i| format!("{i}@example.com")).collect()].into()
    }

    #[test]
    fn over_budget_a_mapping_keeps_its_subjects_and_adds_none() {
        let mut w = fan_world();
        let key = c_key("big");
        assert!(
            status(&run_with_budget(&w, 12), &key).ready,
            "exactly at the budget fits"
        );
        join(&mut w, "newbie");
        let p = run_with_budget(&w, 12);
        assert_eq!(
            bound_names(&p, &key),
            members(&["u00", "u01", "u02", "u03"])
        );
        assert_eq!(of(&p, &key).len(), 3);
        assert!(p.prune.is_empty());
        let st = status(&p, &key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::FanOutExceeded);
        assert_eq!(st.subject_count, Some(4));
        let fan = st.fan_out.clone().expect("fan-out");
        assert_eq!(
            (fan.subjects, fan.bindings, fan.total(), fan.budget),
            (5, 3, 15, 12)
        );
        assert_eq!(fan.withheld_subjects, 1);
        assert!(fan.withheld_bindings.is_empty());
        assert!(st.message.contains("--max-fanout"), "{}", st.message);
        assert!(st.message.contains("Group subjects"), "{}", st.message);
        assert!(
            st.message.contains("5 subject(s) × 3 binding(s) = 15 > 12"),
            "{}",
            st.message
        );
        assert!(
            st.message.contains("as Group subjects: 1 × 3 = 3"),
            "{}",
            st.message
        );
        assert!(st
            .events
            .iter()
            .any(|e| e.type_ == EventType::Warning && e.reason == "FanOutExceeded"));
        // The newcomer has no access in its status either; the others keep theirs.
        assert!(p.user_status["newbie"].access().is_empty());
        assert_eq!(p.user_status["u00"].access().len(), 2);
        // The fast lane can still address every part (the kept list is hash-split).
        assert!(p.layouts[&key].targets.iter().all(|t| t.hashed));

        // One more newcomer: the condition's reason and the Event's note stay the same
        // (one Event per transition), only the note with the numbers moves.
        let first = st.problems.clone();
        join(&mut w, "second");
        let p = run_with_budget(&w, 12);
        assert_eq!(status(&p, &key).problems, first);
        assert!(status(&p, &key).message.contains("6 subject(s)"));
    }

    #[test]
    fn removals_go_through_over_budget_and_fitting_again_lets_additions_in() {
        let mut w = fan_world();
        let key = c_key("big");
        join(&mut w, "n1");
        join(&mut w, "n2");
        w.existing = applied(&run_with_budget(&w, 12));
        assert_eq!(
            bound_names(&run_with_budget(&w, 12), &key),
            members(&["u00", "u01", "u02", "u03"])
        );

        // A deactivation while 5 × 3 = 15 is still over: u00 goes, nobody comes.
        w.users.iter_mut().find(|u| u.id == "u00").unwrap().active = false;
        let p = run_with_budget(&w, 12);
        assert_eq!(bound_names(&p, &key), members(&["u01", "u02", "u03"]));
        assert_eq!(status(&p, &key).reason, Reason::FanOutExceeded);
        assert_eq!(status(&p, &key).subject_count, Some(3));
        w.existing = applied(&p);

        // Leaving the group, same: 4 × 3 = 12 fits again, so the newcomers come in.
        keep_group(&mut w, &["u02", "u03", "n1", "n2"]);
        let p = run_with_budget(&w, 12);
        assert_eq!(bound_names(&p, &key), members(&["n1", "n2", "u02", "u03"]));
        let st = status(&p, &key);
        assert!(st.ready, "{st:?}");
        assert!(st.fan_out.is_none());
        assert!(!p.user_status["n1"].access().is_empty());

        // Or the operator raises the budget (or sets 0: unlimited).
        let mut w = fan_world();
        join(&mut w, "n1");
        assert!(!status(&run_with_budget(&w, 12), &key).ready);
        for budget in [15, 0] {
            let p = run_with_budget(&w, budget);
            assert!(status(&p, &key).ready);
            assert_eq!(
                bound_names(&p, &key),
                members(&["n1", "u00", "u01", "u02", "u03"])
            );
        }
    }

    fn keep_group(w: &mut PlanInput, ids: &[&str]) {
        w.groups
            .iter_mut()
            .find(|g| g.display_name == "big")
            .unwrap()
            .members = ids.iter().map(|i| i.to_string()).collect();
    }

    #[test]
    fn over_budget_a_new_namespace_gets_nothing_until_the_mapping_fits() {
        let mut w = world();
        w.groups.push(GroupInput {
            members: vec!["alice".into(), "bob".into()],
            ..group("big", &[])
        });
        w.mappings = vec![cgrm(
            "big",
            vec![by_name("big")],
            &[],
            vec![ns_role("edit", &[], Some(match_labels(&[("tier", "web")])))],
        )];
        w.namespaces.push(namespace("web-1", &[("tier", "web")]));
        w.namespaces.push(namespace("web-2", &[("tier", "web")]));
        let key = c_key("big");
        w.existing = applied(&run_with_budget(&w, 4));
        assert_eq!(of(&run_with_budget(&w, 4), &key).len(), 2);

        w.namespaces.push(namespace("web-3", &[("tier", "web")]));
        let p = run_with_budget(&w, 4);
        let where_: BTreeSet<Option<String>> =
            of(&p, &key).iter().map(|b| b.namespace.clone()).collect();
        assert_eq!(where_, [Some("web-1".into()), Some("web-2".into())].into());
        let st = status(&p, &key);
        assert_eq!(st.reason, Reason::FanOutExceeded);
        let fan = st.fan_out.as_ref().unwrap();
        assert_eq!(fan.withheld_subjects, 0);
        assert_eq!(
            fan.withheld_bindings,
            [(Some("web-3".to_owned()), cluster_role("edit"))]
        );
        assert!(
            st.message.contains("(ClusterRole/edit in web-3)"),
            "{}",
            st.message
        );
        // Existing subjects keep their grants in the namespaces they have.
        assert_eq!(p.user_status["alice"].access().len(), 1);

        // A member leaves: 1 × 3 fits, and web-3 gets its binding.
        w.groups.last_mut().unwrap().members = vec!["alice".into()];
        let p = run_with_budget(&w, 4);
        assert_eq!(of(&p, &key).len(), 3);
        assert!(status(&p, &key).ready);
    }

    #[test]
    fn a_new_mapping_over_budget_binds_nothing_and_group_subjects_fit() {
        let mut w = guarded_world(6);
        w.existing.clear();
        let key = c_key("big");
        let p = run_with_budget(&w, 12);
        assert!(of(&p, &key).is_empty());
        assert!(p.prune.is_empty());
        let st = status(&p, &key);
        assert_eq!(st.reason, Reason::FanOutExceeded);
        assert_eq!(st.subject_count, Some(0));
        assert_eq!(st.fan_out.as_ref().unwrap().withheld_subjects, 6);
        assert_eq!(st.fan_out.as_ref().unwrap().withheld_bindings.len(), 3);
        assert!(p.user_status["u00"].access().is_empty());

        // The same mapping with Group subjects: 1 × 3.
        set_subjects(
            &mut w.mappings[0],
            SubjectOptions {
                kind: Some(SubjectKind::Group),
                ..Default::default()
            },
        );
        let p = run_with_budget(&w, 12);
        assert!(status(&p, &key).ready);
        assert_eq!(bound_names(&p, &key), [vec!["gx-big".to_owned()]].into());
        assert_eq!(p.user_status["u00"].access().len(), 2);
    }

    #[test]
    fn over_budget_the_guard_still_holds_a_mass_removal_and_the_prune_of_its_bindings() {
        // 20 subjects × 3 = 60; the edit drops shop and swaps the group for one of 5
        // old and 50 new members (55 × 2 = 110 > 60): the removal of 15 is held, none of
        // the 50 is added.
        let mut w = guarded_world(20);
        let key = c_key("big");
        let newcomers: Vec<String> = (0..50).map(|i| format!("new{i:02}")).collect();
        w.users.extend(newcomers.iter().map(|id| user(id)));
        let mut members: Vec<String> = (0..5).map(|i| format!("u{i:02}")).collect();
        members.extend(newcomers.iter().cloned());
        w.groups.push(GroupInput {
            members,
            ..group("other", &[])
        });
        w.mappings[0].spec = cgrm(
            "big",
            vec![by_name("other")],
            &["view"],
            vec![ns_role("edit", &["payments"], None)],
        )
        .spec;
        let p = run_with_budget(&w, 60);
        let st = status(&p, &key);
        assert_eq!(st.reason, Reason::FanOutExceeded, "{}", st.message);
        assert!(st.problems.iter().any(|p| p.reason == Reason::RemovalHeld));
        assert_eq!(
            subject_count(&p, &key),
            [20].into(),
            "nobody lost or gained"
        );
        assert!(p.prune.is_empty(), "shop is held: {:?}", p.prune);
        assert!(p.user_status["new00"].access().is_empty());
    }

    // ----- pruning --------------------------------------------------------------------------

    #[test]
    fn stale_managed_bindings_are_pruned() {
        let mut w = world();
        w.mappings = vec![grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        )];
        let current = applied(&run(&w));
        let stale = |ns: Option<&str>, name: &str, mapping: Option<MappingKey>| ExistingBinding {
            kind: if ns.is_some() {
                BindingKind::RoleBinding
            } else {
                BindingKind::ClusterRoleBinding
            },
            namespace: ns.map(str::to_owned),
            name: name.into(),
            role_ref: cluster_role("view"),
            mapping,
            subjects: vec![Subject::user("x")].into(),
        };
        w.existing = current.clone();
        w.existing.extend([
            stale(
                Some("payments"),
                "old-role",
                Some(ns_key("payments", "devs")),
            ),
            stale(None, "gone-mapping", Some(c_key("gone"))),
            stale(Some("shop"), "orphan", None),
            stale(Some("dying"), "in-terminating-ns", Some(c_key("gone"))),
            stale(Some("vanished"), "in-missing-ns", Some(c_key("gone"))),
        ]);
        let p = run(&w);
        let pruned: Vec<&str> = p.prune.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(pruned, ["old-role", "orphan", "gone-mapping"]);
        assert_eq!(p.bindings.len(), 1);
        assert_eq!(p.bindings[0].name, current[0].name);
    }

    // ----- user and group status ------------------------------------------------------------

    #[test]
    fn user_and_group_status_explain_access() {
        let mut w = world();
        w.groups.push(group("unused", &["erin"]));
        w.mappings = vec![
            grm(
                "payments",
                "devs",
                vec![by_name("devs")],
                cluster_role("edit"),
            ),
            cgrm(
                "ops",
                vec![by_name("ops")],
                &["view"],
                vec![ns_role("edit", &["shop"], None)],
            ),
        ];
        let p = run(&w);
        assert_eq!(p.user_status.len(), w.users.len());
        let alice = &p.user_status["alice"];
        let group_ids: Vec<&str> = alice.groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(group_ids, ["id-devs", "id-ops"]);
        assert_eq!(alice.groups[0].display_name.as_deref(), Some("devs"));
        let access = alice.access();
        let grants: Vec<(Option<&str>, &str, &str, &str)> = access
            .iter()
            .map(|a| {
                (
                    a.namespace.as_deref(),
                    a.role_name.as_str(),
                    a.mapping.as_str(),
                    a.group.as_str(),
                )
            })
            .collect();
        assert_eq!(
            grants,
            [
                (None, "view", "ops", "ops"),
                (Some("payments"), "edit", "payments/devs", "devs"),
                (Some("shop"), "edit", "ops", "ops"),
            ]
        );
        assert!(access.iter().all(|a| a.role_kind == "ClusterRole"));
        // Inactive: still a member, but no access.
        assert_eq!(p.user_status["dave"].groups.len(), 1);
        assert!(p.user_status["dave"].access().is_empty());
        // Member of an unmapped group only.
        assert_eq!(p.user_status["erin"].groups.len(), 1);
        assert!(p.user_status["erin"].access().is_empty());

        assert_eq!(p.group_status["id-devs"], ["payments/devs"]);
        assert_eq!(p.group_status["id-ops"], ["ops"]);
        assert!(p.group_status["id-unused"].is_empty());

        // A user in no group at all still gets an (empty) entry so old statuses clear.
        w.groups.retain(|g| g.display_name != "unused");
        let p = run(&w);
        assert_eq!(p.user_status["erin"], UserAccess::default());
    }

    #[test]
    fn group_subjects_grant_access_to_active_members() {
        let mut w = world();
        let mut m = grm(
            "payments",
            "devs",
            vec![by_name("devs")],
            cluster_role("edit"),
        );
        set_subjects(
            &mut m,
            SubjectOptions {
                kind: Some(SubjectKind::Group),
                ..Default::default()
            },
        );
        w.users[0].work_email = None;
        w.mappings = vec![m];
        let p = run(&w);
        assert_eq!(p.user_status["bob"].access().len(), 1);
        assert!(p.user_status["dave"].access().is_empty());
    }

    // ----- scale ---------------------------------------------------------------------------

    /// 50 mappings × 2,000 groups × 50,000 users (+ one 50,000-member group), 100 namespaces.
    /// `cargo test --release -- --ignored --nocapture plan_at_scale`
    #[test]
    #[ignore]
    fn plan_at_scale() {
        let users: Vec<UserInput> = (0..50_000).map(|i| user(&format!("user-{i:05}"))).collect();
        let mut groups: Vec<GroupInput> = (0..2_000)
            .map(|g| group(&format!("g{g:04}"), &[]))
            .collect();
        for (j, u) in users.iter().enumerate() {
            for g in [(j * 7) % 2000, (j * 13 + 5) % 2000, (j * 31 + 11) % 2000] {
                groups[g].members.push(u.id.clone());
            }
        }
        groups.push(GroupInput {
            members: users.iter().map(|u| u.id.clone()).collect(),
            ..group("everyone", &[])
        });
        let namespaces: Vec<NamespaceInput> = (0..100)
            .map(|i| namespace(&format!("ns-{i:03}"), &[("tier", &(i % 5).to_string())]))
            .collect();
        let refs = |m: usize| {
            (0..40)
                .map(|k| by_name(&format!("g{:04}", (m * 40 + k) % 2000)))
                .collect::<Vec<_>>()
        };
        let mut mappings = Vec::new();
        for m in 0..25 {
            mappings.push(grm(
                &format!("ns-{m:03}"),
                &format!("m{m}"),
                refs(m),
                cluster_role("edit"),
            ));
        }
        for m in 25..49 {
            mappings.push(cgrm(
                &format!("m{m}"),
                refs(m),
                &["view"],
                vec![ns_role("edit", &[], Some(match_labels(&[("tier", "1")])))],
            ));
        }
        mappings.push(cgrm(
            "everyone",
            vec![by_name("everyone")],
            &["view"],
            vec![],
        ));
        let mut input = PlanInput {
            mappings,
            groups,
            users,
            namespaces,
            cluster_roles: ["edit", "view"].iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let settings = Settings::default();

        let t = std::time::Instant::now();
        let p = plan(&settings, &input);
        let cold = t.elapsed();
        input.existing = applied(&p);
        let t = std::time::Instant::now();
        let again = plan(&settings, &input);
        let warm = t.elapsed();
        let t = std::time::Instant::now();
        let grants: usize = again.user_status.values().map(|u| u.access().len()).sum();
        let materialize = t.elapsed();
        println!(
            "plan_at_scale: {} bindings, {} subjects, {grants} grants; first plan {cold:?}, re-plan against applied state {warm:?}, materializing every user's access one by one {materialize:?}",
            again.bindings.len(),
            again.bindings.iter().map(|b| b.subjects.len()).sum::<usize>(),
        );
        assert!(again.prune.is_empty());
        assert_eq!(again.bindings, p.bindings);
        assert!(again.mapping_status.values().all(|s| s.ready));
    }
}
