//! `GroupRoleMapping` (namespaced) and `ClusterGroupRoleMapping` (cluster-scoped):
//! which SCIM groups get which roles, written by people, read by the controller.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation a person sets to release removals held by the mass-removal guard;
/// its value must equal `status.heldRemovals.confirmToken`.
pub const CONFIRM_REMOVAL_ANNOTATION: &str = "scim.kubescim.io/confirm-removal";

/// Binds the members of SCIM groups to a Role or ClusterRole in this namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scim.kubescim.io",
    version = "v1alpha1",
    kind = "GroupRoleMapping",
    plural = "grouprolemappings",
    singular = "grouprolemapping",
    shortname = "grm",
    namespaced,
    status = "MappingStatus",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.roleRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GroupRoleMappingSpec {
    /// The SCIM groups whose members get the role.
    pub groups: Vec<GroupRef>,
    /// The Role (in this namespace) or ClusterRole to bind.
    pub role_ref: RoleRef,
    /// How subjects are named; unset fields fall back to the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<SubjectOptions>,
    /// Must be true to bind cluster-admin or a role the operator treats as protected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_protected_roles: bool,
}

/// Binds the members of SCIM groups to ClusterRoles cluster-wide and/or in selected namespaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scim.kubescim.io",
    version = "v1alpha1",
    kind = "ClusterGroupRoleMapping",
    plural = "clustergrouprolemappings",
    singular = "clustergrouprolemapping",
    shortname = "cgrm",
    status = "MappingStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGroupRoleMappingSpec {
    pub groups: Vec<GroupRef>,
    /// ClusterRoles bound cluster-wide (ClusterRoleBindings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_roles: Vec<String>,
    /// ClusterRoles bound in selected namespaces (RoleBindings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_roles: Vec<NamespaceRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<SubjectOptions>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_protected_roles: bool,
}

/// A SCIM group, named by displayName or by externalId (Entra's group object id).
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct GroupRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum RoleKind {
    Role,
    ClusterRole,
}

#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub struct RoleRef {
    pub kind: RoleKind,
    pub name: String,
}

/// A ClusterRole bound by RoleBindings in the namespaces named or selected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRole {
    pub cluster_role: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum SubjectKind {
    /// One User subject per active member.
    User,
    /// One Group subject per SCIM group.
    Group,
    /// Both.
    UserAndGroup,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum UserAttribute {
    UserName,
    Email,
    ExternalId,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum GroupAttribute {
    ExternalId,
    DisplayName,
}

/// How groups and users are named as RBAC subjects (must match the cluster's authenticator).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum::<SubjectKind>")]
    pub kind: Option<SubjectKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum::<UserAttribute>")]
    pub user_attribute: Option<UserAttribute>,
    /// Prefix of User subject names (kube-apiserver `--oidc-username-prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum::<GroupAttribute>")]
    pub group_attribute: Option<GroupAttribute>,
    /// Prefix of Group subject names (kube-apiserver `--oidc-groups-prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_prefix: Option<String>,
}

/// Status shared by both mapping kinds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappingStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The bindings this mapping owns and how many subjects each carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<BindingStatus>,
    /// Removals held back by the mass-removal guard, waiting for confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_removals: Option<HeldRemovals>,
}

#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct BindingStatus {
    /// `RoleBinding` or `ClusterRoleBinding`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the binding, or of its first part when it is split (the others are
    /// `<name>-part-<n>`).
    pub name: String,
    pub role: String,
    /// Subjects across all its parts.
    pub subjects: u32,
    /// Number of parts when the binding is split into several objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldRemovals {
    /// Subjects that would be removed.
    pub subjects: u32,
    /// Subjects currently managed by the mapping.
    pub managed_subjects: u32,
    /// Set the annotation `scim.kubescim.io/confirm-removal` to this value to let the removal through.
    pub confirm_token: String,
}

/// Schema of an optional enum field: the enum's own schema. schemars would add `null`
/// to the enum values, which Kubernetes 1.20's structural-schema validation rejects;
/// an absent field already means "not set".
pub(crate) fn optional_enum<T: JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
) -> schemars::Schema {
    T::json_schema(generator)
}
