//! `GroupRoleMapping` (namespaced) and `ClusterGroupRoleMapping` (cluster-scoped):
//! which SCIM groups get which roles, written by people, read by the controller.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
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
    doc = "Gives the members of SCIM groups a Role or ClusterRole in this namespace: kube-scim keeps one RoleBinding with them as subjects.",
    plural = "grouprolemappings",
    singular = "grouprolemapping",
    shortname = "grm",
    category = "scim",
    namespaced,
    status = "MappingStatus",
    printcolumn = r#"{"name":"Groups","type":"string","jsonPath":".status.groups"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.roleRef.name"}"#,
    printcolumn = r#"{"name":"Bindings","type":"integer","jsonPath":".status.bindingCount"}"#,
    printcolumn = r#"{"name":"Subjects","type":"integer","jsonPath":".status.subjectCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","priority":1,"jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GroupRoleMappingSpec {
    /// The SCIM groups whose members get the role (at least one); `kubectl get scimgroups`
    /// lists the provisioned groups.
    #[schemars(length(min = 1))]
    pub groups: Vec<GroupRef>,
    /// The Role (in this namespace) or ClusterRole to bind, by a RoleBinding in this namespace.
    pub role_ref: RoleRef,
    /// How subjects are named; unset fields fall back to the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<SubjectOptions>,
    /// Must be true to bind cluster-admin or another role the operator treats as
    /// protected (`--protected-roles`); such a role is refused otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_protected_roles: bool,
    /// When the grant ends (RFC 3339, e.g. `2026-07-01T18:00:00Z`): at that moment
    /// kube-scim removes the mapping's bindings and reports Ready=False, reason
    /// `Expired`. Move it into the future to renew; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// Binds the members of SCIM groups to ClusterRoles cluster-wide and/or in selected namespaces.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scim.kubescim.io",
    version = "v1alpha1",
    kind = "ClusterGroupRoleMapping",
    doc = "Gives the members of SCIM groups ClusterRoles cluster-wide (ClusterRoleBindings) and/or in named or selected namespaces (RoleBindings).",
    plural = "clustergrouprolemappings",
    singular = "clustergrouprolemapping",
    shortname = "cgrm",
    category = "scim",
    status = "MappingStatus",
    printcolumn = r#"{"name":"Groups","type":"string","jsonPath":".status.groups"}"#,
    printcolumn = r#"{"name":"Roles","type":"string","jsonPath":".status.roles"}"#,
    printcolumn = r#"{"name":"Bindings","type":"integer","jsonPath":".status.bindingCount"}"#,
    printcolumn = r#"{"name":"Subjects","type":"integer","jsonPath":".status.subjectCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","priority":1,"jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("anyOf" = [{"required": ["clusterRoles"]}, {"required": ["namespaceRoles"]}]))]
pub struct ClusterGroupRoleMappingSpec {
    /// The SCIM groups whose members get the roles (at least one); `kubectl get
    /// scimgroups` lists the provisioned groups.
    #[schemars(length(min = 1))]
    pub groups: Vec<GroupRef>,
    /// ClusterRoles bound cluster-wide, one ClusterRoleBinding each. At least one of
    /// `clusterRoles` and `namespaceRoles` is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1), inner(length(min = 1)))]
    pub cluster_roles: Vec<String>,
    /// ClusterRoles bound by RoleBindings in the namespaces named or selected. At least
    /// one of `clusterRoles` and `namespaceRoles` is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub namespace_roles: Vec<NamespaceRole>,
    /// How subjects are named; unset fields fall back to the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<SubjectOptions>,
    /// Must be true to bind cluster-admin or another role the operator treats as
    /// protected (`--protected-roles`); such a role is refused otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_protected_roles: bool,
    /// When the grant ends (RFC 3339, e.g. `2026-07-01T18:00:00Z`): at that moment
    /// kube-scim removes the mapping's bindings and reports Ready=False, reason
    /// `Expired`. Move it into the future to renew; absent means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// A SCIM group, named by exactly one of displayName or externalId (Entra's group object id).
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [{"required": ["displayName"]}, {"required": ["externalId"]}]))]
pub struct GroupRef {
    /// The group's SCIM displayName, exactly as the identity provider sends it (the
    /// DISPLAYNAME column of `kubectl get scimgroups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub display_name: Option<String>,
    /// The group's SCIM externalId (Entra: the group's object id; the EXTERNALID column of
    /// `kubectl get scimgroups`); unlike the displayName it survives renames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub external_id: Option<String>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
/// Kind of a bound role.
pub enum RoleKind {
    /// A Role in the mapping's namespace.
    Role,
    /// A ClusterRole.
    ClusterRole,
}

#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
/// The role a GroupRoleMapping binds.
pub struct RoleRef {
    /// `Role` (in the mapping's namespace) or `ClusterRole`.
    pub kind: RoleKind,
    /// Name of the Role or ClusterRole.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A ClusterRole bound by RoleBindings in the namespaces named or selected (at least one
/// of `namespaces` and `namespaceSelector`; with both, their union).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("anyOf" = [{"required": ["namespaces"]}, {"required": ["namespaceSelector"]}]))]
pub struct NamespaceRole {
    /// The ClusterRole to bind in each of the namespaces.
    #[schemars(length(min = 1))]
    pub cluster_role: String,
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1), inner(length(min = 1)))]
    pub namespaces: Vec<String>,
    /// Namespaces by label, followed as namespaces are created, relabelled and deleted.
    /// Protected namespaces (`--protected-namespaces`) are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
/// Which RBAC subjects a binding names.
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
/// What names a User subject.
pub enum UserAttribute {
    /// SCIM userName (Entra: the UPN).
    UserName,
    /// The work email.
    Email,
    /// SCIM externalId (Entra: the user's object id).
    ExternalId,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
/// What names a Group subject.
pub enum GroupAttribute {
    /// SCIM externalId (Entra: the group's object id, what its tokens carry).
    ExternalId,
    /// SCIM displayName.
    DisplayName,
}

/// How groups and users are named as RBAC subjects (must match the cluster's authenticator).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectOptions {
    /// `User`: one User subject per active member; `Group`: one Group subject per
    /// group; `UserAndGroup`: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum::<SubjectKind>")]
    pub kind: Option<SubjectKind>,
    /// What names a User subject: `userName`, `email` or `externalId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum::<UserAttribute>")]
    pub user_attribute: Option<UserAttribute>,
    /// Prefix of User subject names (kube-apiserver `--oidc-username-prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_prefix: Option<String>,
    /// What names a Group subject: `externalId` or `displayName`.
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
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when everything the mapping asks for is bound; otherwise its reason
    /// (GroupNotFound, RoleNotFound, BindingRefused, RemovalHeld, ...) and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The groups the spec names, for `kubectl get` (shortened when long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
    /// The roles the spec binds, for `kubectl get` (shortened when long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<String>,
    /// Number of bindings (entries of `bindings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_count: Option<u32>,
    /// Number of distinct subjects the mapping binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_count: Option<u32>,
    /// The Ready condition's message, shortened for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
/// One binding a mapping owns.
pub struct BindingStatus {
    /// `RoleBinding` or `ClusterRoleBinding`.
    pub kind: String,
    /// Namespace of a RoleBinding; absent for a ClusterRoleBinding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the binding, or of its first part when it is split (the others are
    /// `<name>-part-<n>`).
    pub name: String,
    /// The bound role: `ClusterRole/<name>` or `Role/<name>`.
    pub role: String,
    /// Subjects across all its parts.
    pub subjects: u32,
    /// Number of parts when the binding is split into several objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Removals the mass-removal guard holds back until a person confirms them.
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
