//! The controller's view of the cluster: one reflector cache per watched kind, a flag
//! per watch saying whether it is in sync, and a [`Trigger`] fired on every relevant
//! change. [`World::snapshot`] turns the caches into the plan's input.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

use super::bindings::{
    cache_event, BindingInterner, CachedBinding, CachedClusterRoleBinding, CachedRoleBinding,
};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, store::Writer, Lookup, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::plan::{
    mapping_key_from_labels, BindingKind, ExistingBinding, GroupInput, MappingInput, MappingKey,
    MappingLayout, MappingSpec, NamespaceInput, PlanInput, Settings, Subject, UserInput,
};
use super::revoke::{self, Revocation};
use super::users::CachedUser;
use crate::crd::membership::{self, MemberKind, Membership};
use crate::crd::{
    ClusterGroupRoleMapping, GroupRoleMapping, MappingStatus, RoleKind, RoleRef, ScimGroup,
    ScimGroupMembers, ScimUser, CONFIRM_REMOVAL_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use crate::telemetry::WatchLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Wakes the reconcile loop. A fire while nobody waits is remembered (one permit), so a
/// burst of changes during a pass yields exactly one more pass.
#[derive(Default, Debug)]
pub struct Trigger {
    notify: Notify,
}

impl Trigger {
    pub fn fire(&self) {
        self.notify.notify_one();
    }

    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Consume a pending fire, if any, without waiting.
    pub fn take(&self) -> bool {
        self.notify.notified().now_or_never().is_some()
    }
}

/// Where the watches send revocations: the leader's fast lane, or nowhere (standby).
#[derive(Clone, Default, Debug)]
pub struct RevocationSink(Arc<std::sync::Mutex<Option<UnboundedSender<Noticed>>>>);

/// A revocation and when its watch event reached the cache: the fast lane reports how
/// long each one took from there to the API server's last acknowledgement.
pub type Noticed = (std::time::Instant, Revocation);

impl RevocationSink {
    /// Route revocations to a new receiver (a leadership term starts).
    pub fn open(&self) -> UnboundedReceiver<Noticed> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.lock() = Some(tx);
        rx
    }

    pub fn close(&self) {
        *self.lock() = None;
    }

    fn send(&self, revocations: Vec<Revocation>) {
        if revocations.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        if let Some(tx) = self.lock().as_ref() {
            for r in revocations {
                // A closed receiver means the term is ending: the next leader re-plans.
                let _ = tx.send((now, r));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnboundedSender<Noticed>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Watches, in the order of [`SyncFlags`].
const WATCHES: [&str; 10] = [
    "scimusers",
    "scimgroups",
    "scimgroupmembers",
    "grouprolemappings",
    "clustergrouprolemappings",
    "namespaces",
    "clusterroles",
    "roles",
    "rolebindings",
    "clusterrolebindings",
];

/// Per watch: true between a complete (re)list and the next restart.
#[derive(Debug, Default)]
pub struct SyncFlags {
    flags: [AtomicBool; WATCHES.len()],
}

impl SyncFlags {
    pub fn all_synced(&self) -> bool {
        self.flags.iter().all(|f| f.load(Ordering::Acquire))
    }

    /// Names of the watches not in sync, for logs.
    pub fn unsynced(&self) -> Vec<&'static str> {
        WATCHES
            .iter()
            .zip(&self.flags)
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// The reflector caches. Cheap to clone (every store is shared).
#[derive(Clone)]
pub struct World {
    pub users: Store<CachedUser>,
    pub groups: Store<ScimGroup>,
    pub shards: Store<ScimGroupMembers>,
    pub mappings: Store<GroupRoleMapping>,
    pub cluster_mappings: Store<ClusterGroupRoleMapping>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub cluster_roles: Store<PartialObjectMeta<ClusterRole>>,
    pub roles: Store<PartialObjectMeta<Role>>,
    pub role_bindings: Store<CachedRoleBinding>,
    pub cluster_role_bindings: Store<CachedClusterRoleBinding>,
    pub sync: Arc<SyncFlags>,
}

/// Decides whether an applied object is a change the plan cares about, given the cached
/// previous version (None = new). Keeps our own status writes from re-triggering passes.
type Relevant<K> = fn(Option<&K>, &K) -> bool;

/// Sees every watch event with the cached previous version (before the cache applies
/// it) and returns the revocations it implies; they are sent once the cache holds the
/// event, so the fast lane reads the new state.
type Tap<K> = Box<dyn Fn(Option<&K>, &Event<K>) -> Vec<Revocation> + Send + Sync>;

impl World {
    /// Start every watch as a task in `tasks`; each fires `trigger` on relevant changes,
    /// and the user and membership watches send what can only take access away to
    /// `revocations` (the fast lane).
    pub fn start(
        client: &Client,
        list: crate::config::Listing,
        trigger: Arc<Trigger>,
        revocations: RevocationSink,
        lists: Family<WatchLabels, Counter>,
        tasks: &mut JoinSet<()>,
    ) -> World {
        let sync = Arc::new(SyncFlags::default());
        let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
        let all = || list.watcher_config();
        let ctx = (&sync, &trigger, &revocations, &lists);
        World {
            users: spawn(
                tasks,
                ctx,
                0,
                crate::watch::partitioned_watcher(
                    Api::<ScimUser>::all(client.clone()),
                    all(),
                    list.user_partitions(),
                )
                .map_ok(CachedUser::event),
                CachedUser::changed,
                Some(Box::new(user_revocations)),
            ),
            groups: spawn(
                tasks,
                ctx,
                1,
                watch(Api::all(client.clone()), all()).modify(slim_group),
                |old: Option<&ScimGroup>, new| spec_or_deletion_changed(old, new),
                Some(Box::new(group_revocations)),
            ),
            shards: spawn(
                tasks,
                ctx,
                2,
                watch(Api::all(client.clone()), all()).modify(|s: &mut ScimGroupMembers| {
                    s.metadata.annotations = None;
                    s.metadata.labels = None;
                }),
                |_: Option<&ScimGroupMembers>, _| true,
                Some(Box::new(shard_revocations)),
            ),
            mappings: spawn(
                tasks,
                ctx,
                3,
                watch(Api::all(client.clone()), all()),
                |old: Option<&GroupRoleMapping>, new| mapping_changed(old, new),
                None,
            ),
            cluster_mappings: spawn(
                tasks,
                ctx,
                4,
                watch(Api::all(client.clone()), all()),
                |old: Option<&ClusterGroupRoleMapping>, new| mapping_changed(old, new),
                None,
            ),
            namespaces: spawn(
                tasks,
                ctx,
                5,
                watch_metadata(
                    Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                    all(),
                ),
                |old: Option<&PartialObjectMeta<Namespace>>, new| {
                    old.is_none_or(|o| {
                        o.metadata.labels != new.metadata.labels
                            || o.metadata.deletion_timestamp.is_some()
                                != new.metadata.deletion_timestamp.is_some()
                    })
                },
                None,
            ),
            // Only names matter for roles: a new one can clear RoleNotFound.
            cluster_roles: spawn(
                tasks,
                ctx,
                6,
                watch_metadata(
                    Api::<PartialObjectMeta<ClusterRole>>::all(client.clone()),
                    all(),
                ),
                |old: Option<&PartialObjectMeta<ClusterRole>>, _| old.is_none(),
                None,
            ),
            roles: spawn(
                tasks,
                ctx,
                7,
                watch_metadata(Api::<PartialObjectMeta<Role>>::all(client.clone()), all()),
                |old: Option<&PartialObjectMeta<Role>>, _| old.is_none(),
                None,
            ),
            role_bindings: spawn(
                tasks,
                ctx,
                8,
                crate::watch::watcher(
                    Api::<RoleBinding>::all(client.clone()),
                    all().labels(&managed),
                )
                .map_ok(|e| cache_event(e, BindingInterner::global())),
                |old: Option<&CachedRoleBinding>, new| binding_changed(old, new),
                None,
            ),
            cluster_role_bindings: spawn(
                tasks,
                ctx,
                9,
                crate::watch::watcher(
                    Api::<ClusterRoleBinding>::all(client.clone()),
                    all().labels(&managed),
                )
                .map_ok(|e| cache_event(e, BindingInterner::global())),
                |old: Option<&CachedClusterRoleBinding>, new| binding_changed(old, new),
                None,
            ),
            sync,
        }
    }

    /// Build the plan's input from the caches, plus what the I/O layer needs next to it.
    pub fn snapshot(&self) -> Snapshot {
        let all_synced = self.sync.all_synced();
        let objects = Objects {
            users: self.users.state(),
            groups: self.groups.state(),
            shards: self.shards.state(),
            mappings: self.mappings.state(),
            cluster_mappings: self.cluster_mappings.state(),
            namespaces: self.namespaces.state(),
            cluster_roles: self.cluster_roles.state(),
            roles: self.roles.state(),
            role_bindings: self.role_bindings.state(),
            cluster_role_bindings: self.cluster_role_bindings.state(),
        };
        let (input, member_counts) = objects.plan_input(k8s_openapi::jiff::Timestamp::now());
        let Objects {
            users,
            groups,
            mappings,
            cluster_mappings,
            role_bindings,
            cluster_role_bindings,
            ..
        } = objects;
        Snapshot {
            input,
            all_synced,
            users,
            groups,
            member_counts,
            mappings,
            cluster_mappings,
            role_bindings: role_bindings
                .into_iter()
                .filter_map(|b| Some(((b.namespace.as_deref()?.to_owned(), b.name.to_string()), b)))
                .collect(),
            cluster_role_bindings: cluster_role_bindings
                .into_iter()
                .map(|b| (b.name.to_string(), b))
                .collect(),
        }
    }
}

/// Every object the plan is made from, as the controller's caches hold them or as one
/// LIST of each kind returns them (`kube-scim access|who|plan`): both build the plan's
/// input with [`Objects::plan_input`], so the CLI explains exactly what the controller does.
#[derive(Default, Clone)]
pub struct Objects {
    pub users: Vec<Arc<CachedUser>>,
    pub groups: Vec<Arc<ScimGroup>>,
    pub shards: Vec<Arc<ScimGroupMembers>>,
    pub mappings: Vec<Arc<GroupRoleMapping>>,
    pub cluster_mappings: Vec<Arc<ClusterGroupRoleMapping>>,
    pub namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    pub cluster_roles: Vec<Arc<PartialObjectMeta<ClusterRole>>>,
    pub roles: Vec<Arc<PartialObjectMeta<Role>>>,
    /// Only the managed ones (labelled [`MANAGED_BY_LABEL`]=[`MANAGED_BY_VALUE`]).
    pub role_bindings: Vec<Arc<CachedRoleBinding>>,
    pub cluster_role_bindings: Vec<Arc<CachedClusterRoleBinding>>,
}

impl Objects {
    /// The plan's input (made at `now`), and each group's member count (inline ∪ shards,
    /// users and nested groups).
    pub fn plan_input(
        &self,
        now: k8s_openapi::jiff::Timestamp,
    ) -> (PlanInput, HashMap<String, u64>) {
        // Each shard under the group its name and spec.group claim; whether it really
        // belongs (owner uid) and which entries count is `membership`'s to say.
        let mut shards: HashMap<&str, Vec<&ScimGroupMembers>> = HashMap::new();
        for s in &self.shards {
            if let Some((group, _)) = membership::claimed(s) {
                shards.entry(group).or_default().push(s);
            }
        }

        let mut member_counts = HashMap::with_capacity(self.groups.len());
        let group_inputs = self
            .groups
            .iter()
            .filter_map(|g| {
                let id = g.metadata.name.clone()?;
                let candidates = shards.get(id.as_str()).map_or(&[][..], Vec::as_slice);
                let members = Membership::of(g, candidates.iter().copied());
                member_counts.insert(id.clone(), members.len() as u64);
                Some(GroupInput {
                    id,
                    display_name: g.spec.display_name.clone(),
                    external_id: g.spec.external_id.clone(),
                    // Nested groups are counted as members but grant nothing by themselves.
                    members: members.users().map(str::to_owned).collect(),
                })
            })
            .collect();

        let user_inputs = self.users.iter().map(|u| u.input.clone()).collect();

        let mut mapping_inputs =
            Vec::with_capacity(self.mappings.len() + self.cluster_mappings.len());
        for m in &self.mappings {
            if let (Some(namespace), Some(name)) =
                (m.metadata.namespace.clone(), m.metadata.name.clone())
            {
                mapping_inputs.push(mapping_input(
                    MappingKey::Namespaced { namespace, name },
                    m.meta(),
                    MappingSpec::Namespaced(m.spec.clone()),
                    m.status.as_ref(),
                ));
            }
        }
        for m in &self.cluster_mappings {
            if let Some(name) = m.metadata.name.clone() {
                mapping_inputs.push(mapping_input(
                    MappingKey::Cluster { name },
                    m.meta(),
                    MappingSpec::Cluster(m.spec.clone()),
                    m.status.as_ref(),
                ));
            }
        }

        let namespaces = self
            .namespaces
            .iter()
            .filter_map(|n| {
                Some(NamespaceInput {
                    name: n.metadata.name.clone()?,
                    labels: n.metadata.labels.clone().unwrap_or_default(),
                    terminating: n.metadata.deletion_timestamp.is_some(),
                })
            })
            .collect();
        let cluster_roles: BTreeSet<String> = self
            .cluster_roles
            .iter()
            .filter_map(|r| r.metadata.name.clone())
            .collect();
        let roles: BTreeSet<(String, String)> = self
            .roles
            .iter()
            .filter_map(|r| Some((r.metadata.namespace.clone()?, r.metadata.name.clone()?)))
            .collect();

        let mut existing =
            Vec::with_capacity(self.role_bindings.len() + self.cluster_role_bindings.len());
        for b in &self.role_bindings {
            existing.extend(existing_binding(BindingKind::RoleBinding, b));
        }
        for b in &self.cluster_role_bindings {
            existing.extend(existing_binding(BindingKind::ClusterRoleBinding, b));
        }

        let input = PlanInput {
            mappings: mapping_inputs,
            groups: group_inputs,
            users: user_inputs,
            namespaces,
            cluster_roles,
            roles,
            existing,
            now,
        };
        (input, member_counts)
    }
}

/// The caches at one moment: the plan's input and the objects behind it.
#[derive(Default)]
pub struct Snapshot {
    pub input: PlanInput,
    /// Every watch was in sync when the snapshot was taken (pruning is allowed).
    pub all_synced: bool,
    pub users: Vec<Arc<CachedUser>>,
    pub groups: Vec<Arc<ScimGroup>>,
    /// Group id → members (inline ∪ shards, users and nested groups).
    pub member_counts: HashMap<String, u64>,
    pub mappings: Vec<Arc<GroupRoleMapping>>,
    pub cluster_mappings: Vec<Arc<ClusterGroupRoleMapping>>,
    /// (namespace, name) → managed RoleBinding.
    pub role_bindings: HashMap<(String, String), Arc<CachedRoleBinding>>,
    /// name → managed ClusterRoleBinding.
    pub cluster_role_bindings: HashMap<String, Arc<CachedClusterRoleBinding>>,
}

fn mapping_input(
    key: MappingKey,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: MappingSpec,
    status: Option<&MappingStatus>,
) -> MappingInput {
    MappingInput {
        key,
        generation: meta.generation,
        observed_generation: status.and_then(|s| s.observed_generation),
        spec,
        confirm_annotation: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIRM_REMOVAL_ANNOTATION).cloned()),
        deleting: meta.deletion_timestamp.is_some(),
    }
}

fn existing_binding<K>(kind: BindingKind, b: &CachedBinding<K>) -> Option<ExistingBinding> {
    let common = &b.common;
    Some(ExistingBinding {
        kind,
        namespace: b.namespace.as_deref().map(str::to_owned),
        // A nameless object cannot come from the API server; skip rather than trust it.
        name: Some(b.name.to_string()).filter(|n| !n.is_empty())?,
        role_ref: RoleRef {
            // roleRef.kind is Role or ClusterRole by API validation.
            kind: if common.role_kind == "Role" {
                RoleKind::Role
            } else {
                RoleKind::ClusterRole
            },
            name: common.role_name.clone(),
        },
        mapping: mapping_key_from_labels(&common.labels, &common.annotations),
        subjects: Arc::clone(&b.subjects),
    })
}

/// `emails[type=work].value`, else the primary email, else the first.
pub fn work_email(emails: Option<&Value>) -> Option<String> {
    let list = emails?.as_array()?;
    let value = |e: &Value| {
        e.get("value")
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let is_work = |e: &&Value| {
        e.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("work"))
    };
    let is_primary = |e: &&Value| e.get("primary").and_then(Value::as_bool) == Some(true);
    list.iter()
        .filter(is_work)
        .find_map(value)
        .or_else(|| list.iter().filter(is_primary).find_map(value))
        .or_else(|| list.iter().find_map(value))
}

/// An active user deactivated, renamed (any attribute a subject can be named by) or
/// deleted: withdraw the names it had.
fn user_revocations(old: Option<&CachedUser>, event: &Event<CachedUser>) -> Vec<Revocation> {
    let Some(before) = old.map(|u| &u.input).filter(|u| u.active) else {
        return Vec::new();
    };
    let withdrawn = match event {
        Event::Delete(_) => true,
        Event::Apply(new) => {
            let now = &new.input;
            !now.active
                || now.user_name != before.user_name
                || now.work_email != before.work_email
                || now.external_id != before.external_id
        }
        _ => false,
    };
    if withdrawn {
        vec![Revocation::User(before.clone())]
    } else {
        Vec::new()
    }
}

/// The users of `group` in `before` that are not in `after` (all of them when deleted):
/// candidates the fast lane checks again with [`membership::member_kind`].
fn users_left(group: &str, before: HashSet<&str>, after: Option<HashSet<&str>>) -> Vec<Revocation> {
    let after = after.unwrap_or_default();
    before
        .into_iter()
        .filter(|u| !after.contains(u))
        .map(|u| Revocation::Member {
            group: group.to_owned(),
            user: u.to_owned(),
        })
        .collect()
}

/// A shard changed or deleted: the users it gave the group it claims and no longer does.
/// A shard that now claims another group (or none) gave its old group nothing any more.
fn shard_revocations(
    old: Option<&ScimGroupMembers>,
    event: &Event<ScimGroupMembers>,
) -> Vec<Revocation> {
    let Some((group, before)) = old.and_then(membership::claimed_users) else {
        return Vec::new();
    };
    match event {
        Event::Apply(new) => {
            let after = membership::claimed_users(new)
                .filter(|(g, _)| *g == group)
                .map(|(_, users)| users);
            users_left(group, before, after)
        }
        Event::Delete(_) => users_left(group, before, None),
        _ => Vec::new(),
    }
}

/// Inline members (groups written before sharding); a deleted group's sharded members
/// follow through its shards' deletion, and the fast lane's check finds no group.
fn group_revocations(old: Option<&ScimGroup>, event: &Event<ScimGroup>) -> Vec<Revocation> {
    let Some(old) = old else {
        return Vec::new();
    };
    let Some(id) = old.metadata.name.as_deref() else {
        return Vec::new();
    };
    let before = membership::inline_users(old);
    match event {
        Event::Apply(new) => users_left(id, before, Some(membership::inline_users(new))),
        Event::Delete(_) => users_left(id, before, None),
        _ => Vec::new(),
    }
}

impl World {
    /// A cached group and the cached objects that can be its shards (by name).
    fn group_and_shards(
        &self,
        group: &str,
    ) -> Option<(Arc<ScimGroup>, Vec<Arc<ScimGroupMembers>>)> {
        let g = self.groups.get(&reflector::ObjectRef::new(group))?;
        let shards = membership::shard_names(group)
            .filter_map(|name| self.shards.get(&reflector::ObjectRef::new(&name)))
            .collect();
        Some((g, shards))
    }

    /// [`revoke::provisional_layouts`] from the caches, for the fast lane until the first
    /// plan's layouts replace them.
    pub fn provisional_layouts(&self, settings: &Settings) -> BTreeMap<MappingKey, MappingLayout> {
        let namespaced = self.mappings.state().into_iter().filter_map(|m| {
            let key = MappingKey::Namespaced {
                namespace: m.metadata.namespace.clone()?,
                name: m.metadata.name.clone()?,
            };
            Some((
                key,
                settings.subjects.with_overrides(m.spec.subjects.as_ref()),
            ))
        });
        let cluster = self.cluster_mappings.state().into_iter().filter_map(|m| {
            let key = MappingKey::Cluster {
                name: m.metadata.name.clone()?,
            };
            Some((
                key,
                settings.subjects.with_overrides(m.spec.subjects.as_ref()),
            ))
        });
        let role_bindings = self.role_bindings.state().into_iter().filter_map(|b| {
            let key = mapping_key_from_labels(&b.common.labels, &b.common.annotations)?;
            let namespace = b.namespace.as_deref().map(str::to_owned);
            Some((key, BindingKind::RoleBinding, namespace, b.name.to_string()))
        });
        let cluster_role_bindings =
            self.cluster_role_bindings
                .state()
                .into_iter()
                .filter_map(|b| {
                    let key = mapping_key_from_labels(&b.common.labels, &b.common.annotations)?;
                    Some((
                        key,
                        BindingKind::ClusterRoleBinding,
                        None,
                        b.name.to_string(),
                    ))
                });
        revoke::provisional_layouts(
            namespaced.chain(cluster),
            role_bindings.chain(cluster_role_bindings),
        )
    }
}

impl revoke::View for World {
    fn user(&self, id: &str) -> Option<UserInput> {
        self.users
            .get(&reflector::ObjectRef::new(id))
            .map(|u| u.input.clone())
    }

    /// A User member, as the plan reads the same objects (`membership`).
    fn is_member(&self, group: &str, user: &str) -> bool {
        let Some((g, shards)) = self.group_and_shards(group) else {
            return false;
        };
        membership::member_kind(&g, shards.iter().map(|s| &**s), user) == Some(MemberKind::User)
    }

    fn user_members(&self, group: &str) -> HashSet<String> {
        let Some((g, shards)) = self.group_and_shards(group) else {
            return HashSet::new();
        };
        membership::Membership::of(&g, shards.iter().map(|s| &**s))
            .iter()
            .filter(|(_, kind)| *kind == MemberKind::User)
            .map(|(v, _)| v.to_owned())
            .collect()
    }

    fn holds(
        &self,
        kind: BindingKind,
        namespace: Option<&str>,
        name: &str,
        subject: &Subject,
    ) -> bool {
        match (kind, namespace) {
            (BindingKind::RoleBinding, Some(ns)) => self
                .role_bindings
                .get(&reflector::ObjectRef::new(name).within(ns))
                .is_some_and(|b| b.holds(subject)),
            _ => self
                .cluster_role_bindings
                .get(&reflector::ObjectRef::new(name))
                .is_some_and(|b| b.holds(subject)),
        }
    }
}

/// Whether a binding changed in anything the plan or the apply step reads (a new
/// resourceVersion alone, e.g. another tool's label, starts no pass).
fn binding_changed<K>(old: Option<&CachedBinding<K>>, new: &CachedBinding<K>) -> bool {
    old.is_none_or(|o| {
        o.exact != new.exact
            || !Arc::ptr_eq(&o.common, &new.common) && o.common != new.common
            || !Arc::ptr_eq(&o.subjects, &new.subjects) && o.subjects != new.subjects
    })
}

fn spec_or_deletion_changed<K: Resource>(old: Option<&K>, new: &K) -> bool {
    old.is_none_or(|o| {
        o.meta().generation != new.meta().generation
            || o.meta().deletion_timestamp.is_some() != new.meta().deletion_timestamp.is_some()
    })
}

fn mapping_changed<K: Resource>(old: Option<&K>, new: &K) -> bool {
    let confirm = |k: &K| {
        k.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIRM_REMOVAL_ANNOTATION).cloned())
    };
    spec_or_deletion_changed(old, new)
        || old.is_some_and(|o| {
            confirm(o) != confirm(new) || o.meta().finalizers != new.meta().finalizers
        })
}

/// A watch of `api` whose objects come without managedFields: they are a large share
/// of every object and nothing here reads them.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    crate::watch::watcher(api, config).modify(|o: &mut K| o.managed_fields_mut().clear())
}

/// A ScimGroup as the controller caches it: what the plan, the membership rules and the
/// status diff read (name, uid, generation, deletion, displayName, externalId, inline
/// members, status). The SCIM side's annotations (its meta, the member-change journal,
/// shard versions), labels and other SCIM attributes are dropped: at 10,000 groups they
/// were most of the ~2 kB each cached group cost.
fn slim_group(g: &mut ScimGroup) {
    g.metadata.annotations = None;
    g.metadata.labels = None;
    g.spec.attributes = serde_json::Map::new();
}

/// [`watch`] for metadata-only objects: kube's watcher, which lists them as metadata
/// (the streaming list of `crate::watch` reads full objects).
fn watch_metadata<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<PartialObjectMeta<K>>, watcher::Error>> + Send
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    PartialObjectMeta<K>: Resource + Clone + Debug + serde::de::DeserializeOwned,
{
    watcher::watcher(api, config).modify(|o| o.managed_fields_mut().clear())
}

/// Run one watch into a new store: apply each event, keep its sync flag, fire the
/// trigger on relevant changes. Errors are retried by the watcher's backoff.
fn spawn<K, S>(
    tasks: &mut JoinSet<()>,
    (sync, trigger, revocations, lists): (
        &Arc<SyncFlags>,
        &Arc<Trigger>,
        &RevocationSink,
        &Family<WatchLabels, Counter>,
    ),
    index: usize,
    stream: S,
    relevant: Relevant<K>,
    tap: Option<Tap<K>>,
) -> Store<K>
where
    K: Lookup<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let mut writer: Writer<K> = Writer::default();
    let reader = writer.as_reader();
    let store = reader.clone();
    let sync = Arc::clone(sync);
    let trigger = Arc::clone(trigger);
    let revocations = revocations.clone();
    let name = WATCHES[index];
    let lists = lists.get_or_create(&WatchLabels { watch: name }).clone();
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream.default_backoff());
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(watch = name, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            let old = match &event {
                Event::Apply(obj) | Event::Delete(obj) => {
                    reader.get(&reflector::ObjectRef::from_obj(obj))
                }
                _ => None,
            };
            let revoked = tap
                .as_ref()
                .map(|t| t(old.as_deref(), &event))
                .unwrap_or_default();
            let fire = match &event {
                Event::Apply(obj) => relevant(old.as_deref(), obj),
                Event::Delete(_) => true,
                Event::Init => {
                    // A (re)list: until it completes, the cache may miss objects.
                    lists.inc();
                    sync.flags[index].store(false, Ordering::Release);
                    false
                }
                Event::InitApply(_) => false,
                Event::InitDone => true,
            };
            // A re-list (after a 410) fills a buffer; the store keeps serving the old
            // objects until InitDone swaps the whole list in. So a pass that runs while a
            // watch re-lists plans from old but complete data, never from a half-filled
            // cache in which users, members or namespaces look removed (pinned by
            // `a_relist_swaps_the_cache_whole_and_never_empties_it`). Objects deleted
            // while the watch was down vanish at the swap without a Delete event: no
            // fast-lane revocation, the pass that InitDone triggers removes them.
            writer.apply_watcher_event(&event);
            if let Event::Apply(obj) = &event {
                // When the API server's watch delivered a change (e.g. a fast-lane patch:
                // compare with "revocation patch answered"); a target of its own, as it
                // logs every event.
                tracing::debug!(target: "kube_scim::watch_events", watch = name,
                    object = %reflector::ObjectRef::from_obj(obj), "watch event applied");
            }
            revocations.send(revoked);
            if matches!(event, Event::InitDone) {
                tracing::debug!(watch = name, "watch in sync");
                sync.flags[index].store(true, Ordering::Release);
            }
            if fire {
                trigger.fire();
            }
        }
    });
    store
}

/// A store holding `objects` (as after one list).
#[cfg(test)]
fn store_of<K>(objects: Vec<K>) -> Store<K>
where
    K: Lookup<DynamicType = ()> + Clone,
{
    let mut writer: Writer<K> = Writer::default();
    writer.apply_watcher_event(&Event::Init);
    for o in objects {
        writer.apply_watcher_event(&Event::InitApply(o));
    }
    writer.apply_watcher_event(&Event::InitDone);
    writer.as_reader()
}

#[cfg(test)]
impl World {
    /// A world whose caches hold these users, groups and shards, and nothing else.
    pub(crate) fn holding(
        users: Vec<ScimUser>,
        groups: Vec<ScimGroup>,
        shards: Vec<ScimGroupMembers>,
    ) -> World {
        World {
            users: store_of(users.iter().map(CachedUser::from_user).collect()),
            groups: store_of(groups),
            shards: store_of(shards),
            mappings: store_of(Vec::new()),
            cluster_mappings: store_of(Vec::new()),
            namespaces: store_of(Vec::new()),
            cluster_roles: store_of(Vec::new()),
            roles: store_of(Vec::new()),
            role_bindings: store_of(Vec::new()),
            cluster_role_bindings: store_of(Vec::new()),
            sync: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn work_email_prefers_work_then_primary_then_first() {
        let e = json!([
            {"value": "home@x", "type": "home", "primary": true},
            {"value": "work@x", "type": "work"}
        ]);
        assert_eq!(work_email(Some(&e)).as_deref(), Some("work@x"));
        let e = json!([{"value": "a@x"}, {"value": "p@x", "primary": true}]);
        assert_eq!(work_email(Some(&e)).as_deref(), Some("p@x"));
        let e = json!([{"value": ""}, {"value": "b@x"}]);
        assert_eq!(work_email(Some(&e)).as_deref(), Some("b@x"));
        assert_eq!(work_email(Some(&json!("nope"))), None);
        assert_eq!(work_email(None), None);
    }

    fn user(id: &str, active: bool) -> CachedUser {
        let spec: crate::crd::ScimUserSpec =
            serde_json::from_value(json!({"userName": id, "active": active})).unwrap();
        CachedUser::from_user(&ScimUser::new(id, spec))
    }

    fn ids(store: &Store<CachedUser>) -> BTreeSet<String> {
        store.state().iter().map(|u| u.input.id.clone()).collect()
    }

    /// The controller applies bindings while a watch re-lists (only prunes wait until
    /// every watch is in sync). That is safe only because the reflector's store keeps the
    /// old objects until a re-list is complete and then swaps it in whole; a kube upgrade
    /// that changed this would turn every 410 into removals (the e2e test
    /// `watch_expiry_and_relist_never_look_like_removals` saw 18 stable subjects flap
    /// with an unbuffered store).
    #[test]
    fn a_relist_swaps_the_cache_whole_and_never_empties_it() {
        let mut writer: Writer<CachedUser> = Writer::default();
        let store = writer.as_reader();
        for e in [
            Event::Init,
            Event::InitApply(user("a", true)),
            Event::InitApply(user("b", true)),
            Event::InitDone,
        ] {
            writer.apply_watcher_event(&e);
        }
        assert_eq!(ids(&store), BTreeSet::from(["a".into(), "b".into()]));

        // A 410: re-list. `b` was deleted meanwhile, `c` created, `a` deactivated.
        let relist = [
            Event::Init,
            Event::InitApply(user("a", false)),
            Event::InitApply(user("c", true)),
        ];
        for e in &relist {
            writer.apply_watcher_event(e);
            assert_eq!(
                ids(&store),
                BTreeSet::from(["a".into(), "b".into()]),
                "mid-list after {e:?}"
            );
        }
        let a = store.get(&reflector::ObjectRef::new("a")).unwrap();
        assert!(a.input.active, "the old object until the list is complete");
        // Listed objects give the fast lane nothing: there is no previous version to diff.
        assert!(user_revocations(None, &relist[1]).is_empty());

        writer.apply_watcher_event(&Event::InitDone);
        assert_eq!(ids(&store), BTreeSet::from(["a".into(), "c".into()]));
        let a = store.get(&reflector::ObjectRef::new("a")).unwrap();
        assert!(!a.input.active);
    }
}
