//! What the plan reads: mappings, groups, users, namespaces, roles and the managed
//! bindings as they are, in plain types (the I/O layer converts kube objects).
use super::*;

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

    pub(super) fn subjects(&self) -> Option<&SubjectOptions> {
        match self {
            MappingSpec::Namespaced(s) => s.subjects.as_ref(),
            MappingSpec::Cluster(s) => s.subjects.as_ref(),
        }
    }

    pub(super) fn allow_protected_roles(&self) -> bool {
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
