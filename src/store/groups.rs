//! ScimGroup reads and writes, and the membership shards.
//!
//! Members of a group written through SCIM live in up to `SHARD_COUNT` ScimGroupMembers
//! objects (see `crd::group`), created lazily — a small group has as many shard objects
//! as it has members, at most 16 — and owned by the group (garbage-collected with it).
//! A member change touches only the shards its ids hash to, each under its own
//! resourceVersion precondition, so concurrent PATCHes adding different members rarely
//! contend and never lose a member; the group object itself is then rewritten (RV
//! precondition) to bump `meta.version`/`lastModified`.
use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Resource;
use serde_json::{Map, Value};

use super::index::GROUP_DISPLAY_NAME;
use super::names::NameKind;
use super::resource::{self, members_from_slice, members_to_vec, Members, ResourceMeta};
use super::{
    api_error, confirm_if_match, delete_checked, is_conflict, is_not_found, objects, probe,
    read_index, rv_at_least, with_timeout, Probe, Store, FIELD_MANAGER, MAX_CONFLICT_RETRIES,
};
use crate::crd::group::{shard_name, shard_of, GROUP_LABEL, SHARD_COUNT};
use crate::crd::{
    Member, ScimGroup, ScimGroupMembers, ScimGroupMembersSpec, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use crate::scim::error::ScimError;
use crate::scim::patch::{apply_member_ops, MemberOp, MemberValue};

/// What a group update wants: new attributes (None = unchanged) and member operations.
#[derive(Debug, Default)]
pub struct GroupWrite {
    pub attrs: Option<Map<String, Value>>,
    pub members: Vec<MemberOp>,
}

fn post_params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_string()),
    }
}

/// The member operations restricted to the members that hash to `shard`.
fn ops_for_shard(ops: &[MemberOp], shard: u32) -> Vec<MemberOp> {
    let keep_vals = |v: &[MemberValue]| {
        v.iter()
            .filter(|m| shard_of(&m.value) == shard)
            .cloned()
            .collect()
    };
    ops.iter()
        .map(|op| match op {
            MemberOp::Add(v) => MemberOp::Add(keep_vals(v)),
            MemberOp::ReplaceAll(v) => MemberOp::ReplaceAll(keep_vals(v)),
            MemberOp::Remove(ids) => MemberOp::Remove(
                ids.iter()
                    .filter(|id| shard_of(id) == shard)
                    .cloned()
                    .collect(),
            ),
            other => other.clone(),
        })
        .collect()
}

/// Shards an op sequence can touch.
fn affected_shards(ops: &[MemberOp]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for op in ops {
        match op {
            MemberOp::Add(v) => out.extend(v.iter().map(|m| shard_of(&m.value))),
            MemberOp::Remove(ids) => out.extend(ids.iter().map(|id| shard_of(id))),
            MemberOp::RemoveWhere(_) | MemberOp::RemoveAll | MemberOp::ReplaceAll(_) => {
                return (0..SHARD_COUNT).collect()
            }
        }
    }
    out
}

/// Which kind of resource a member value must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberKind {
    User,
    Group,
    /// No (or an unknown) `type`: a User or a Group.
    Either,
}

fn member_kind(m: &MemberValue) -> MemberKind {
    match m.kind.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("User") => MemberKind::User,
        Some(t) if t.eq_ignore_ascii_case("Group") => MemberKind::Group,
        _ => MemberKind::Either,
    }
}

/// The members an op sequence adds (each value once, first occurrence wins).
fn added_members(ops: &[MemberOp]) -> Vec<&MemberValue> {
    let mut seen = std::collections::HashSet::new();
    ops.iter()
        .flat_map(|op| match op {
            MemberOp::Add(v) | MemberOp::ReplaceAll(v) => v.as_slice(),
            _ => &[],
        })
        .filter(|m| seen.insert(m.value.as_str()))
        .collect()
}

/// Could `s` be the name of a Kubernetes object (a DNS subdomain)? Only such values are
/// looked up on the API server (a `/` would address a subresource).
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn no_such_member(m: &MemberValue) -> ScimError {
    let shown: String = m.value.chars().take(80).collect();
    let what = match member_kind(m) {
        MemberKind::Group => "Group",
        MemberKind::User => "User",
        MemberKind::Either => "User or Group",
    };
    ScimError::invalid_value(format!(
        "member {shown:?} is not the id of an existing {what}; create it first"
    ))
}

impl Store {
    /// Whether `m` names a User (or Group) in this replica's cache.
    fn member_cached(&self, m: &MemberValue) -> bool {
        let user = || self.inner.users.contains(&m.value);
        let group = || self.inner.groups.contains(&m.value);
        match member_kind(m) {
            MemberKind::User => user(),
            MemberKind::Group => group(),
            MemberKind::Either => user() || group(),
        }
    }

    /// Whether `m` names a User (or Group), asking the API server: a user created a moment
    /// ago through another replica may not be in this replica's cache yet.
    async fn member_confirmed(&self, m: &MemberValue) -> Result<bool, ScimError> {
        if !is_object_name(&m.value) {
            return Ok(false);
        }
        let kind = member_kind(m);
        if kind != MemberKind::Group {
            let users: Api<crate::crd::ScimUser> = Api::all(self.client().clone());
            let found = with_timeout(users.get_metadata_opt(&m.value))
                .await?
                .map_err(|e| api_error(e, "User"))?;
            if found.is_some() {
                return Ok(true);
            }
        }
        if kind != MemberKind::User {
            let found = with_timeout(self.groups_api().get_metadata_opt(&m.value))
                .await?
                .map_err(|e| api_error(e, "Group"))?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Refuses (400 invalidValue, naming the value) an add or replace of members that
    /// name no existing User (no Group, with `type: "Group"`). Removals are never
    /// checked. The cache answers for almost every value; a miss is confirmed against the
    /// API server (a few at a time), and the first value that is really missing ends the
    /// check, so a batch of made-up ids costs one API call.
    async fn check_members_exist(&self, ops: &[MemberOp]) -> Result<(), ScimError> {
        let misses: Vec<MemberValue> = added_members(ops)
            .into_iter()
            .filter(|m| !self.member_cached(m))
            .cloned()
            .collect();
        let lookups: Vec<_> = misses
            .into_iter()
            .map(|m| {
                let store = self.clone();
                async move {
                    let exists = store.member_confirmed(&m).await;
                    (m, exists)
                }
            })
            .collect();
        let mut confirmed = futures::stream::iter(lookups).buffered(8);
        while let Some((m, exists)) = confirmed.next().await {
            if !exists? {
                return Err(no_such_member(&m));
            }
        }
        Ok(())
    }

    fn groups_api(&self) -> Api<ScimGroup> {
        Api::all(self.client().clone())
    }

    fn shards_api(&self) -> Api<ScimGroupMembers> {
        Api::all(self.client().clone())
    }

    /// Every group in the cache, in no particular order.
    pub fn groups(&self) -> Result<Vec<Arc<ScimGroup>>, ScimError> {
        self.ensure_synced()?;
        Ok(self.inner.groups.state())
    }

    /// Every group in the default list order (SCIM `meta.created`, then id).
    pub fn groups_ordered(&self) -> Result<Vec<Arc<ScimGroup>>, ScimError> {
        self.ensure_synced()?;
        let ids = read_index(&self.inner.group_index).ordered();
        Ok(objects(&self.inner.groups, &ids))
    }

    /// The number of groups, without touching any of them.
    pub fn group_count(&self) -> Result<usize, ScimError> {
        self.ensure_synced()?;
        Ok(read_index(&self.inner.group_index).len())
    }

    /// Groups `skip..skip + take` in the default list order: O(skip + take).
    pub fn groups_page(&self, skip: usize, take: usize) -> Result<Vec<Arc<ScimGroup>>, ScimError> {
        self.ensure_synced()?;
        let ids = read_index(&self.inner.group_index).page(skip, take);
        Ok(objects(&self.inner.groups, &ids))
    }

    /// Groups that may satisfy one of `probes` (fields `index::GROUP_*`; a superset, the
    /// caller checks the attributes), in the default list order. O(hits).
    pub fn groups_probed(&self, probes: &[Probe]) -> Result<Vec<Arc<ScimGroup>>, ScimError> {
        self.ensure_synced()?;
        Ok(probe(&self.inner.groups, &self.inner.group_index, probes))
    }

    pub fn group(&self, id: &str) -> Result<Arc<ScimGroup>, ScimError> {
        self.ensure_synced()?;
        self.inner
            .groups
            .get(id)
            .ok_or_else(|| ScimError::not_found(format!("Group {id} not found")))
    }

    /// All members of a group: inline (hand-written groups) and sharded.
    pub fn group_members(&self, g: &ScimGroup) -> Members {
        let mut members = members_from_slice(&g.spec.members);
        let id = g.metadata.name.as_deref().unwrap_or_default();
        for shard in 0..SHARD_COUNT {
            if let Some(s) = self.inner.shards.get(&shard_name(id, shard)) {
                members.extend(members_from_slice(&s.spec.members));
            }
        }
        members
    }

    /// Whether `member_id` is a member, looking only at the shard it hashes to.
    pub fn is_member(&self, g: &ScimGroup, member_id: &str) -> bool {
        if g.spec.members.iter().any(|m| m.value == member_id) {
            return true;
        }
        let id = g.metadata.name.as_deref().unwrap_or_default();
        self.inner
            .shards
            .get(&shard_name(id, shard_of(member_id)))
            .is_some_and(|s| s.spec.members.iter().any(|m| m.value == member_id))
    }

    fn display_name_taken(&self, name: &str, except_id: Option<&str>) -> bool {
        let key = name.to_lowercase();
        probe(
            &self.inner.groups,
            &self.inner.group_index,
            &[Probe::Field(GROUP_DISPLAY_NAME, key)],
        )
        .iter()
        .any(|g| {
            g.spec.display_name.eq_ignore_ascii_case(name)
                && g.metadata.name.as_deref() != except_id
        })
    }

    pub async fn create_group(
        &self,
        attrs: Map<String, Value>,
        members: Option<Vec<MemberValue>>,
    ) -> Result<Arc<ScimGroup>, ScimError> {
        self.ensure_synced()?;
        let spec = resource::group_spec(attrs, Vec::new(), true)?;
        if let Some(m) = &members {
            self.check_members_exist(&[MemberOp::Add(m.clone())])
                .await?;
        }
        let _claim = self.claim(format!("group:{}", spec.display_name.to_lowercase()))?;
        if self.display_name_taken(&spec.display_name, None) {
            return Err(ScimError::uniqueness(format!(
                "displayName {:?} is already in use",
                spec.display_name
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.claim_name(NameKind::GroupDisplayName, &spec.display_name, &id)
            .await?;
        let display_name = spec.display_name.clone();
        let mut group = ScimGroup::new(&id, spec);
        group.metadata.labels =
            Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into());
        resource::stamp(&mut group.metadata, 1, None);
        let created = with_timeout(self.groups_api().create(&post_params(), &group))
            .await
            .and_then(|r| r.map_err(|e| api_error(e, "Group")));
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                // The name stays free for the client's retry.
                self.release_name(NameKind::GroupDisplayName, &display_name, &id)
                    .await;
                return Err(e);
            }
        };
        if let Some(members) = members.filter(|m| !m.is_empty()) {
            if let Err(e) = self.write_shards(&created, &[MemberOp::Add(members)]).await {
                // Don't leave a half-created group behind a failed request.
                let _ = self
                    .groups_api()
                    .delete(&id, &DeleteParams::default())
                    .await;
                self.release_name(NameKind::GroupDisplayName, &display_name, &id)
                    .await;
                return Err(e);
            }
        }
        self.await_group(&created).await;
        Ok(Arc::new(created))
    }

    /// Update a group with optimistic concurrency. `change` sees the current attributes
    /// (without members) and says what to write; member operations are applied to the
    /// shards once, attribute changes re-applied on the fresh group after a conflict.
    pub async fn update_group(
        &self,
        id: &str,
        if_match: Option<&str>,
        mut change: impl FnMut(&Map<String, Value>) -> Result<GroupWrite, ScimError>,
    ) -> Result<Arc<ScimGroup>, ScimError> {
        // Held until the write is in this replica's cache, so the next writer starts
        // from fresh objects.
        let _serial = self.group_write_lock(id).lock().await;
        let mut current = self.group(id)?;
        let mut members_done = false;
        let mut members_changed = false;
        for _ in 0..MAX_CONFLICT_RETRIES {
            confirm_if_match(&self.groups_api(), &mut current, id, if_match, "Group").await?;
            let meta = ResourceMeta::of(&current.metadata);
            let attrs = resource::group_attributes(&current);
            let write = change(&attrs)?;
            let new_attrs = write.attrs.unwrap_or_else(|| attrs.clone());
            let mut spec = resource::group_spec(new_attrs, current.spec.members.clone(), true)?;
            let renamed = !spec
                .display_name
                .eq_ignore_ascii_case(&current.spec.display_name);
            if renamed {
                if self.display_name_taken(&spec.display_name, Some(id)) {
                    return Err(ScimError::uniqueness(format!(
                        "displayName {:?} is already in use",
                        spec.display_name
                    )));
                }
                self.claim_name(NameKind::GroupDisplayName, &spec.display_name, id)
                    .await?;
            }
            if !members_done {
                // Validate the whole op sequence before touching any shard.
                let mut scratch = Members::new();
                apply_member_ops(&mut scratch, &write.members)?;
                self.check_members_exist(&write.members).await?;
                if !write.members.is_empty() {
                    members_changed = self.write_shards(&current, &write.members).await?;
                }
                members_done = true;
            }
            // Hand-written inline members follow the same operations.
            if !spec.members.is_empty() && !write.members.is_empty() {
                let mut inline = members_from_slice(&spec.members);
                let mut sharded_view = inline.clone();
                apply_member_ops(&mut sharded_view, &write.members)?;
                inline.retain(|k, _| sharded_view.contains_key(k));
                spec.members = members_to_vec(&inline);
            }
            if spec == current.spec && !members_changed {
                return Ok(current);
            }
            let (old_name, new_name) =
                (current.spec.display_name.clone(), spec.display_name.clone());
            let mut obj = (*current).clone();
            obj.spec = spec;
            obj.status = None;
            resource::stamp(&mut obj.metadata, meta.version + 1, Some(&meta.created));
            match with_timeout(self.groups_api().replace(id, &post_params(), &obj)).await {
                Ok(Ok(written)) => {
                    if renamed {
                        self.release_name(NameKind::GroupDisplayName, &old_name, id)
                            .await;
                    }
                    self.await_group(&written).await;
                    return Ok(Arc::new(written));
                }
                Ok(Err(e)) if is_conflict(&e) => {
                    current = Arc::new(
                        with_timeout(self.groups_api().get(id))
                            .await?
                            .map_err(|e| api_error(e, &format!("Group {id}")))?,
                    );
                }
                Ok(Err(e)) => {
                    if renamed {
                        self.release_name(NameKind::GroupDisplayName, &new_name, id)
                            .await;
                    }
                    return Err(api_error(e, "Group"));
                }
                Err(e) => {
                    if renamed {
                        self.release_name(NameKind::GroupDisplayName, &new_name, id)
                            .await;
                    }
                    return Err(e);
                }
            }
        }
        Err(ScimError::Unavailable {
            retry_after_secs: 1,
            detail: "too many concurrent changes to this Group; retry".into(),
        })
    }

    /// Apply member operations to the shards they touch. Returns whether any changed.
    async fn write_shards(&self, group: &ScimGroup, ops: &[MemberOp]) -> Result<bool, ScimError> {
        let shards: Vec<u32> = affected_shards(ops).into_iter().collect();
        let results: Vec<bool> = futures::stream::iter(shards)
            .map(|shard| self.write_shard(group, shard, ops_for_shard(ops, shard)))
            .buffer_unordered(SHARD_COUNT as usize)
            .try_collect()
            .await?;
        Ok(results.into_iter().any(|c| c))
    }

    async fn write_shard(
        &self,
        group: &ScimGroup,
        shard: u32,
        ops: Vec<MemberOp>,
    ) -> Result<bool, ScimError> {
        let gid = group.metadata.name.clone().unwrap_or_default();
        let name = shard_name(&gid, shard);
        let api = self.shards_api();
        let mut current = self.inner.shards.get(&name).map(|s| (*s).clone());
        for _ in 0..MAX_CONFLICT_RETRIES {
            let before = current
                .as_ref()
                .map(|s| members_from_slice(&s.spec.members))
                .unwrap_or_default();
            let mut after = before.clone();
            apply_member_ops(&mut after, &ops)?;
            if after == before {
                return Ok(false);
            }
            let members: Vec<Member> = members_to_vec(&after);
            let result = match &current {
                Some(existing) => {
                    let mut obj = existing.clone();
                    obj.spec.members = members;
                    with_timeout(api.replace(&name, &post_params(), &obj)).await?
                }
                None => {
                    let mut obj = ScimGroupMembers::new(
                        &name,
                        ScimGroupMembersSpec {
                            group: gid.clone(),
                            members,
                        },
                    );
                    obj.metadata.labels = Some(
                        [
                            (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                            (GROUP_LABEL.to_string(), gid.clone()),
                        ]
                        .into(),
                    );
                    obj.metadata.owner_references = Some(vec![OwnerReference {
                        api_version: ScimGroup::api_version(&()).into_owned(),
                        kind: ScimGroup::kind(&()).into_owned(),
                        name: gid.clone(),
                        uid: group.metadata.uid.clone().unwrap_or_default(),
                        controller: Some(true),
                        block_owner_deletion: None,
                    }]);
                    with_timeout(api.create(&post_params(), &obj)).await?
                }
            };
            match result {
                Ok(written) => {
                    if let Some(rv) = written.metadata.resource_version.clone() {
                        let name = name.clone();
                        self.wait_for_cache(|inner| {
                            inner.shards.get(&name).is_some_and(|s| {
                                rv_at_least(s.metadata.resource_version.as_deref(), &rv)
                            })
                        })
                        .await;
                    }
                    return Ok(true);
                }
                Err(e) if is_conflict(&e) => {
                    // Changed (or created) concurrently: re-read it from the API server.
                    current = match with_timeout(api.get(&name)).await? {
                        Ok(s) => Some(s),
                        Err(e) if is_not_found(&e) => None,
                        Err(e) => return Err(api_error(e, "Group members")),
                    };
                }
                Err(e) => return Err(api_error(e, "Group members")),
            }
        }
        Err(ScimError::Unavailable {
            retry_after_secs: 1,
            detail: "too many concurrent changes to this Group; retry".into(),
        })
    }

    /// Delete a group (see `delete_user` for If-Match and the controller's status writes).
    pub async fn delete_group(&self, id: &str, if_match: Option<&str>) -> Result<(), ScimError> {
        let current = self.group(id)?;
        let display_name = current.spec.display_name.clone();
        delete_checked(&self.groups_api(), current, id, if_match, "Group").await?;
        self.release_name(NameKind::GroupDisplayName, &display_name, id)
            .await;
        // The shards are owned by the group (garbage collection removes them); delete
        // them now too so that nothing reads stale members meanwhile.
        let lp = ListParams::default().labels(&format!("{GROUP_LABEL}={id}"));
        if let Ok(Err(e)) = with_timeout(
            self.shards_api()
                .delete_collection(&DeleteParams::default(), &lp),
        )
        .await
        {
            tracing::debug!(error = %e, "deleting member shards; garbage collection will");
        }
        let id = id.to_string();
        self.wait_for_cache(|inner| !inner.groups.contains(&id))
            .await;
        Ok(())
    }

    /// Remove a deleted user from every group that lists it (best effort; Entra usually
    /// removes memberships itself before deleting a user).
    pub async fn remove_member_everywhere(&self, member_id: &str) {
        let Ok(groups) = self.groups() else { return };
        for g in groups.iter().filter(|g| self.is_member(g, member_id)) {
            let gid = g.metadata.name.clone().unwrap_or_default();
            let ops = vec![MemberOp::Remove(vec![member_id.to_string()])];
            let result = self
                .update_group(&gid, None, |_| {
                    Ok(GroupWrite {
                        attrs: None,
                        members: ops.clone(),
                    })
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(group = %gid, error = %e, "could not remove a deleted user from a group");
            }
        }
    }

    async fn await_group(&self, written: &ScimGroup) {
        let Some(rv) = written.metadata.resource_version.clone() else {
            return;
        };
        let id = written.metadata.name.clone().unwrap_or_default();
        self.wait_for_cache(|inner| {
            inner
                .groups
                .get(&id)
                .is_some_and(|g| rv_at_least(g.metadata.resource_version.as_deref(), &rv))
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mv(v: &str) -> MemberValue {
        MemberValue {
            value: v.into(),
            kind: None,
        }
    }

    #[test]
    fn shard_ops_partition_adds_and_removes() {
        let ids: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
        let ops = vec![
            MemberOp::Add(ids.iter().map(|i| mv(i)).collect()),
            MemberOp::Remove(vec![ids[0].clone()]),
        ];
        let shards = affected_shards(&ops);
        assert_eq!(shards.len(), SHARD_COUNT as usize);
        let mut total = Members::new();
        for s in shards {
            let mut m = Members::new();
            apply_member_ops(&mut m, &ops_for_shard(&ops, s)).unwrap();
            assert!(m.keys().all(|k| shard_of(k) == s));
            total.extend(m);
        }
        let mut whole = Members::new();
        apply_member_ops(&mut whole, &ops).unwrap();
        assert_eq!(
            total, whole,
            "applying per shard equals applying to the whole group"
        );
        assert_eq!(total.len(), 199);
    }

    #[tokio::test]
    async fn added_members_must_exist() {
        use crate::crd::{ScimGroupSpec, ScimUser, ScimUserSpec};
        let user = ScimUser::new(
            "u-1",
            ScimUserSpec {
                user_name: "alice".into(),
                external_id: None,
                display_name: None,
                active: None,
                attributes: Map::new(),
            },
        );
        let group = ScimGroup::new(
            "g-1",
            ScimGroupSpec {
                display_name: "G".into(),
                external_id: None,
                members: Vec::new(),
                sharded: false,
                attributes: Map::new(),
            },
        );
        let feed = crate::store::TestFeed::new(vec![user], vec![group]);
        let store = &feed.store;
        let typed = |v: &str, t: &str| MemberValue {
            value: v.into(),
            kind: Some(t.into()),
        };
        // Cache hits need no API server (the test store has none).
        store
            .check_members_exist(&[
                MemberOp::Add(vec![mv("u-1"), typed("g-1", "Group"), mv("g-1")]),
                MemberOp::ReplaceAll(vec![typed("u-1", "user")]),
                MemberOp::Remove(vec!["nobody".into()]),
                MemberOp::RemoveAll,
            ])
            .await
            .unwrap();
        // A value that can't be an object name is missing without asking anyone.
        for (op, named) in [
            (
                MemberOp::Add(vec![mv("u-1"), mv("Not/A Name")]),
                "Not/A Name",
            ),
            (MemberOp::ReplaceAll(vec![mv("UPPER")]), "UPPER"),
        ] {
            let e = store.check_members_exist(&[op]).await.unwrap_err();
            assert_eq!(e.scim_type(), Some(crate::scim::ScimType::InvalidValue));
            assert!(e.to_string().contains(named), "{e}");
        }
        // The type is respected: a user id is not a Group.
        let e = store
            .check_members_exist(&[MemberOp::Add(vec![typed("u-1", "Group")])])
            .await
            .unwrap_err();
        // Not in the cache as a Group: confirmed with the API server, which this test store
        // doesn't have (503), never silently accepted.
        assert!(matches!(e, ScimError::Unavailable { .. }), "{e:?}");
    }

    #[test]
    fn member_helpers() {
        let ops = [
            MemberOp::Add(vec![mv("a"), mv("b")]),
            MemberOp::Remove(vec!["c".into()]),
            MemberOp::ReplaceAll(vec![mv("b"), mv("d")]),
        ];
        let added: Vec<&str> = added_members(&ops)
            .iter()
            .map(|m| m.value.as_str())
            .collect();
        assert_eq!(added, ["a", "b", "d"]);
        assert!(is_object_name("0b6e-4a2f.x"));
        for bad in ["", "A", "a/b", "a b", "é", &"a".repeat(254)] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }

    #[test]
    fn value_ops_touch_only_their_shards() {
        let ops = vec![MemberOp::Add(vec![mv("a")])];
        assert_eq!(affected_shards(&ops), [shard_of("a")].into());
        assert_eq!(
            affected_shards(&[MemberOp::RemoveAll]).len(),
            SHARD_COUNT as usize
        );
    }
}
