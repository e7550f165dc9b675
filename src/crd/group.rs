//! `ScimGroup`: one SCIM Group resource, and `ScimGroupMembers`: its membership shards.
//!
//! Why shards: Entra tenants have groups with 50,000+ members while one etcd object
//! tops out at 1.5 MiB (~30k member entries). The SCIM endpoint therefore keeps a
//! group's members in up to `SHARD_COUNT` (64) ScimGroupMembers objects named
//! `<group id>-<NN>`, created lazily and owned by the group. A member counts in any of
//! them; SCIM puts a change's new members in one shard with room (`store::placement`),
//! so a PATCH of 100 members rewrites one shard. Sixty-four keeps that shard small: a
//! write's cost grows with the object (the API server decodes, validates and stores it,
//! every watcher decodes it again), and at 50,000 members sixteen shards were ~200 kB
//! each, sixty-four are ~50 kB. A 1.5-million-member group still fits. `spec.members`
//! inline is still honoured for groups written by hand.
//! What counts as a member, for the SCIM side and the controller alike, is defined once in
//! `crd::membership`.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Number of ScimGroupMembers shards of a sharded group.
pub const SHARD_COUNT: u32 = 64;
/// Label on a shard naming its group id.
pub const GROUP_LABEL: &str = "scim.kubescim.io/group";

/// The SCIM Group as the client sent it: the attributes kube-scim reads are typed, the
/// rest is kept verbatim. `metadata.name` is the SCIM `id`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scim.kubescim.io",
    version = "v1alpha1",
    kind = "ScimGroup",
    doc = "A group provisioned by the identity provider over SCIM (name: the SCIM id). Written by the SCIM endpoint; mappings select it by displayName or externalId.",
    plural = "scimgroups",
    singular = "scimgroup",
    shortname = "scimgroup",
    shortname = "sg",
    category = "scim",
    status = "ScimGroupStatus",
    printcolumn = r#"{"name":"DisplayName","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"ExternalId","type":"string","jsonPath":".spec.externalId"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ScimGroupSpec {
    /// SCIM `displayName`; unique.
    pub display_name: String,
    /// SCIM `externalId` (Entra: the group's object id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Members listed inline (groups written by hand; the SCIM endpoint uses shards). A shard's entry for the same id wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// Informational: set once the SCIM endpoint keeps members in ScimGroupMembers shards. Shards count whether or not it is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sharded: bool,
    /// Every other attribute of the SCIM resource, as sent.
    #[serde(flatten)]
    #[schemars(skip)]
    pub attributes: Map<String, Value>,
}

/// A group member: a user id, or (rarely) a group id.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
/// A group member, by SCIM id.
pub struct Member {
    /// The member's SCIM id.
    pub value: String,
    /// `User` or `Group`; absent means User.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
/// Written by the controller: size of the group and the mappings that use it.
pub struct ScimGroupStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of members, inline and sharded.
    #[serde(default)]
    pub member_count: u64,
    /// Mappings that select this group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<String>,
    /// Conditions of the group (none are written today; reserved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One shard of a large group's membership. Name: `<group id>-<shard index>`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "scim.kubescim.io",
    version = "v1alpha1",
    kind = "ScimGroupMembers",
    doc = "One shard of a large ScimGroup's members (name: <group id>-<shard>). Written by the SCIM endpoint.",
    plural = "scimgroupmembers",
    singular = "scimgroupmembers",
    shortname = "sgm",
    category = "scim",
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.group"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ScimGroupMembersSpec {
    /// Id of the ScimGroup this shard belongs to. It must match the name (`<group>-<NN>`, NN 00..63), and an owner reference to a ScimGroup must carry that group's uid, or the shard counts for no group.
    pub group: String,
    /// The members in this shard. An entry counts in any shard of its group; an id in several shards is one member.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// A stable hash of a member id onto the shard indices (FNV-1a). Placement no longer uses
/// it (`store::placement`); tests and tools use it to spread ids over shards.
pub fn shard_of(member_id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in member_id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % SHARD_COUNT
}

/// Object name of a group's shard.
pub fn shard_name(group_id: &str, shard: u32) -> String {
    format!("{group_id}-{shard:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        assert_eq!(shard_of("a"), shard_of("a"));
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let s = shard_of(&format!("user-{i}"));
            assert!(s < SHARD_COUNT);
            seen.insert(s);
        }
        assert_eq!(
            seen.len(),
            SHARD_COUNT as usize,
            "hash spreads over every shard"
        );
        assert_eq!(shard_name("g", 3), "g-03");
    }
}
