//! The controller's cache of the (Cluster)RoleBindings it manages, compact.
//!
//! A cluster mapping copies one subject list into every namespace it reaches: 20,000
//! users in 50 namespaces are a million `Subject`s in the API server. Cached as
//! k8s-openapi objects that cost ~200 bytes each (four `String`s); here each binding keeps
//! its metadata, its roleRef and an `Arc<[Subject]>`, and equal subject lists share one
//! allocation ([`SubjectLists`]), so the copies cost a pointer each.
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;
use kube::Resource;

use super::plan::{Subject, SubjectType, RBAC_API_GROUP};

/// A managed binding as cached: `K` is [`RoleBinding`] or [`ClusterRoleBinding`].
#[derive(Debug)]
pub struct CachedBinding<K> {
    /// Name, namespace, uid, resourceVersion, labels, annotations (managedFields dropped).
    pub metadata: ObjectMeta,
    pub role_ref: RoleRef,
    /// The User and Group subjects kube-scim writes, in the object's order.
    pub subjects: Arc<[Subject]>,
    /// Every subject of the object is in `subjects`, exactly as kube-scim writes it
    /// (`apiGroup: rbac.authorization.k8s.io`, no namespace), so `subjects[i]` is the
    /// object's `/subjects/i`. False when someone added a ServiceAccount or the like.
    pub exact: bool,
    kind: PhantomData<fn() -> K>,
}

// Not derived: the derive would require `K: Clone`.
impl<K> Clone for CachedBinding<K> {
    fn clone(&self) -> Self {
        CachedBinding {
            metadata: self.metadata.clone(),
            role_ref: self.role_ref.clone(),
            subjects: Arc::clone(&self.subjects),
            exact: self.exact,
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
    /// The cache entry of `obj`, its subject list shared through `lists`.
    pub fn from_object(obj: K, lists: &SubjectLists) -> Self {
        let (mut metadata, role_ref, raw) = obj.into_parts();
        metadata.managed_fields = None;
        let total = raw.len();
        let subjects: Vec<Subject> = raw
            .into_iter()
            .filter_map(|s| {
                let kind = SubjectType::parse(&s.kind)?;
                let plain = s.api_group.as_deref() == Some(RBAC_API_GROUP) && s.namespace.is_none();
                plain.then_some(Subject { kind, name: s.name })
            })
            .collect();
        CachedBinding {
            metadata,
            role_ref,
            exact: subjects.len() == total,
            subjects: lists.share(subjects),
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
    lists: &SubjectLists,
) -> Event<CachedBinding<K>> {
    crate::watch::map_event(event, |o| CachedBinding::from_object(o, lists))
}

impl<K: BindingObject> Resource for CachedBinding<K> {
    type DynamicType = ();
    type Scope = K::Scope;

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
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Equal subject lists, shared: hands out one `Arc` per distinct list still alive.
#[derive(Default, Debug)]
pub struct SubjectLists {
    inner: Mutex<Lists>,
}

#[derive(Default, Debug)]
struct Lists {
    by_hash: HashMap<u64, Vec<Weak<[Subject]>>>,
    /// Entries at the last sweep of dead lists; the next sweep is due at twice as many.
    swept_at: usize,
    entries: usize,
}

impl SubjectLists {
    /// The process-wide instance (the cache is per process; so is the sharing).
    pub fn global() -> &'static SubjectLists {
        static LISTS: OnceLock<SubjectLists> = OnceLock::new();
        LISTS.get_or_init(SubjectLists::default)
    }

    /// `subjects` as a shared list: an equal live one if there is one, else a new one.
    pub fn share(&self, subjects: Vec<Subject>) -> Arc<[Subject]> {
        if subjects.is_empty() {
            return Arc::from(subjects);
        }
        let hash = hasher().hash_one(&subjects);
        let mut lists = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = lists
            .by_hash
            .get(&hash)
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .find(|l| **l == subjects[..])
        {
            return found;
        }
        let list: Arc<[Subject]> = Arc::from(subjects);
        lists
            .by_hash
            .entry(hash)
            .or_default()
            .push(Arc::downgrade(&list));
        lists.entries += 1;
        if lists.entries > (2 * lists.swept_at).max(1024) {
            lists.sweep();
        }
        list
    }

    /// Distinct lists alive (for tests and metrics).
    pub fn live(&self) -> usize {
        let lists = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lists
            .by_hash
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

impl Lists {
    fn sweep(&mut self) {
        self.by_hash.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        self.entries = self.by_hash.values().map(Vec::len).sum();
        self.swept_at = self.entries;
    }
}

/// A fixed hasher: hashes only decide which lists to compare, so any stable one does.
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

    #[test]
    fn copies_in_many_namespaces_share_one_list() {
        let lists = SubjectLists::default();
        let a = CachedBinding::from_object(rb("a", "x", vec![user("alice"), user("bob")]), &lists);
        let b = CachedBinding::from_object(rb("b", "x", vec![user("alice"), user("bob")]), &lists);
        let c = CachedBinding::from_object(rb("c", "x", vec![user("alice")]), &lists);
        assert!(Arc::ptr_eq(&a.subjects, &b.subjects));
        assert!(!Arc::ptr_eq(&a.subjects, &c.subjects));
        assert_eq!(lists.live(), 2);
        assert!(a.exact && c.exact);
        assert!(a.holds(&Subject::user("bob")) && !c.holds(&Subject::user("bob")));
        drop((a, b));
        assert_eq!(lists.live(), 1);
    }

    #[test]
    fn foreign_subjects_are_left_out_and_make_it_inexact() {
        let lists = SubjectLists::default();
        let sa = K8sSubject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: "default".into(),
            namespace: Some("a".into()),
        };
        let b = CachedBinding::from_object(rb("a", "x", vec![sa, user("alice")]), &lists);
        assert_eq!(&b.subjects[..], [Subject::user("alice")]);
        assert!(!b.exact);
    }

    #[test]
    fn dead_lists_are_swept() {
        let lists = SubjectLists::default();
        for i in 0..5000 {
            let kept = lists.share(vec![Subject::user(format!("u{i}"))]);
            drop(kept);
        }
        let inner = lists.inner.lock().expect("lock");
        assert!(inner.entries < 3000, "{} entries kept", inner.entries);
    }
}
