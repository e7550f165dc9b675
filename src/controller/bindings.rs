//! The controller's cache of the (Cluster)RoleBindings it manages, compact.
//!
//! A cluster mapping copies one subject list into every namespace it reaches: 20,000
//! users in 50 namespaces are a million `Subject`s in the API server, and with 8 kB parts
//! thousands of binding objects that differ only in their namespace, their subjects and
//! their uid/resourceVersion. So a cached binding keeps only what the controller reads,
//! and shares whatever repeats through one [`BindingInterner`]:
//!
//! - the subject list, shared by every namespace copy of a part;
//! - [`BindingCommon`]: roleRef plus the labels and annotations kube-scim writes, the same
//!   for every part of a mapping's role in every namespace (a few distinct values per
//!   mapping);
//! - the name and namespace strings (a part's name repeats in every namespace, a
//!   namespace in every binding it holds).
//!
//! What stays per object is its uid and resourceVersion ([`ObjectVersion`], the delete
//! preconditions) and a few pointers: ~120 bytes instead of the ~2 kB of a trimmed
//! `ObjectMeta` with its two maps (7.4 MB of the controller's 38.9 MB peak heap at 5,000
//! users × 50 namespaces, docs/scale.md). An interned value lives as long as one entry
//! holds it; the tables keep only weak references.
//!
//! Only the labels and annotations kube-scim writes are kept
//! ([`naming::is_binding_metadata_key`]): the plan reads the mapping back from them and
//! the apply step checks that each one is still as written (drift), but another tool's
//! marks (`kubectl.kubernetes.io/last-applied-configuration`, Argo CD's tracking label)
//! are none of the controller's business and would only defeat the sharing.
use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher::Event;
use kube::Resource;

use super::naming;
use super::plan::{Subject, SubjectType, RBAC_API_GROUP};

/// A managed binding as cached: `K` is [`RoleBinding`] or [`ClusterRoleBinding`].
#[derive(Debug)]
pub struct CachedBinding<K> {
    /// `metadata.name` (shared: a part has the same name in every namespace).
    pub name: Arc<str>,
    /// `metadata.namespace` (shared); None for a ClusterRoleBinding.
    pub namespace: Option<Arc<str>>,
    /// The object this entry was made from (delete preconditions).
    pub version: ObjectVersion,
    /// roleRef and kube-scim's labels and annotations (shared).
    pub common: Arc<BindingCommon>,
    /// The User and Group subjects kube-scim writes, in the object's order.
    pub subjects: Arc<[Subject]>,
    /// Every subject of the object is in `subjects`, exactly as kube-scim writes it
    /// (`apiGroup: rbac.authorization.k8s.io`, no namespace), so `subjects[i]` is the
    /// object's `/subjects/i`. False when someone added a ServiceAccount or the like.
    pub exact: bool,
    /// The object's metadata holds nothing but what kube-scim writes (its own labels and
    /// annotations; no other keys, owner references or finalizers), so together with
    /// `exact` the entry can be written back as the whole object without losing anyone
    /// else's additions (the fast lane's replace, see `fast_lane`).
    pub whole: bool,
    kind: PhantomData<fn() -> K>,
}

/// The uid and resourceVersion of one binding object, as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectVersion {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl ObjectVersion {
    pub fn of(meta: ObjectMeta) -> Self {
        ObjectVersion {
            uid: meta.uid,
            resource_version: meta.resource_version,
        }
    }
}

/// What the bindings of one mapping and role have in common, whatever their namespace
/// or part: their roleRef, and the labels and annotations kube-scim writes on them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BindingCommon {
    /// `roleRef` (k8s-openapi's `RoleRef` is neither `Eq` nor `Hash`).
    pub role_api_group: String,
    pub role_kind: String,
    pub role_name: String,
    /// Only the keys [`naming::is_binding_metadata_key`] accepts.
    pub labels: BTreeMap<String, String>,
    /// Only the keys [`naming::is_binding_metadata_key`] accepts.
    pub annotations: BTreeMap<String, String>,
}

// Not derived: the derive would require `K: Clone`.
impl<K> Clone for CachedBinding<K> {
    fn clone(&self) -> Self {
        CachedBinding {
            name: Arc::clone(&self.name),
            namespace: self.namespace.clone(),
            version: self.version.clone(),
            common: Arc::clone(&self.common),
            subjects: Arc::clone(&self.subjects),
            exact: self.exact,
            whole: self.whole,
            kind: PhantomData,
        }
    }
}

pub type CachedRoleBinding = CachedBinding<RoleBinding>;
pub type CachedClusterRoleBinding = CachedBinding<ClusterRoleBinding>;

/// What a binding object is made of, as the cache takes it apart.
type BindingParts = (
    ObjectMeta,
    RoleRef,
    Vec<k8s_openapi::api::rbac::v1::Subject>,
);

/// The parts of a binding object the cache is made from.
pub trait BindingObject: Resource<DynamicType = ()> {
    fn into_parts(self) -> BindingParts;
}

impl BindingObject for RoleBinding {
    fn into_parts(self) -> BindingParts {
        (
            self.metadata,
            self.role_ref,
            self.subjects.unwrap_or_default(),
        )
    }
}

impl BindingObject for ClusterRoleBinding {
    fn into_parts(self) -> BindingParts {
        (
            self.metadata,
            self.role_ref,
            self.subjects.unwrap_or_default(),
        )
    }
}

impl<K: BindingObject> CachedBinding<K> {
    /// The cache entry of `obj`, what repeats shared through `shared`.
    pub fn from_object(obj: K, shared: &BindingInterner) -> Self {
        let (mut metadata, role_ref, raw) = obj.into_parts();
        let total = raw.len();
        let subjects: Vec<Subject> = raw
            .into_iter()
            .filter_map(|s| {
                let kind = SubjectType::parse(&s.kind)?;
                let plain = s.api_group.as_deref() == Some(RBAC_API_GROUP) && s.namespace.is_none();
                plain.then_some(Subject { kind, name: s.name })
            })
            .collect();
        let mut whole = metadata.owner_references.as_ref().is_none_or(Vec::is_empty)
            && metadata.finalizers.as_ref().is_none_or(Vec::is_empty);
        let mut ours = |map: Option<BTreeMap<String, String>>| -> BTreeMap<String, String> {
            let mut map = map.unwrap_or_default();
            let before = map.len();
            map.retain(|k, _| naming::is_binding_metadata_key(k));
            whole &= map.len() == before;
            map
        };
        let common = BindingCommon {
            role_api_group: role_ref.api_group,
            role_kind: role_ref.kind,
            role_name: role_ref.name,
            labels: ours(metadata.labels.take()),
            annotations: ours(metadata.annotations.take()),
        };
        CachedBinding {
            name: shared
                .strings
                .share(metadata.name.take().unwrap_or_default()),
            namespace: metadata.namespace.take().map(|ns| shared.strings.share(ns)),
            version: ObjectVersion::of(metadata),
            common: shared.common.share(common),
            exact: subjects.len() == total,
            whole,
            subjects: shared.subjects.share(subjects),
            kind: PhantomData,
        }
    }

    /// Whether it holds `subject`.
    pub fn holds(&self, subject: &Subject) -> bool {
        self.subjects.iter().any(|s| s == subject)
    }
}

/// A watch event of binding objects as one of cache entries.
pub fn cache_event<K: BindingObject>(
    event: Event<K>,
    shared: &BindingInterner,
) -> Event<CachedBinding<K>> {
    crate::watch::map_event(event, |o| CachedBinding::from_object(o, shared))
}

impl<K: BindingObject> Lookup for CachedBinding<K> {
    type DynamicType = ();

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.version.resource_version.as_deref().map(Cow::Borrowed)
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        self.version.uid.as_deref().map(Cow::Borrowed)
    }
}

/// The tables that share the binding cache's repeating parts.
#[derive(Default, Debug)]
pub struct BindingInterner {
    subjects: Interner<[Subject]>,
    strings: Interner<str>,
    common: Interner<BindingCommon>,
}

impl BindingInterner {
    /// The process-wide instance (the cache is per process; so is the sharing).
    pub fn global() -> &'static BindingInterner {
        static SHARED: OnceLock<BindingInterner> = OnceLock::new();
        SHARED.get_or_init(BindingInterner::default)
    }
}

/// Equal values, shared: hands out one `Arc` per distinct value still alive. The table
/// holds weak references only, so a value is freed with the last entry that used it;
/// dead references are swept whenever the table has doubled since the last sweep.
#[derive(Debug)]
struct Interner<T: ?Sized> {
    inner: Mutex<Table<T>>,
}

#[derive(Debug)]
struct Table<T: ?Sized> {
    by_hash: HashMap<u64, Vec<Weak<T>>>,
    /// Entries at the last sweep of dead values; the next sweep is due at twice as many.
    swept_at: usize,
    entries: usize,
}

// Not derived: the derive would require `T: Default`.
impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            inner: Mutex::new(Table {
                by_hash: HashMap::new(),
                swept_at: 0,
                entries: 0,
            }),
        }
    }
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    /// `value` shared: an equal live one if there is one, else `value` made an `Arc`.
    fn share<V>(&self, value: V) -> Arc<T>
    where
        V: Borrow<T>,
        Arc<T>: From<V>,
    {
        let hash = hasher().hash_one(value.borrow());
        let mut table = self.lock();
        if let Some(found) = table
            .by_hash
            .get(&hash)
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .find(|v| **v == *value.borrow())
        {
            return found;
        }
        let shared: Arc<T> = Arc::from(value);
        table
            .by_hash
            .entry(hash)
            .or_default()
            .push(Arc::downgrade(&shared));
        table.entries += 1;
        if table.entries > (2 * table.swept_at).max(1024) {
            table.sweep();
        }
        shared
    }

    /// Distinct values alive.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock()
            .by_hash
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<T>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: ?Sized> Table<T> {
    fn sweep(&mut self) {
        self.by_hash.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        self.entries = self.by_hash.values().map(Vec::len).sum();
        self.swept_at = self.entries;
    }
}

/// A fixed hasher: hashes only decide which values to compare, so any stable one does.
fn hasher() -> impl BuildHasher {
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::Subject as K8sSubject;

    fn rb(ns: &str, name: &str, subjects: Vec<K8sSubject>) -> RoleBinding {
        RoleBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: RBAC_API_GROUP.into(),
                kind: "ClusterRole".into(),
                name: "view".into(),
            },
            subjects: Some(subjects),
        }
    }

    fn user(name: &str) -> K8sSubject {
        K8sSubject {
            api_group: Some(RBAC_API_GROUP.into()),
            kind: "User".into(),
            name: name.into(),
            namespace: None,
        }
    }

    /// A part of cluster mapping "m" as kube-scim writes it in `ns`, plus `extra` labels.
    fn managed(ns: &str, name: &str, uid: &str, extra: &[(&str, &str)]) -> RoleBinding {
        let key = super::super::plan::MappingKey::Cluster { name: "m".into() };
        let (mut labels, annotations) = naming::mapping_metadata(&key);
        for (k, v) in extra {
            labels.insert((*k).into(), (*v).into());
        }
        let mut b = rb(ns, name, vec![user("alice")]);
        b.metadata.labels = Some(labels);
        b.metadata.annotations = Some(annotations);
        b.metadata.uid = Some(uid.into());
        b.metadata.resource_version = Some(format!("rv-{uid}"));
        b
    }

    #[test]
    fn copies_in_many_namespaces_share_one_list() {
        let shared = BindingInterner::default();
        let a = CachedBinding::from_object(rb("a", "x", vec![user("alice"), user("bob")]), &shared);
        let b = CachedBinding::from_object(rb("b", "x", vec![user("alice"), user("bob")]), &shared);
        let c = CachedBinding::from_object(rb("c", "x", vec![user("alice")]), &shared);
        assert!(Arc::ptr_eq(&a.subjects, &b.subjects));
        assert!(!Arc::ptr_eq(&a.subjects, &c.subjects));
        assert_eq!(shared.subjects.live(), 2);
        assert!(a.exact && c.exact);
        assert!(a.holds(&Subject::user("bob")) && !c.holds(&Subject::user("bob")));
        drop((a, b));
        assert_eq!(shared.subjects.live(), 1);
    }

    #[test]
    fn copies_share_their_labels_role_ref_and_names() {
        let shared = BindingInterner::default();
        let a = CachedBinding::from_object(managed("a", "p-1", "u1", &[]), &shared);
        let b = CachedBinding::from_object(managed("b", "p-1", "u2", &[]), &shared);
        let c = CachedBinding::from_object(managed("a", "p-2", "u3", &[]), &shared);
        assert!(Arc::ptr_eq(&a.common, &b.common) && Arc::ptr_eq(&a.common, &c.common));
        assert_eq!(shared.common.live(), 1);
        assert!(Arc::ptr_eq(&a.name, &b.name));
        let (a_ns, c_ns) = (a.namespace.as_ref(), c.namespace.as_ref());
        assert!(a_ns.zip(c_ns).is_some_and(|(x, y)| Arc::ptr_eq(x, y)));
        // What stays per object: the delete preconditions.
        assert_eq!(a.version.uid.as_deref(), Some("u1"));
        assert_eq!(b.version.resource_version.as_deref(), Some("rv-u2"));
        // The mapping still reads back from the kept labels and annotations.
        let key = naming::mapping_key_from_labels(&a.common.labels, &a.common.annotations);
        assert_eq!(
            key,
            Some(super::super::plan::MappingKey::Cluster { name: "m".into() })
        );
    }

    #[test]
    fn foreign_labels_are_dropped_and_a_changed_own_label_is_seen() {
        let shared = BindingInterner::default();
        let plain = CachedBinding::from_object(managed("a", "p", "u1", &[]), &shared);
        // Another tool's label: not kept, so the entry still shares the common part.
        let tagged =
            CachedBinding::from_object(managed("b", "p", "u2", &[("argocd/app", "x")]), &shared);
        assert!(Arc::ptr_eq(&plain.common, &tagged.common));
        assert!(!tagged.common.labels.contains_key("argocd/app"));
        // ... but the entry can no longer stand for the whole object.
        assert!(plain.whole && !tagged.whole);
        // Someone edited one of kube-scim's labels: a different value, visible as such
        // (the apply step compares it with the desired label and rewrites the binding).
        let edited = CachedBinding::from_object(
            managed("c", "p", "u3", &[(naming::MAPPING_NAME_LABEL, "other")]),
            &shared,
        );
        assert!(!Arc::ptr_eq(&plain.common, &edited.common));
        assert_eq!(edited.common.labels[naming::MAPPING_NAME_LABEL], "other");
        assert_eq!(shared.common.live(), 2);
    }

    /// Anything in the metadata that kube-scim doesn't write makes the entry not `whole`:
    /// writing the object back from it would drop that.
    #[test]
    fn foreign_metadata_makes_it_partial() {
        let shared = BindingInterner::default();
        let entry = |f: &dyn Fn(&mut ObjectMeta)| {
            let mut b = managed("a", "p", "u1", &[]);
            f(&mut b.metadata);
            CachedBinding::from_object(b, &shared).whole
        };
        assert!(entry(&|_| {}));
        assert!(!entry(&|m| {
            m.annotations
                .get_or_insert_default()
                .insert("note".into(), "x".into());
        }));
        assert!(!entry(
            &|m| m.finalizers = Some(vec!["example.com/keep".into()])
        ));
        assert!(!entry(&|m| {
            m.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference::default(),
            ])
        }));
        // Empty lists are nothing.
        assert!(entry(&|m| {
            m.finalizers = Some(vec![]);
            m.owner_references = Some(vec![]);
        }));
    }

    #[test]
    fn foreign_subjects_are_left_out_and_make_it_inexact() {
        let shared = BindingInterner::default();
        let sa = K8sSubject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: "default".into(),
            namespace: Some("a".into()),
        };
        let b = CachedBinding::from_object(rb("a", "x", vec![sa, user("alice")]), &shared);
        assert_eq!(&b.subjects[..], [Subject::user("alice")]);
        assert!(!b.exact);
    }

    #[test]
    fn dead_values_are_swept() {
        let strings = Interner::<str>::default();
        for i in 0..5000 {
            let kept = strings.share(format!("u{i}"));
            drop(kept);
        }
        let inner = strings.lock();
        assert!(inner.entries < 3000, "{} entries kept", inner.entries);
    }
}
