//! ScimGroup reads and writes, and the membership shards.
//!
//! Members of a group written through SCIM live in up to `SHARD_COUNT` ScimGroupMembers
//! objects (see `crd::group`), created lazily — a small group has as many shard objects
//! as it needs, at most `SHARD_COUNT` — and owned by the group (garbage-collected with it).
//! A member change touches only the shards that hold its values, and puts new members in
//! one shard with room (`store::placement`), each write under its shard's resourceVersion
//! precondition, so concurrent PATCHes never lose a member; the group object itself is
//! then rewritten (RV precondition) to bump `meta.version`/`lastModified`.
//!
//! ## A member change that fails half-way
//!
//! A change touching several shards is several writes, and the API server has no
//! transaction across objects: the connection can fail after some shards were written.
//! It is not made atomic. That would take an intent record (written first, finished by
//! whoever reads it) that every reader of membership would have to apply, the SCIM store
//! and the controller alike, two more writes of the group object on every multi-shard
//! change, and a second definition of membership. Instead the request fails honestly and
//! its retry finishes it, exactly:
//!
//! - The client is told it failed: 503 with Retry-After (never a 2xx for a change that is
//!   not whole). Entra retries failed requests, and any client must retry a 503.
//! - Every shard written carries the key of the change that wrote it
//!   (`MEMBER_CHANGE_ANNOTATION`: the group, the SCIM version the change applies to, the
//!   operations). The same request retried has the same key as long as nothing else
//!   changed the group (its version only moves once a change is whole), so the retry
//!   skips the shards already done, writes the rest and bumps `meta.version` once: the
//!   end state is the one a single clean request makes, version included, whatever the
//!   operations (even the rare sequences that are not idempotent, such as an add followed
//!   by a removal filtered on `type`).
//! - A retry after another change moved the version applies the operations again on the
//!   shards; every realistic sequence (adds, removals by value, replace-all) is idempotent,
//!   so it lands the same.
//! - What is visible meanwhile is a part of the requested change (each member either as
//!   before or as requested), never anything else. The controller may grant the added
//!   members that were written before the retry: they were asked for.
//! - Failures the client can't fix by retrying are found before the first write: member
//!   ids that don't exist, and a shard that would outgrow an etcd object.
//!
//! ## Replicas whose caches lag
//!
//! A member may sit in any shard, so a removal writes the shards this replica's cache
//! says hold the value. A shard it has not seen yet (another replica just placed the
//! value there) would be missed, and no precondition would catch it: the missed shard is
//! never written. So the write that completes a member change, the group's version bump,
//! also records the resourceVersion it left each shard at
//! (`MEMBER_SHARD_VERSIONS_ANNOTATION`). A member change waits until this replica's cache
//! holds each shard at least at the versions its copy of the group records, writes the
//! shards, and completes with the group's write under that copy's resourceVersion. If
//! another change completed in between, that write conflicts; when the fresh group
//! records other shard versions, the change waits for them and is made again (member
//! operations are idempotent, see above). So every change completed before this one is
//! in its view, without a read of the group per change; one running at the same moment
//! is ordered before or after it, either being a correct answer to concurrent requests.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Resource;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::names::NameKind;
use super::placement::{self, added_members, member_bytes, MAX_SHARD_MEMBER_BYTES};
use super::resource::{self, members_from_slice, members_to_vec, Members, ResourceMeta};
use super::{
    api_error, confirm_if_match, delete_checked, is_conflict, is_not_found, is_object_name,
    objects, read_index, rv_at_least, until_deadline, with_timeout, Probe, Store, FIELD_MANAGER,
    GROUPS, MAX_CONFLICT_RETRIES,
};
use crate::crd::group::{shard_name, GROUP_LABEL, SHARD_COUNT};
use crate::crd::membership::{self, Membership};
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

/// Annotation on a member shard: the key of the member change that last wrote it (see
/// the module doc and [`change_key`]).
pub const MEMBER_CHANGE_ANNOTATION: &str = "scim.kubescim.io/member-change";

/// Key of one member change: the group, the SCIM version it applies to, the operations
/// (their Debug form: the same for the same request on every replica of one build).
fn change_key(group_id: &str, version: u64, ops: &[MemberOp]) -> String {
    struct Hashing(Sha256);
    impl std::fmt::Write for Hashing {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    // Writing into a hasher can't fail.
    let _ = write!(h, "{group_id}\n{version}\n{ops:?}");
    hex::encode(&h.0.finalize()[..12])
}

/// What one shard needs for the member change `key`.
#[derive(Debug, Clone, PartialEq)]
enum ShardStep {
    /// An earlier attempt of this very change wrote it (the key is on the shard).
    Earlier,
    /// The change makes no difference to this shard.
    Unchanged,
    /// Write these members, stamped with the key.
    Write(Vec<Member>),
}

/// The step of the member change `key` (operations `ops`, already restricted to this
/// shard) on shard `index` of `group`, whose object is now `current` (None: none yet).
/// The change starts from the members the shard gives the group (`crd::membership`): an
/// object that doesn't belong to the group (left from an earlier group with the same id,
/// or naming another group) gives none, and its key, from another group, is not this
/// change's.
fn shard_step(
    group: &ScimGroup,
    index: u32,
    current: Option<&ScimGroupMembers>,
    ops: &[MemberOp],
    key: &str,
) -> Result<ShardStep, ScimError> {
    if stamped_with(group, index, current, key) {
        return Ok(ShardStep::Earlier);
    }
    let before = membership::shard_members(group, index, current);
    let mut after = before.clone();
    apply_member_ops(&mut after, ops)?;
    Ok(if after == before {
        ShardStep::Unchanged
    } else {
        ShardStep::Write(members_to_vec(&after))
    })
}

/// Whether shard `index` of `group` (the object `shard`, if any) was written by an earlier
/// attempt of the member change `key`. An object that doesn't belong to the group (left
/// from an earlier group with the same id, or naming another group) carries another
/// group's key, never this change's.
fn stamped_with(
    group: &ScimGroup,
    index: u32,
    shard: Option<&ScimGroupMembers>,
    key: &str,
) -> bool {
    shard
        .filter(|s| membership::shard_index(group, s) == Some(index))
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(MEMBER_CHANGE_ANNOTATION))
        .is_some_and(|k| k == key)
}

/// Make `obj` shard `index` of `group` as the store writes shards: its `spec.group`, its
/// labels, and the group (by uid) as its only ScimGroup owner. An object taken over from
/// an earlier group with the same id, or written by hand, gets them too.
fn claim_shard(obj: &mut ScimGroupMembers, group: &ScimGroup) {
    let gid = group.metadata.name.clone().unwrap_or_default();
    obj.spec.group.clone_from(&gid);
    let labels = obj.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string());
    labels.insert(GROUP_LABEL.to_string(), gid.clone());
    // The store's groups come from the API server and carry their uid; without one there
    // is no owner to name.
    let Some(uid) = group.metadata.uid.clone() else {
        return;
    };
    let kind = ScimGroup::kind(&());
    let owners = obj.metadata.owner_references.get_or_insert_with(Vec::new);
    owners.retain(|o| o.kind != kind);
    owners.push(OwnerReference {
        api_version: ScimGroup::api_version(&()).into_owned(),
        kind: kind.into_owned(),
        name: gid,
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    });
}

/// Annotation on a member shard: the shards the member change that last wrote it placed
/// new members in (`placement::Split::placing`, as `3,5`), for a retry of that change.
pub const MEMBER_PLACING_ANNOTATION: &str = "scim.kubescim.io/member-change-placing";

/// Annotation on a ScimGroup: the resourceVersion of each member shard as the last member
/// change to complete left it (`<index>:<resourceVersion>,…`). Before it changes members,
/// a replica waits until its own cache holds every shard at least at that version: a
/// member another replica placed in a shard this one has not seen yet could otherwise be
/// missed by a removal (see the module doc).
pub const MEMBER_SHARD_VERSIONS_ANNOTATION: &str = "scim.kubescim.io/member-shard-versions";

/// The shard versions recorded on a group ([`MEMBER_SHARD_VERSIONS_ANNOTATION`]); entries
/// that don't parse (a hand edit) are ignored.
fn recorded_shard_versions(meta: &ObjectMeta) -> BTreeMap<u32, String> {
    let Some(value) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(MEMBER_SHARD_VERSIONS_ANNOTATION))
    else {
        return BTreeMap::new();
    };
    value
        .split(',')
        .filter_map(|entry| {
            let (index, rv) = entry.trim().split_once(':')?;
            let index: u32 = index.parse().ok().filter(|i| *i < SHARD_COUNT)?;
            let valid = !rv.is_empty() && rv.len() <= 32 && rv.bytes().all(|b| b.is_ascii_digit());
            valid.then(|| (index, rv.to_string()))
        })
        .collect()
}

/// Record on `meta` the versions a member change left its shards at (`written`), over
/// those recorded before (a version only moves forward), without the shards found gone.
fn record_shard_versions(
    meta: &mut ObjectMeta,
    written: &BTreeMap<u32, String>,
    gone: &BTreeSet<u32>,
) {
    let mut versions = recorded_shard_versions(meta);
    versions.retain(|i, _| !gone.contains(i));
    for (index, rv) in written.iter().filter(|(_, rv)| !rv.is_empty()) {
        let newer = versions
            .get(index)
            .is_none_or(|have| rv_at_least(Some(rv), have));
        if newer {
            versions.insert(*index, rv.clone());
        }
    }
    let value = versions
        .iter()
        .map(|(i, rv)| format!("{i}:{rv}"))
        .collect::<Vec<_>>()
        .join(",");
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    if value.is_empty() {
        annotations.remove(MEMBER_SHARD_VERSIONS_ANNOTATION);
    } else {
        annotations.insert(MEMBER_SHARD_VERSIONS_ANNOTATION.to_string(), value);
    }
}

/// Whether the cache holds shard object `name` at resourceVersion `rv` or later.
fn shard_cached_at(inner: &super::Inner, name: &str, rv: &str) -> bool {
    inner
        .shards
        .get(name)
        .is_some_and(|s| rv_at_least(s.metadata.resource_version.as_deref(), rv))
}

/// Requests in flight at once for one group's shards (reads on a cache miss, writes).
const SHARD_REQUESTS_IN_FLIGHT: usize = 16;

/// What a member change stamps on every shard it writes.
#[derive(Debug, Clone)]
struct Stamp {
    key: String,
    placing: BTreeSet<u32>,
}

/// Put the stamp of the member change that writes a shard on it.
fn stamp_change(meta: &mut ObjectMeta, stamp: &Stamp) {
    let placing = stamp
        .placing
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(MEMBER_CHANGE_ANNOTATION.to_string(), stamp.key.clone());
    annotations.insert(MEMBER_PLACING_ANNOTATION.to_string(), placing);
}

/// What an earlier attempt of the member change `key` left on the shards of `group`
/// (`shards[i]`: the object named shard `i`), if it wrote any.
fn earlier_attempt(
    group: &ScimGroup,
    shards: &[Option<&ScimGroupMembers>],
    key: &str,
) -> Option<placement::Earlier> {
    let done: Vec<bool> = (0..SHARD_COUNT)
        .map(|i| stamped_with(group, i, shards.get(i as usize).copied().flatten(), key))
        .collect();
    let first = done.iter().position(|d| *d)?;
    let placing = shards[first]
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(MEMBER_PLACING_ANNOTATION))
        .map(|p| {
            p.split(',')
                .filter_map(|i| i.trim().parse().ok())
                .filter(|i| *i < SHARD_COUNT)
                .collect()
        })
        .unwrap_or_default();
    Some(placement::Earlier { done, placing })
}

/// Refuse (400) a change that would make a shard too large to store, before anything is
/// written (the API server would refuse that shard after the others were written).
/// Computes the shard's new members only when a cheap bound doesn't settle it.
fn check_shard_size(before: &Members, ops: &[MemberOp]) -> Result<(), ScimError> {
    let growth: usize = ops
        .iter()
        .flat_map(|op| match op {
            MemberOp::Add(v) | MemberOp::ReplaceAll(v) => v.as_slice(),
            _ => &[],
        })
        .map(|m| member_bytes(&m.value, m.kind.as_deref()))
        .sum();
    if growth == 0 {
        return Ok(());
    }
    let size = placement::members_bytes;
    if size(before) + growth <= MAX_SHARD_MEMBER_BYTES {
        return Ok(());
    }
    let mut after = before.clone();
    apply_member_ops(&mut after, ops)?;
    if size(&after) > MAX_SHARD_MEMBER_BYTES {
        return Err(ScimError::invalid_value(format!(
            "the group would have too many members to store (one of its {SHARD_COUNT} member shards would exceed {MAX_SHARD_MEMBER_BYTES} bytes)"
        )));
    }
    Ok(())
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
    /// caller checks the attributes), in the default list order. O(hits). An `id` or
    /// `displayName` probe the cache has no answer for is confirmed against the API
    /// server (see `Store::probed`).
    pub async fn groups_probed(&self, probes: &[Probe]) -> Result<Vec<Arc<ScimGroup>>, ScimError> {
        self.ensure_synced()?;
        self.probed(&GROUPS, probes).await
    }

    /// The group `id` from the cache; on a miss, from the API server.
    pub async fn group(&self, id: &str) -> Result<Arc<ScimGroup>, ScimError> {
        self.confirmed(&GROUPS, id).await
    }

    /// A group and, when `with_members`, its members, for a GET. On a cache miss both
    /// come from the API server: this replica's shards of a group it hasn't seen yet are
    /// missing or stale too.
    pub async fn group_read(
        &self,
        id: &str,
        with_members: bool,
    ) -> Result<(Arc<ScimGroup>, Option<Members>), ScimError> {
        self.ensure_synced()?;
        if let Some(g) = self.inner.groups.get(id) {
            let members = with_members.then(|| self.group_members(&g));
            return Ok((g, members));
        }
        let g = self.group(id).await?;
        if !with_members {
            return Ok((g, None));
        }
        // By name, as the cache is read: the objects that can be its shards.
        let api = self.shards_api();
        let fetched: Vec<Result<Option<ScimGroupMembers>, ScimError>> =
            futures::stream::iter(membership::shard_names(id))
                .map(|name| {
                    let api = api.clone();
                    async move {
                        with_timeout(api.get_opt(&name))
                            .await?
                            .map_err(|e| api_error(e, "Group members"))
                    }
                })
                .buffer_unordered(SHARD_REQUESTS_IN_FLIGHT)
                .collect()
                .await;
        let mut shards = Vec::new();
        for s in fetched {
            shards.extend(s?);
        }
        let members = Membership::of(&g, &shards).to_scim();
        Ok((g, Some(members)))
    }

    /// The cached objects that can be shards of group `id` (by name).
    fn cached_shards(&self, id: &str) -> Vec<Arc<ScimGroupMembers>> {
        membership::shard_names(id)
            .filter_map(|name| self.inner.shards.get(&name))
            .collect()
    }

    /// All members of a group (see `crd::membership`), as SCIM shows them.
    pub fn group_members(&self, g: &ScimGroup) -> Members {
        let id = g.metadata.name.as_deref().unwrap_or_default();
        let shards = self.cached_shards(id);
        Membership::of(g, shards.iter().map(|s| &**s)).to_scim()
    }

    /// Whether `member_id` is a member (of any type), without building the member list;
    /// the same answer as [`Store::group_members`] (see `crd::membership`).
    pub fn is_member(&self, g: &ScimGroup, member_id: &str) -> bool {
        let id = g.metadata.name.as_deref().unwrap_or_default();
        let shards = self.cached_shards(id);
        membership::member_kind(g, shards.iter().map(|s| &**s), member_id).is_some()
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
        if self.name_taken(&GROUPS, &spec.display_name, None).await? {
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
        let mut created = created;
        if let Some(members) = members.filter(|m| !m.is_empty()) {
            // Version 0: the key of the change that made the group can't be that of a
            // later PATCH of version 1.
            let result = match self
                .write_shards(&created, 0, &[MemberOp::Add(members)])
                .await
            {
                Ok(written) => self.record_member_shards(&created, &written).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(Some(recorded)) => created = recorded,
                Ok(None) => {}
                Err(e) => {
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
        }
        self.await_group(&created).await;
        Ok(Arc::new(created))
    }

    /// Record the shards a new group's members went to on the group
    /// ([`MEMBER_SHARD_VERSIONS_ANNOTATION`]); its SCIM version stays 1.
    async fn record_member_shards(
        &self,
        created: &ScimGroup,
        written: &BTreeMap<u32, String>,
    ) -> Result<Option<ScimGroup>, ScimError> {
        if written.is_empty() {
            return Ok(None);
        }
        let id = created.metadata.name.as_deref().unwrap_or_default();
        // The group as just created, then as re-read after a conflict (the controller
        // writes its status meanwhile).
        let mut obj = created.clone();
        for _ in 0..MAX_CONFLICT_RETRIES {
            record_shard_versions(&mut obj.metadata, written, &BTreeSet::new());
            obj.status = None;
            match with_timeout(self.groups_api().replace(id, &post_params(), &obj)).await? {
                Ok(recorded) => return Ok(Some(recorded)),
                Err(e) if is_conflict(&e) => {
                    obj = with_timeout(self.groups_api().get(id))
                        .await?
                        .map_err(|e| api_error(e, &format!("Group {id}")))?;
                }
                Err(e) => return Err(api_error(e, "Group")),
            }
        }
        Err(ScimError::Unavailable {
            retry_after_secs: 1,
            detail: "too many concurrent changes to this Group; retry".into(),
        })
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
        // Bounded by the request's deadline: behind a write hung on the API server, the
        // queue would otherwise outlast the client.
        let _serial = until_deadline(self.group_write_lock(id).lock()).await?;
        // A stale cached version fails the write's resourceVersion preconditions and is
        // re-read below; a missing one is read from the API server here.
        let mut current = self.group(id).await?;
        let mut members_done = false;
        let mut written = BTreeMap::new();
        let mut gone = BTreeSet::new();
        let mut awaited = BTreeMap::new();
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
                if self
                    .name_taken(&GROUPS, &spec.display_name, Some(id))
                    .await?
                {
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
                    // From the shards as the member changes this copy of the group
                    // knows left them. A change completed since (on another replica)
                    // moved the group: the write below then conflicts, and the change is
                    // made again from there.
                    awaited = recorded_shard_versions(&current.metadata);
                    gone.extend(self.await_member_shards(&current, &awaited).await?);
                    let again = self
                        .write_shards(&current, meta.version, &write.members)
                        .await?;
                    written.extend(again);
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
            if spec == current.spec && written.is_empty() {
                return Ok(current);
            }
            let (old_name, new_name) =
                (current.spec.display_name.clone(), spec.display_name.clone());
            let mut obj = (*current).clone();
            obj.spec = spec;
            obj.status = None;
            resource::stamp(&mut obj.metadata, meta.version + 1, Some(&meta.created));
            record_shard_versions(&mut obj.metadata, &written, &gone);
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
                    // Another member change completed meanwhile (not just a status
                    // write): its shards may hold values this change has not seen.
                    if members_done && recorded_shard_versions(&current.metadata) != awaited {
                        members_done = false;
                    }
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

    /// Apply member operations to the shards they touch, for a group at SCIM version
    /// `version`. Returns the shards the change wrote, by this call or by an earlier
    /// attempt of the same change that failed before the group's version moved (see the
    /// module doc), with their resourceVersions: when there are any, the group's version
    /// is owed a bump, and the group records them ([`MEMBER_SHARD_VERSIONS_ANNOTATION`]).
    async fn write_shards(
        &self,
        group: &ScimGroup,
        version: u64,
        ops: &[MemberOp],
    ) -> Result<BTreeMap<u32, String>, ScimError> {
        let gid = group.metadata.name.clone().unwrap_or_default();
        let cached: Vec<Option<Arc<ScimGroupMembers>>> = membership::shard_names(&gid)
            .map(|name| self.inner.shards.get(&name))
            .collect();
        let refs: Vec<Option<&ScimGroupMembers>> = cached.iter().map(Option::as_deref).collect();
        let key = change_key(&gid, version, ops);
        let earlier = earlier_attempt(group, &refs, &key);
        let split = placement::split(
            group,
            &refs,
            earlier.as_ref(),
            ops,
            self.inner.shard_fill_bytes,
        );
        for (shard, ops) in &split.parts {
            let before = membership::shard_members(group, *shard, refs[*shard as usize]);
            check_shard_size(&before, ops)?;
        }
        let stamp = Stamp {
            key,
            placing: split.placing,
        };
        // The shards receiving new members first, then the rest: a retry can then tell a
        // new member not yet written from one the change took out again (see
        // `placement::split`).
        let (first, rest): (Vec<_>, Vec<_>) = split
            .parts
            .into_iter()
            .partition(|(shard, _)| stamp.placing.contains(shard));
        let mut written = BTreeMap::new();
        let stamp = &stamp;
        for phase in [first, rest] {
            // Every write is seen through before answering, also after one failed: a
            // write abandoned in flight may still land, and the answer should follow
            // what did.
            let results: Vec<(u32, Result<Option<String>, ScimError>)> =
                futures::stream::iter(phase)
                    .map(|(shard, ops)| async move {
                        (shard, self.write_shard(group, shard, ops, stamp).await)
                    })
                    .buffer_unordered(SHARD_REQUESTS_IN_FLIGHT)
                    .collect()
                    .await;
            for (shard, r) in results {
                if let Some(rv) = r? {
                    written.insert(shard, rv);
                }
            }
        }
        Ok(written)
    }

    /// Wait until this replica's cache holds each shard of `group` at least at the version
    /// the group records for it (`recorded`, its [`MEMBER_SHARD_VERSIONS_ANNOTATION`]), so
    /// that a member change starts from every member stored by the changes completed
    /// before it, on any replica. Returns the recorded shards found deleted (their record
    /// is dropped); 503 when the cache does not catch up in time (its watch is down).
    async fn await_member_shards(
        &self,
        group: &ScimGroup,
        recorded: &BTreeMap<u32, String>,
    ) -> Result<BTreeSet<u32>, ScimError> {
        let gid = group.metadata.name.clone().unwrap_or_default();
        let want: Vec<(u32, String, &str)> = recorded
            .iter()
            .map(|(i, rv)| (*i, shard_name(&gid, *i), rv.as_str()))
            .collect();
        let seen = shard_cached_at;
        if self
            .wait_for_cache(|inner| want.iter().all(|(_, name, rv)| seen(inner, name, rv)))
            .await
        {
            return Ok(BTreeSet::new());
        }
        // Behind: a shard deleted since (by hand) is fine, anything else is not.
        let mut gone = BTreeSet::new();
        for (i, name, rv) in &want {
            if seen(&self.inner, name, rv) {
                continue;
            }
            match with_timeout(self.shards_api().get_opt(name)).await? {
                Ok(None) => {
                    gone.insert(*i);
                }
                Ok(Some(_)) => {
                    return Err(ScimError::Unavailable {
                        retry_after_secs: 1,
                        detail: "this replica has not yet seen the group's latest members; retry"
                            .into(),
                    })
                }
                Err(e) => return Err(api_error(e, "Group members")),
            }
        }
        Ok(gone)
    }

    /// Write one shard's part of the member change `stamp`. Returns the shard's
    /// resourceVersion when it changed, by this call or by an earlier attempt of the same
    /// change; None when the change makes no difference to it.
    async fn write_shard(
        &self,
        group: &ScimGroup,
        shard: u32,
        ops: Vec<MemberOp>,
        stamp: &Stamp,
    ) -> Result<Option<String>, ScimError> {
        let gid = group.metadata.name.clone().unwrap_or_default();
        let name = shard_name(&gid, shard);
        let api = self.shards_api();
        let mut current = self.inner.shards.get(&name).map(|s| (*s).clone());
        for _ in 0..MAX_CONFLICT_RETRIES {
            let members = match shard_step(group, shard, current.as_ref(), &ops, &stamp.key)? {
                ShardStep::Earlier => {
                    let rv = current
                        .as_ref()
                        .and_then(|s| s.metadata.resource_version.clone());
                    return Ok(Some(rv.unwrap_or_default()));
                }
                ShardStep::Unchanged => return Ok(None),
                ShardStep::Write(members) => members,
            };
            let replacing = current.is_some();
            let result = match &current {
                Some(existing) => {
                    let mut obj = existing.clone();
                    obj.spec.members = members;
                    claim_shard(&mut obj, group);
                    stamp_change(&mut obj.metadata, stamp);
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
                    claim_shard(&mut obj, group);
                    stamp_change(&mut obj.metadata, stamp);
                    with_timeout(api.create(&post_params(), &obj)).await?
                }
            };
            match result {
                Ok(written) => {
                    let rv = written
                        .metadata
                        .resource_version
                        .clone()
                        .unwrap_or_default();
                    self.wait_for_cache(|inner| shard_cached_at(inner, &name, &rv))
                        .await;
                    return Ok(Some(rv));
                }
                // Changed or created concurrently, or deleted since the cache saw it (a
                // shard of an earlier group with the same id, garbage-collected): re-read
                // it from the API server.
                Err(e) if is_conflict(&e) || replacing && is_not_found(&e) => {
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
        let current = self.group(id).await?;
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
    use crate::crd::group::shard_of;

    fn mv(v: &str) -> MemberValue {
        MemberValue {
            value: v.into(),
            kind: None,
        }
    }

    fn a_user(id: &str, user_name: &str) -> crate::crd::ScimUser {
        crate::crd::ScimUser::new(
            id,
            crate::crd::ScimUserSpec {
                user_name: user_name.into(),
                external_id: None,
                display_name: None,
                active: None,
                attributes: Map::new(),
            },
        )
    }

    fn a_group(id: &str, display_name: &str, sharded: bool) -> ScimGroup {
        ScimGroup::new(
            id,
            crate::crd::ScimGroupSpec {
                display_name: display_name.into(),
                external_id: None,
                members: Vec::new(),
                sharded,
                attributes: Map::new(),
            },
        )
    }

    /// Behind a frozen API server a group's member PATCHes queue on its write lock, one
    /// after the other's hung write; each still ends at its own request's deadline, with a
    /// 503 (before, the waits added up: the sixth of six answered after 55 s).
    #[tokio::test(start_paused = true)]
    async fn queued_group_writes_end_at_their_deadline() {
        let users = (0..6)
            .map(|i| a_user(&format!("u-{i}"), &format!("user{i}")))
            .collect();
        let group = a_group("g-1", "G", true);
        let feed = crate::store::TestFeed::frozen(users, vec![group]);
        let start = tokio::time::Instant::now();
        let deadline = start + std::time::Duration::from_secs(10);
        let patches = (0..6).map(|i| {
            let store = feed.store.clone();
            crate::store::within_deadline(deadline, async move {
                store
                    .update_group("g-1", None, |_| {
                        Ok(GroupWrite {
                            attrs: None,
                            members: vec![MemberOp::Add(vec![mv(&format!("u-{i}"))])],
                        })
                    })
                    .await
            })
        });
        for r in futures::future::join_all(patches).await {
            assert!(matches!(r, Err(ScimError::Unavailable { .. })), "{r:?}");
        }
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn added_members_must_exist() {
        let feed = crate::store::TestFeed::new(
            vec![a_user("u-1", "alice")],
            vec![a_group("g-1", "G", false)],
        );
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
        // The type is respected: a user id is not a Group. Not in the cache as a Group:
        // confirmed with the API server, which has none either.
        let e = store
            .check_members_exist(&[MemberOp::Add(vec![typed("u-1", "Group")])])
            .await
            .unwrap_err();
        assert_eq!(e.scim_type(), Some(crate::scim::ScimType::InvalidValue));
        // A group the API server has although this replica's cache doesn't yet is a member.
        let mut fresh = a_group("g-2", "G2", false);
        fresh.metadata.annotations = Some(Default::default());
        feed.api_has("scimgroups", &fresh);
        store
            .check_members_exist(&[MemberOp::Add(vec![typed("g-2", "Group")])])
            .await
            .unwrap();
        // When the API server can't be asked, a miss is never silently accepted: 503.
        let cut_off = crate::store::TestFeed::unreachable(vec![], vec![]);
        let e = cut_off
            .store
            .check_members_exist(&[MemberOp::Add(vec![mv("u-1")])])
            .await
            .unwrap_err();
        assert!(matches!(e, ScimError::Unavailable { .. }), "{e:?}");
    }

    /// The member operations of a SCIM PATCH body, as the handler makes them.
    fn member_ops(ops: Value) -> Vec<MemberOp> {
        let req = crate::scim::patch::PatchRequest::from_json(&serde_json::json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": ops
        }))
        .unwrap();
        let mut attrs = Map::new();
        attrs.insert("displayName".into(), "G".into());
        crate::scim::patch::apply_patch(&mut attrs, crate::scim::schema::ResourceKind::Group, &req)
            .unwrap()
            .members
    }

    /// Group "g" with uid "g-uid", no inline members.
    fn group_g() -> ScimGroup {
        crate::crd::membership::fixtures::group("g", Some("g-uid"), Vec::new())
    }

    /// Runs the member change `key` on `shards` as `write_shards` does, on the shards in
    /// `only` (every affected one when None), as if the writes to the others failed.
    /// Returns whether the group's version is owed a bump, and the shards the change
    /// placed new members in (written first).
    fn run_change(
        shards: &mut std::collections::BTreeMap<u32, ScimGroupMembers>,
        ops: &[MemberOp],
        key: &str,
        only: Option<&BTreeSet<u32>>,
    ) -> (bool, BTreeSet<u32>) {
        let group = group_g();
        let mut owed = false;
        let refs: Vec<Option<&ScimGroupMembers>> =
            (0..SHARD_COUNT).map(|i| shards.get(&i)).collect();
        let earlier = earlier_attempt(&group, &refs, key);
        let split = placement::split(
            &group,
            &refs,
            earlier.as_ref(),
            ops,
            crate::store::DEFAULT_SHARD_FILL_BYTES as usize,
        );
        let stamp = Stamp {
            key: key.to_owned(),
            placing: split.placing.clone(),
        };
        for (shard, shard_ops) in split.parts {
            if only.is_some_and(|o| !o.contains(&shard)) {
                continue;
            }
            let step = shard_step(&group, shard, shards.get(&shard), &shard_ops, key);
            match step.unwrap() {
                ShardStep::Earlier => owed = true,
                ShardStep::Unchanged => {}
                ShardStep::Write(members) => {
                    let s = shards.entry(shard).or_insert_with(|| {
                        ScimGroupMembers::new(
                            &shard_name("g", shard),
                            ScimGroupMembersSpec {
                                group: "g".into(),
                                members: Vec::new(),
                            },
                        )
                    });
                    s.spec.members = members;
                    claim_shard(s, &group);
                    stamp_change(&mut s.metadata, &stamp);
                    owed = true;
                }
            }
        }
        (owed, split.placing)
    }

    /// The group's members as every reader sees them.
    fn membership(shards: &std::collections::BTreeMap<u32, ScimGroupMembers>) -> Members {
        let group = group_g();
        crate::crd::membership::Membership::of(&group, shards.values()).to_scim()
    }

    /// Issue 10, item 4: a member change that failed after some of its shards were
    /// written, retried, ends exactly as one clean request: the same members, and the
    /// version owed one bump. Whatever subset of shards the failed attempt wrote.
    #[test]
    fn shard_versions_are_recorded_forward_only_and_read_defensively() {
        let mut meta = ObjectMeta::default();
        assert!(recorded_shard_versions(&meta).is_empty());
        let written = |pairs: &[(u32, &str)]| -> BTreeMap<u32, String> {
            pairs.iter().map(|(i, rv)| (*i, rv.to_string())).collect()
        };
        record_shard_versions(
            &mut meta,
            &written(&[(0, "100"), (5, "90")]),
            &BTreeSet::new(),
        );
        // An older version never replaces a newer one; an empty one is not recorded.
        record_shard_versions(
            &mut meta,
            &written(&[(0, "99"), (5, "120"), (7, "")]),
            &BTreeSet::new(),
        );
        assert_eq!(
            recorded_shard_versions(&meta),
            written(&[(0, "100"), (5, "120")])
        );
        // Shards found deleted are dropped.
        record_shard_versions(&mut meta, &BTreeMap::new(), &BTreeSet::from([0]));
        assert_eq!(recorded_shard_versions(&meta), written(&[(5, "120")]));
        record_shard_versions(&mut meta, &BTreeMap::new(), &BTreeSet::from([5]));
        assert!(meta
            .annotations
            .as_ref()
            .is_some_and(|a| !a.contains_key(MEMBER_SHARD_VERSIONS_ANNOTATION)));
        // A hand edit: junk, indices out of range and non-numeric versions are ignored.
        meta.annotations = Some(
            [(
                MEMBER_SHARD_VERSIONS_ANNOTATION.to_string(),
                format!(
                    "x,3:12, 4:abc,{SHARD_COUNT}:5,:7,2:,1:99999999999999999999999999999999999"
                ),
            )]
            .into(),
        );
        assert_eq!(recorded_shard_versions(&meta), written(&[(3, "12")]));
    }

    #[test]
    fn a_retried_partial_member_change_ends_as_one_clean_change() {
        let ids: Vec<String> = (0..80).map(|i| format!("user-{i:02}")).collect();
        let mut initial = std::collections::BTreeMap::new();
        let mut start = Members::new();
        for id in &ids[..40] {
            start.insert(id.clone(), None);
        }
        start.insert("typed".into(), Some("Group".into()));
        for (shard, members) in start.iter().fold(
            std::collections::BTreeMap::<u32, Members>::new(),
            |mut acc, (id, kind)| {
                acc.entry(shard_of(id))
                    .or_default()
                    .insert(id.clone(), kind.clone());
                acc
            },
        ) {
            initial.insert(
                shard,
                ScimGroupMembers::new(
                    &shard_name("g", shard),
                    ScimGroupMembersSpec {
                        group: "g".into(),
                        members: members_to_vec(&members),
                    },
                ),
            );
        }
        let value = |ids: &[String]| -> Vec<Value> {
            ids.iter()
                .map(|i| serde_json::json!({"value": i}))
                .collect()
        };
        let changes = [
            // Entra: many adds and removals by value in one PATCH.
            member_ops(serde_json::json!([
                {"op": "Add", "path": "members", "value": value(&ids[40..])},
                {"op": "Remove", "path": "members", "value": value(&ids[..10])}
            ])),
            // A PUT with members.
            vec![MemberOp::ReplaceAll(
                ids[20..60]
                    .iter()
                    .map(|i| MemberValue {
                        value: i.clone(),
                        kind: None,
                    })
                    .collect(),
            )],
            // Not idempotent: applied twice, the nested group "typed" comes back as a
            // User (an add without a type keeps a type it finds, or makes a User).
            member_ops(serde_json::json!([
                {"op": "add", "path": "members", "value": [{"value": "typed"}]},
                {"op": "remove", "path": "members[type eq \"Group\"]"}
            ])),
        ];
        for (n, ops) in changes.iter().enumerate() {
            let key = change_key("g", 7, ops);
            let mut clean = initial.clone();
            let (owed, placing) = run_change(&mut clean, ops, &key, None);
            assert!(owed);
            // The shards the change really writes, in the order it writes them (the
            // placing ones first); the failed attempt wrote some of them: those of the
            // first phase, or all of those and some of the second.
            let changed = |s: &u32| {
                clean.get(s).map(|x| &x.spec.members) != initial.get(s).map(|x| &x.spec.members)
            };
            let (first, rest): (Vec<u32>, Vec<u32>) = (0..SHARD_COUNT)
                .filter(changed)
                .partition(|s| placing.contains(s));
            let written: Vec<u32> = first.iter().chain(&rest).copied().collect();
            assert!(
                written.len() > 2 || n == 2,
                "change {n} writes several shards: {written:?}"
            );
            let subsets = [
                vec![written[0]],
                written[..written.len().div_ceil(2)].to_vec(),
                first.iter().chain(rest.iter().skip(1)).copied().collect(),
                written.clone(),
            ];
            for subset in subsets.into_iter().filter(|s| !s.is_empty()) {
                let subset: BTreeSet<u32> = subset.into_iter().collect();
                let mut faulted = initial.clone();
                run_change(&mut faulted, ops, &key, Some(&subset));
                assert_ne!(
                    membership(&faulted),
                    membership(&initial),
                    "change {n}: the failed attempt left part of it visible"
                );
                assert!(
                    run_change(&mut faulted, ops, &key, None).0,
                    "change {n}: the retry owes the version its bump"
                );
                assert_eq!(
                    membership(&faulted),
                    membership(&clean),
                    "change {n}, first attempt wrote shards {subset:?}"
                );
            }
        }
        // Why the key: re-applying the non-idempotent change on the shard it already
        // changed (as a retry without the key would) ends elsewhere.
        let ops = &changes[2];
        let mut twice = initial.clone();
        run_change(&mut twice, ops, &change_key("g", 7, ops), None);
        run_change(&mut twice, ops, &change_key("g", 8, ops), None);
        let mut once = initial.clone();
        run_change(&mut once, ops, &change_key("g", 7, ops), None);
        assert_ne!(membership(&twice), membership(&once));
        // A repeat of a clean request (the version moved) is a new change.
        assert_ne!(change_key("g", 7, ops), change_key("g", 8, ops));
        assert_ne!(change_key("g", 7, ops), change_key("h", 7, ops));
        assert_ne!(change_key("g", 7, ops), change_key("g", 7, &changes[0]));
    }

    /// The writer starts a shard from what it gives the group (`crd::membership`): a
    /// shard left by an earlier group with the same id is written over from empty (its
    /// change key, from that group, is not this change's), and entries that never
    /// counted are dropped; the written shard is the group's.
    #[test]
    fn the_writer_starts_from_the_members_a_shard_gives_the_group() {
        use crate::crd::membership::fixtures::{id_not_in, ids_in, m, shard};
        let g = group_g();
        let in_3 = ids_in(3, 2);
        let elsewhere = id_not_in(3);
        let ops = vec![MemberOp::Add(vec![mv(&in_3[1])])];
        let key = change_key("g", 4, &ops);
        let mut stale = shard(
            &shard_name("g", 3),
            "g",
            Some("earlier-g"),
            vec![m(&in_3[0], None), m(&elsewhere, None)],
        );
        stamp_change(
            &mut stale.metadata,
            &Stamp {
                key: key.clone(),
                placing: BTreeSet::new(),
            },
        );
        let value = |m: &[Member]| m.iter().map(|m| m.value.clone()).collect::<Vec<_>>();
        match shard_step(&g, 3, Some(&stale), &ops, &key).unwrap() {
            ShardStep::Write(members) => assert_eq!(value(&members), [in_3[1].clone()]),
            other => panic!("{other:?}"),
        }
        // Taken over, it is the group's, and every entry it holds counts and is kept.
        let mut taken = stale.clone();
        claim_shard(&mut taken, &g);
        assert_eq!(
            membership::shard_index(&g, &taken),
            Some(3),
            "the written shard belongs to the group"
        );
        let owners = taken.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "g-uid");
        assert_eq!(taken.metadata.labels.as_ref().unwrap()[GROUP_LABEL], "g");
        let mut kept = vec![in_3[0].clone(), in_3[1].clone(), elsewhere.clone()];
        kept.sort();
        match shard_step(&g, 3, Some(&taken), &ops, "another change").unwrap() {
            ShardStep::Write(members) => assert_eq!(value(&members), kept),
            other => panic!("{other:?}"),
        }
        // Its own earlier attempt of the same change is recognised on a shard it owns.
        stamp_change(
            &mut taken.metadata,
            &Stamp {
                key: key.clone(),
                placing: BTreeSet::new(),
            },
        );
        assert_eq!(
            shard_step(&g, 3, Some(&taken), &ops, &key).unwrap(),
            ShardStep::Earlier
        );
    }

    #[test]
    fn a_shard_too_large_to_store_is_refused_before_any_write() {
        let big: Members = (0..20_000).map(|i| (format!("{:036}", i), None)).collect();
        let add = |n: usize| {
            vec![MemberOp::Add(
                (0..n)
                    .map(|i| MemberValue {
                        value: format!("{:036}", 1_000_000 + i),
                        kind: None,
                    })
                    .collect(),
            )]
        };
        check_shard_size(&big, &add(100)).unwrap();
        let e = check_shard_size(&big, &add(10_000)).unwrap_err();
        assert_eq!(e.scim_type(), Some(crate::scim::ScimType::InvalidValue));
        // Replacing the members is measured on the result, not on the sum.
        let replace = vec![MemberOp::ReplaceAll(
            big.keys()
                .map(|v| MemberValue {
                    value: v.clone(),
                    kind: None,
                })
                .collect(),
        )];
        check_shard_size(&big, &replace).unwrap();
        check_shard_size(&big, &[MemberOp::RemoveAll]).unwrap();
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
}
