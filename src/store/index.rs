//! Secondary indexes over the reflector caches, maintained from the same watch events.
//!
//! An [`Index`] maps the keys of a few fields (lower-cased userName, externalId, …) to
//! the ids of the objects holding them, and keeps every id in the default list order
//! (SCIM `meta.created`, then id), so a lookup costs O(1) and a page O(start + count) in
//! the size of the tenant. Keys are computed from the objects (see [`user_keys`],
//! [`group_keys`]); ids are shared `Arc<str>`s and objects are never copied in.
//!
//! An index is allowed to answer a *superset*: callers always check the real attribute
//! (or evaluate the whole filter) on the objects it returns. It must never miss one.
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Map, Value};

use super::CREATED_ANNOTATION;
use crate::crd::{ScimGroup, ScimUser};

/// Fields of the user index.
pub const USER_NAME: usize = 0;
pub const USER_EXTERNAL_ID: usize = 1;
pub const USER_EMAIL: usize = 2;
pub const USER_FIELDS: usize = 3;
/// Fields of the group index.
pub const GROUP_DISPLAY_NAME: usize = 0;
pub const GROUP_EXTERNAL_ID: usize = 1;
pub const GROUP_FIELDS: usize = 2;

/// The email key of users that have an email value a string key can't stand for (a
/// number or a boolean, which filters compare loosely): every email lookup includes them.
pub(super) const ODD_EMAIL: &str = "\0";

/// The ids holding one key; nearly always exactly one, kept without a second allocation.
#[derive(Debug, Clone)]
enum Ids {
    One(Arc<str>),
    Many(Vec<Arc<str>>),
}

impl Ids {
    fn insert(&mut self, id: &Arc<str>) {
        match self {
            Ids::One(a) if a == id => {}
            Ids::One(a) => *self = Ids::Many(vec![a.clone(), id.clone()]),
            Ids::Many(v) => {
                if !v.contains(id) {
                    v.push(id.clone());
                }
            }
        }
    }

    /// Remove `id`; true when nothing is left.
    fn remove(&mut self, id: &str) -> bool {
        match self {
            Ids::One(a) => &**a == id,
            Ids::Many(v) => {
                v.retain(|x| &**x != id);
                match v.len() {
                    0 => true,
                    1 => {
                        *self = Ids::One(v[0].clone());
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn extend_into(&self, out: &mut Vec<Arc<str>>) {
        match self {
            Ids::One(a) => out.push(a.clone()),
            Ids::Many(v) => out.extend(v.iter().cloned()),
        }
    }
}

/// What an object contributes to an index: the keys of each field and its order key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexKeys {
    pub id: String,
    pub fields: Vec<Vec<String>>,
    pub created: String,
}

/// The index of one kind.
#[derive(Debug, Default)]
pub struct Index {
    fields: Vec<HashMap<Box<str>, Ids>>,
    /// Every id in the default list order.
    order: BTreeSet<(Box<str>, Arc<str>)>,
}

impl Index {
    pub fn new(fields: usize) -> Index {
        Index {
            fields: (0..fields).map(|_| HashMap::new()).collect(),
            order: BTreeSet::new(),
        }
    }

    pub fn insert(&mut self, keys: &IndexKeys) {
        let id: Arc<str> = Arc::from(keys.id.as_str());
        for (map, ks) in self.fields.iter_mut().zip(&keys.fields) {
            for k in ks {
                match map.get_mut(k.as_str()) {
                    Some(ids) => ids.insert(&id),
                    None => {
                        map.insert(k.as_str().into(), Ids::One(id.clone()));
                    }
                }
            }
        }
        self.order.insert((keys.created.as_str().into(), id));
    }

    pub fn remove(&mut self, keys: &IndexKeys) {
        for (map, ks) in self.fields.iter_mut().zip(&keys.fields) {
            for k in ks {
                if map
                    .get_mut(k.as_str())
                    .is_some_and(|ids| ids.remove(&keys.id))
                {
                    map.remove(k.as_str());
                }
            }
        }
        self.order
            .remove(&(keys.created.as_str().into(), Arc::from(keys.id.as_str())));
    }

    /// Ids holding `key` in `field`.
    pub fn lookup(&self, field: usize, key: &str, out: &mut Vec<Arc<str>>) {
        if let Some(ids) = self.fields.get(field).and_then(|m| m.get(key)) {
            ids.extend_into(out);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Ids `skip..skip + take` in the default order.
    pub fn page(&self, skip: usize, take: usize) -> Vec<Arc<str>> {
        self.order
            .iter()
            .skip(skip)
            .take(take)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Every id in the default order.
    pub fn ordered(&self) -> Vec<Arc<str>> {
        self.order.iter().map(|(_, id)| id.clone()).collect()
    }

    /// Number of distinct keys of `field` (tests, diagnostics).
    #[cfg(test)]
    pub fn keys_of(&self, field: usize) -> usize {
        self.fields[field].len()
    }
}

/// SCIM `meta.created` as lists order by it: the annotation, else the creation timestamp.
pub fn created_key(meta: &ObjectMeta) -> Cow<'_, str> {
    match meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CREATED_ANNOTATION))
    {
        Some(c) => Cow::Borrowed(c.as_str()),
        None => Cow::Owned(
            meta.creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        ),
    }
}

/// String values of every attribute named `name` (case-insensitively) in `attrs`: hand-
/// written objects may carry a differently cased duplicate the filter engine could read.
fn ci_strings<'a>(attrs: &'a Map<String, Value>, name: &'a str) -> impl Iterator<Item = &'a str> {
    attrs
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| v.as_str())
}

fn email_keys(attrs: &Map<String, Value>, out: &mut Vec<String>) {
    let mut odd = false;
    let mut scalar = |v: &Value, out: &mut Vec<String>| match v {
        Value::Null => {}
        Value::String(s) => out.push(s.to_lowercase()),
        _ => odd = true,
    };
    let mut item = |v: &Value, out: &mut Vec<String>| match v {
        Value::Object(o) => {
            for (_, sv) in o.iter().filter(|(k, _)| k.eq_ignore_ascii_case("value")) {
                match sv {
                    Value::Array(a) => a.iter().for_each(|x| scalar(x, out)),
                    x => scalar(x, out),
                }
            }
        }
        x => scalar(x, out),
    };
    for (_, v) in attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("emails"))
    {
        match v {
            Value::Array(a) => a.iter().for_each(|x| item(x, out)),
            x => item(x, out),
        }
    }
    if odd {
        out.push(ODD_EMAIL.to_string());
    }
    out.sort();
    out.dedup();
}

/// Index keys of a user: lower-cased userName (caseExact=false), externalId as is
/// (caseExact=true), lower-cased email values.
pub fn user_keys(u: &ScimUser) -> IndexKeys {
    let attrs = &u.spec.attributes;
    let mut names = vec![u.spec.user_name.to_lowercase()];
    names.extend(ci_strings(attrs, "userName").map(str::to_lowercase));
    let mut external: Vec<String> = u.spec.external_id.iter().cloned().collect();
    external.extend(ci_strings(attrs, "externalId").map(str::to_string));
    let mut emails = Vec::new();
    email_keys(attrs, &mut emails);
    IndexKeys {
        id: u.metadata.name.clone().unwrap_or_default(),
        fields: vec![names, external, emails],
        created: created_key(&u.metadata).into_owned(),
    }
}

/// Index keys of a group: lower-cased displayName (caseExact=false), externalId as is.
pub fn group_keys(g: &ScimGroup) -> IndexKeys {
    let attrs = &g.spec.attributes;
    let mut names = vec![g.spec.display_name.to_lowercase()];
    names.extend(ci_strings(attrs, "displayName").map(str::to_lowercase));
    let mut external: Vec<String> = g.spec.external_id.iter().cloned().collect();
    external.extend(ci_strings(attrs, "externalId").map(str::to_string));
    IndexKeys {
        id: g.metadata.name.clone().unwrap_or_default(),
        fields: vec![names, external],
        created: created_key(&g.metadata).into_owned(),
    }
}

/// Index keys of a kind that has no index (membership shards).
pub fn no_keys<K>(_: &K) -> IndexKeys {
    IndexKeys {
        id: String::new(),
        fields: Vec::new(),
        created: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::resource::{group_spec, user_spec};
    use serde_json::json;

    fn user(id: &str, created: &str, attrs: Value) -> ScimUser {
        let Value::Object(m) = attrs else { panic!() };
        let mut u = ScimUser::new(id, user_spec(m).unwrap());
        u.metadata.annotations =
            Some([(CREATED_ANNOTATION.to_string(), created.to_string())].into());
        u
    }

    fn ids(ix: &Index, field: usize, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        ix.lookup(field, key, &mut out);
        let mut v: Vec<String> = out.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn user_keys_lower_case_names_and_emails_but_not_external_ids() {
        let u = user(
            "u1",
            "2024-01-01T00:00:00.000Z",
            json!({"userName": "Ann@X.org", "externalId": "AbC",
                   "emails": [{"value": "Ann@X.org", "type": "work"}, {"value": "Ä@home.de"}, {"type": "other"}]}),
        );
        let k = user_keys(&u);
        assert_eq!(k.id, "u1");
        assert_eq!(k.fields[USER_NAME], vec!["ann@x.org"]);
        assert_eq!(k.fields[USER_EXTERNAL_ID], vec!["AbC"]);
        assert_eq!(k.fields[USER_EMAIL], vec!["ann@x.org", "ä@home.de"]);
        assert_eq!(k.created, "2024-01-01T00:00:00.000Z");
    }

    #[test]
    fn odd_email_shapes_are_indexed_or_flagged() {
        let u = user(
            "u1",
            "c",
            json!({"userName": "a", "emails": {"VALUE": "One@x"}, "Emails": ["two@x", 5]}),
        );
        let k = user_keys(&u);
        assert_eq!(k.fields[USER_EMAIL], vec![ODD_EMAIL, "one@x", "two@x"]);
    }

    #[test]
    fn insert_update_delete_keep_lookups_and_order_consistent() {
        let mut ix = Index::new(3);
        let a = user(
            "a",
            "2024-01-02",
            json!({"userName": "Same", "externalId": "x"}),
        );
        let b = user(
            "b",
            "2024-01-01",
            json!({"userName": "same", "emails": [{"value": "b@x"}]}),
        );
        ix.insert(&user_keys(&a));
        ix.insert(&user_keys(&b));
        assert_eq!(ids(&ix, USER_NAME, "same"), vec!["a", "b"]);
        assert_eq!(ids(&ix, USER_EXTERNAL_ID, "x"), vec!["a"]);
        assert_eq!(ids(&ix, USER_EMAIL, "b@x"), vec!["b"]);
        assert_eq!(ix.len(), 2);
        let order: Vec<String> = ix.ordered().iter().map(|s| s.to_string()).collect();
        assert_eq!(order, vec!["b", "a"], "creation time first");
        assert_eq!(ix.page(1, 5).len(), 1);

        // An update: the old keys go, the new ones come.
        let a2 = user(
            "a",
            "2024-01-02",
            json!({"userName": "Other", "externalId": "y"}),
        );
        ix.remove(&user_keys(&a));
        ix.insert(&user_keys(&a2));
        assert_eq!(ids(&ix, USER_NAME, "same"), vec!["b"]);
        assert_eq!(ids(&ix, USER_NAME, "other"), vec!["a"]);
        assert!(ids(&ix, USER_EXTERNAL_ID, "x").is_empty());
        assert_eq!(ix.len(), 2);

        ix.remove(&user_keys(&b));
        ix.remove(&user_keys(&a2));
        assert_eq!(ix.len(), 0);
        for f in [USER_NAME, USER_EXTERNAL_ID, USER_EMAIL] {
            assert_eq!(ix.keys_of(f), 0, "no empty buckets left behind");
        }
    }

    #[test]
    fn equal_creation_times_order_by_id() {
        let mut ix = Index::new(3);
        for id in ["c", "a", "b"] {
            ix.insert(&user_keys(&user(id, "t", json!({"userName": id}))));
        }
        let order: Vec<String> = ix.ordered().iter().map(|s| s.to_string()).collect();
        assert_eq!(order, vec!["a", "b", "c"]);
        ix.remove(&user_keys(&user("b", "t", json!({"userName": "b"}))));
        let order: Vec<String> = ix.ordered().iter().map(|s| s.to_string()).collect();
        assert_eq!(order, vec!["a", "c"]);
    }

    #[test]
    fn group_keys_lower_case_display_names() {
        let Value::Object(m) = json!({"displayName": "Admins", "externalId": "E1"}) else {
            panic!()
        };
        let g = ScimGroup::new("g1", group_spec(m, vec![], false).unwrap());
        let k = group_keys(&g);
        assert_eq!(k.fields[GROUP_DISPLAY_NAME], vec!["admins"]);
        assert_eq!(k.fields[GROUP_EXTERNAL_ID], vec!["E1"]);
    }
}
