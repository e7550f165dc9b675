//! The controller's cache of ScimUsers, compact.
//!
//! The controller reads five attributes of a user (the plan's [`UserInput`]), whether it
//! is being deleted and whether its status is already what the plan wants. A reflector
//! cache of `ScimUser` objects kept all of it and more: metadata, the SCIM attributes as
//! a JSON map, and the status with a grant per role, ~2 kB per user at 5,000 users (heap
//! profile in docs/scale.md), the largest share of the controller's heap. Here a user is
//! its [`UserInput`], whether it is being deleted and a 64-bit digest of its status: the
//! status writer compares digests ([`status_digest`]) instead of lists.
use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use kube::runtime::reflector::Lookup;
use kube::runtime::watcher::Event;
use kube::Resource;

use super::plan::UserInput;
use super::world::work_email;
use crate::crd::user::{AccessGrant, UserGroupRef};
use crate::crd::ScimUser;

/// A ScimUser as the controller caches it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedUser {
    /// What the plan reads; `input.id` is the object's name.
    pub input: UserInput,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// [`status_digest`] of the status fields the controller writes.
    pub status: u64,
}

impl CachedUser {
    pub fn from_user(u: &ScimUser) -> Self {
        let (groups, count, access) = u.status.as_ref().map_or((&[][..], None, &[][..]), |s| {
            (&s.groups[..], s.group_count, &s.access[..])
        });
        let access: Vec<&AccessGrant> = access.iter().collect();
        CachedUser {
            input: UserInput {
                id: u.metadata.name.clone().unwrap_or_default(),
                user_name: u.spec.user_name.clone(),
                external_id: u.spec.external_id.clone(),
                work_email: work_email(u.spec.attributes.get("emails")),
                active: u.spec.is_active(),
            },
            deleting: u.metadata.deletion_timestamp.is_some(),
            status: status_digest(groups, count, &access),
        }
    }

    /// A watch event of ScimUsers as one of cache entries.
    pub fn event(event: Event<ScimUser>) -> Event<CachedUser> {
        crate::watch::map_event(event, |u| Self::from_user(&u))
    }

    /// Whether `new` is a change the plan cares about, given the cached `old` (None =
    /// new): one of the five attributes it reads, or the deletion. Not any spec change:
    /// an Entra sync mostly replaces attributes no mapping reads (displayName, title,
    /// department…), and each of those used to start a full pass, at 50,000 users ×
    /// 100 namespaces 1.4–2.5 s of CPU each, which under a 100 requests/s sync ran back
    /// to back next to the revocations' patches. Nor our own status writes.
    pub fn changed(old: Option<&CachedUser>, new: &CachedUser) -> bool {
        old.is_none_or(|o| o.input != new.input || o.deleting != new.deleting)
    }
}

/// Digest of a user's `status.groups`, `status.groupCount` and `status.access` (in the
/// order given). Equal statuses have equal digests; a collision (2^-64) would only skip
/// one status write until the user's status changes again.
/// `groups` as the cache reads them (`UserGroupRef`) or as the plan shares them
/// (`Arc<UserGroupRef>`): an `Arc` hashes as what it points to, so both digest alike.
pub fn status_digest<G: Hash + std::borrow::Borrow<UserGroupRef>>(
    groups: &[G],
    group_count: Option<u32>,
    access: &[&AccessGrant],
) -> u64 {
    // SipHash with fixed keys: the same in every pass of this process, which is all it
    // needs (digests are never stored).
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    groups.hash(&mut h);
    group_count.hash(&mut h);
    access.hash(&mut h);
    h.finish()
}

// The store keys entries by name only; no uid or resourceVersion is kept.
impl Lookup for CachedUser {
    type DynamicType = ();

    fn kind(dt: &()) -> Cow<'_, str> {
        <ScimUser as Resource>::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        <ScimUser as Resource>::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        <ScimUser as Resource>::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        <ScimUser as Resource>::plural(dt)
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.input.id))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::user::GrantScope;
    use crate::crd::ScimUserSpec;
    use serde_json::json;

    fn grant(ns: Option<&str>, role: &str) -> AccessGrant {
        AccessGrant {
            namespace: ns.map(str::to_owned),
            scope: Some(if ns.is_some() {
                GrantScope::Namespace
            } else {
                GrantScope::Cluster
            }),
            role_kind: "ClusterRole".into(),
            role_name: role.into(),
            mapping: "m".into(),
            group: "g".into(),
        }
    }

    #[test]
    fn keeps_what_the_plan_reads_and_nothing_else() {
        for emails in [
            json!([{"value": "h@x", "type": "home", "primary": true}, {"value": "w@x", "type": "work"}]),
            json!([{"value": "only@x"}]),
            json!("not a list"),
        ] {
            let spec: ScimUserSpec = serde_json::from_value(json!({
                "userName": "ann", "externalId": "e1", "displayName": "Ann", "active": false,
                "emails": emails.clone(), "name": {"givenName": "Ann"}, "title": "x"
            }))
            .unwrap();
            let u = ScimUser::new("u1", spec);
            let c = CachedUser::from_user(&u);
            assert_eq!(c.input.id, "u1");
            assert_eq!(c.input.user_name, "ann");
            assert_eq!(c.input.external_id.as_deref(), Some("e1"));
            assert_eq!(c.input.work_email, work_email(Some(&emails)));
            assert!(!c.input.active);
            assert!(!c.deleting);
        }
    }

    #[test]
    fn the_status_digest_tells_statuses_apart() {
        let spec: ScimUserSpec = serde_json::from_value(json!({"userName": "ann"})).unwrap();
        let mut u = ScimUser::new("u1", spec);
        let none = CachedUser::from_user(&u).status;
        assert_eq!(none, status_digest::<UserGroupRef>(&[], None, &[]));

        let g = UserGroupRef {
            id: "g1".into(),
            display_name: Some("devs".into()),
        };
        let (a, b) = (grant(None, "view"), grant(Some("x"), "edit"));
        let status = |groups: Vec<UserGroupRef>, count, access: Vec<AccessGrant>| {
            serde_json::from_value(json!({"groups": groups, "groupCount": count, "access": access}))
                .unwrap()
        };
        u.status = Some(status(vec![g.clone()], Some(1), vec![a.clone(), b.clone()]));
        let full = CachedUser::from_user(&u).status;
        assert_eq!(
            full,
            status_digest(std::slice::from_ref(&g), Some(1), &[&a, &b])
        );
        let others = [
            status_digest(std::slice::from_ref(&g), Some(1), &[&a]),
            status_digest(std::slice::from_ref(&g), Some(1), &[&b, &a]),
            status_digest(std::slice::from_ref(&g), None, &[&a, &b]),
            status_digest::<UserGroupRef>(&[], Some(1), &[&a, &b]),
            status_digest::<UserGroupRef>(&[], None, &[]),
        ];
        for (i, d) in others.iter().enumerate() {
            assert_ne!(*d, full, "case {i}");
        }
    }

    #[test]
    fn only_what_the_plan_reads_and_deletion_count_as_changes() {
        let cached = |spec: serde_json::Value| {
            let spec: ScimUserSpec = serde_json::from_value(spec).unwrap();
            CachedUser::from_user(&ScimUser::new("u1", spec))
        };
        let base = json!({"userName": "ann", "externalId": "e1", "active": true,
                          "displayName": "Ann", "title": "dev",
                          "emails": [{"value": "ann@x", "type": "work"}]});
        let old = cached(base.clone());
        assert!(CachedUser::changed(None, &old));
        let with = |key: &str, value: serde_json::Value| {
            let mut spec = base.clone();
            spec[key] = value;
            cached(spec)
        };
        // What an Entra sync mostly sends: no pass.
        for (key, value) in [
            ("displayName", json!("Ann B")),
            ("title", json!("lead")),
            ("department", json!("ops")),
            (
                "emails",
                json!([{"value": "ann@x", "type": "work"}, {"value": "a@home", "type": "home"}]),
            ),
        ] {
            assert!(!CachedUser::changed(Some(&old), &with(key, value)), "{key}");
        }
        let mut status_only = old.clone();
        status_only.status ^= 1;
        assert!(!CachedUser::changed(Some(&old), &status_only));
        // What subjects are named by, or whether there is one: a pass.
        for (key, value) in [
            ("userName", json!("ann2")),
            ("externalId", json!("e2")),
            ("active", json!(false)),
            ("emails", json!([{"value": "ann@y", "type": "work"}])),
        ] {
            assert!(CachedUser::changed(Some(&old), &with(key, value)), "{key}");
        }
        let mut deleting = old.clone();
        deleting.deleting = true;
        assert!(CachedUser::changed(Some(&old), &deleting));
    }
}
