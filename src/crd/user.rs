//! `ScimUser`: one SCIM User resource. `metadata.name` is the SCIM `id`.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The SCIM User as the client sent it. The attributes kube-scim reads itself are
/// typed; everything else (name, emails, enterprise extension, attributes the server
/// does not model) is kept verbatim in the flattened remainder so that a client reads
/// back exactly what it wrote.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scim.kubescim.io",
    version = "v1alpha1",
    kind = "ScimUser",
    doc = "A person provisioned by the identity provider over SCIM (name: the SCIM id). Written by the SCIM endpoint; the status lists the groups and the access they give.",
    plural = "scimusers",
    singular = "scimuser",
    shortname = "scimuser",
    shortname = "su",
    category = "scim",
    status = "ScimUserStatus",
    printcolumn = r#"{"name":"UserName","type":"string","jsonPath":".spec.userName"}"#,
    printcolumn = r#"{"name":"DisplayName","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Active","type":"boolean","jsonPath":".spec.active"}"#,
    printcolumn = r#"{"name":"Groups","type":"integer","jsonPath":".status.groupCount"}"#,
    printcolumn = r#"{"name":"ExternalId","type":"string","jsonPath":".spec.externalId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ScimUserSpec {
    /// SCIM `userName`; unique case-insensitively.
    pub user_name: String,
    /// SCIM `externalId` (Entra: the user's object id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// SCIM `displayName`, for people to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `false` keeps the user but removes it from every binding; unset means active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Every other attribute of the SCIM resource, as sent.
    #[serde(flatten)]
    #[schemars(skip)]
    pub attributes: Map<String, Value>,
}

impl ScimUserSpec {
    /// SCIM leaves `active` optional; a user without it is active.
    pub fn is_active(&self) -> bool {
        self.active.unwrap_or(true)
    }
}

/// Written by the controller: why this user has which access.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScimUserStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of groups the user is a member of (entries of `groups`); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_count: Option<u32>,
    /// Groups the user is a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<UserGroupRef>,
    /// Roles granted through those groups, and where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessGrant>,
    /// Conditions of the user (none are written today; reserved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
/// A group the user is a member of.
pub struct UserGroupRef {
    /// ScimGroup id.
    pub id: String,
    /// The group's displayName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// One role a user holds through a group and a mapping.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct AccessGrant {
    // Field order is the derived sort order (where, then what): status lists are sorted by it.
    /// Namespace of the RoleBinding; absent for a ClusterRoleBinding and for
    /// `SelectedNamespaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Where the role applies. Absent means `Namespace` when `namespace` is set and
    /// `Cluster` otherwise (statuses written before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::mapping::optional_enum::<GrantScope>")]
    pub scope: Option<GrantScope>,
    /// `Role` or `ClusterRole`.
    pub role_kind: String,
    /// Name of the Role or ClusterRole.
    pub role_name: String,
    /// The mapping that grants it: `namespace/name` for a GroupRoleMapping, `name` for a ClusterGroupRoleMapping.
    pub mapping: String,
    /// The group (displayName) through which the user gets it.
    pub group: String,
}

/// Where a granted role applies.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum GrantScope {
    /// Cluster-wide (a ClusterRoleBinding).
    Cluster,
    /// In `namespace`.
    Namespace,
    /// In the several namespaces a ClusterGroupRoleMapping lists or selects; its
    /// `status.bindings` names them. One entry instead of one per namespace keeps a
    /// user's status small and unchanged when namespaces come and go.
    SelectedNamespaces,
}
