//! The SCIM store and the controller read a group's members from the same objects, and
//! must give the same answer (`crd::membership`). Each case below is one where they used
//! to disagree. The store ordered by shard name and looked only at the shard a value
//! hashed to (members were then placed by hash); the controller grouped shards by
//! `spec.group`. Each case is asked of every
//! reader:
//! - the store: the full list from its caches, the list read from the API server on a
//!   cache miss, and the single-member check;
//! - the controller: the plan's members and `status.memberCount` from a snapshot of its
//!   caches, and the fast lane's member check.
use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::watcher::Event;

use crate::controller::revoke::View;
use crate::controller::world::World;
use crate::crd::group::shard_name;
use crate::crd::membership::fixtures::{group, id_not_in, ids_in, m, shard};
use crate::crd::membership::scim_type;
use crate::crd::{ScimGroup, ScimGroupMembers};
use crate::store::TestFeed;

/// One case: the objects, the group asked about, the values to ask about, and what the
/// definition says its members are (value → the type SCIM shows).
struct Case {
    name: &'static str,
    groups: Vec<ScimGroup>,
    shards: Vec<ScimGroupMembers>,
    asked: &'static str,
    universe: Vec<String>,
    expected: BTreeMap<String, &'static str>,
}

/// Every reader, on the objects of `case`, answers `case.expected`.
async fn check(case: Case) {
    let name = case.name;
    let g = case
        .groups
        .iter()
        .find(|g| g.metadata.name.as_deref() == Some(case.asked))
        .expect("the asked group")
        .clone();
    let id = case.asked;
    let expected_users: BTreeSet<String> = case
        .expected
        .iter()
        .filter(|(_, t)| **t == "User")
        .map(|(v, _)| v.clone())
        .collect();
    let shown = |members: BTreeMap<String, Option<String>>| -> BTreeMap<String, String> {
        members
            .into_iter()
            .map(|(v, t)| (v, scim_type(t.as_deref()).to_owned()))
            .collect()
    };
    let expected: BTreeMap<String, String> = case
        .expected
        .iter()
        .map(|(v, t)| (v.clone(), (*t).to_string()))
        .collect();

    // The SCIM store, from its caches.
    let mut feed = TestFeed::new(Vec::new(), case.groups.clone());
    for s in &case.shards {
        feed.shard(Event::Apply(s.clone()));
    }
    let store = &feed.store;
    assert_eq!(
        shown(store.group_members(&g)),
        expected,
        "{name}: store list"
    );
    let (_, read) = store.group_read(id, true).await.expect("group_read");
    assert_eq!(shown(read.expect("members")), expected, "{name}: store GET");
    // And on a cache miss: the group only on the API server, shards read by name from it.
    let others: Vec<ScimGroup> = case
        .groups
        .iter()
        .filter(|o| o.metadata.name.as_deref() != Some(id))
        .cloned()
        .collect();
    let mut lagging = TestFeed::new(Vec::new(), others);
    for s in &case.shards {
        lagging.shard(Event::Apply(s.clone()));
    }
    lagging.api_has("scimgroups", &g);
    let (_, read) = lagging
        .store
        .group_read(id, true)
        .await
        .expect("group_read");
    assert_eq!(
        shown(read.expect("members")),
        expected,
        "{name}: store GET on a cache miss"
    );

    // The controller: the plan's input and memberCount from its caches.
    let world = World::holding(Vec::new(), case.groups.clone(), case.shards.clone());
    let snap = world.snapshot();
    let planned = snap
        .input
        .groups
        .iter()
        .find(|p| p.id == id)
        .expect("the group in the plan");
    let planned: BTreeSet<String> = planned.members.iter().cloned().collect();
    assert_eq!(planned, expected_users, "{name}: the plan's members");
    assert_eq!(
        snap.member_counts.get(id).copied(),
        Some(expected.len() as u64),
        "{name}: memberCount"
    );

    // One value at a time: the store's check (any type) and the fast lane's (users).
    for v in case.universe.iter().chain(expected.keys()) {
        assert_eq!(
            store.is_member(&g, v),
            expected.contains_key(v),
            "{name}: store is_member({v})"
        );
        assert_eq!(
            world.is_member(id, v),
            expected_users.contains(v),
            "{name}: fast lane is_member({v})"
        );
    }
}

fn expect(members: &[(&str, &'static str)]) -> BTreeMap<String, &'static str> {
    members
        .iter()
        .map(|(v, t)| ((*v).to_string(), *t))
        .collect()
}

#[tokio::test]
async fn a_shard_named_for_one_group_naming_another_counts_for_neither() {
    let ids = ids_in(3, 2);
    let bad = shard(
        &shard_name("g", 3),
        "h",
        None,
        ids.iter().map(|v| m(v, None)).collect(),
    );
    let groups = vec![
        group("g", Some("uid-g"), vec![]),
        group("h", Some("uid-h"), vec![]),
    ];
    for asked in ["g", "h"] {
        check(Case {
            name: "g-03 saying spec.group h",
            groups: groups.clone(),
            shards: vec![bad.clone()],
            asked,
            universe: ids.clone(),
            expected: expect(&[]),
        })
        .await;
    }
}

#[tokio::test]
async fn objects_not_named_as_shards_of_the_group_do_not_count() {
    let v = ids_in(1, 1).remove(0);
    for name in ["g-99", "x-01", "g-1", "g-001"] {
        check(Case {
            name,
            groups: vec![
                group("g", Some("uid-g"), vec![]),
                group("x", Some("uid-x"), vec![]),
            ],
            shards: vec![shard(name, "g", None, vec![m(&v, None)])],
            asked: "g",
            universe: vec![v.clone()],
            expected: expect(&[]),
        })
        .await;
    }
}

/// A member counts in any shard of its group; a value two shards hold with different
/// types is one member, typed by the higher-indexed shard.
#[tokio::test]
async fn a_member_counts_in_any_shard_the_highest_index_typing_it() {
    let [a, b] = [ids_in(6, 1).remove(0), id_not_in(6)];
    check(Case {
        name: "members in any shard",
        groups: vec![group("g", Some("uid-g"), vec![])],
        shards: vec![
            shard(
                &shard_name("g", 11),
                "g",
                Some("uid-g"),
                vec![m(&b, Some("User"))],
            ),
            shard(
                &shard_name("g", 6),
                "g",
                Some("uid-g"),
                vec![m(&a, None), m(&b, Some("Group"))],
            ),
        ],
        asked: "g",
        universe: vec![a.clone(), b.clone()],
        expected: expect(&[(&a, "User"), (&b, "User")]),
    })
    .await;
}

#[tokio::test]
async fn inline_and_sharded_members_are_one_list() {
    let [both, sharded] = [ids_in(2, 2)[0].clone(), ids_in(2, 2)[1].clone()];
    check(Case {
        name: "inline and sharded",
        groups: vec![group(
            "g",
            Some("uid-g"),
            vec![m("inline-only", None), m(&both, Some("Group"))],
        )],
        shards: vec![shard(
            &shard_name("g", 2),
            "g",
            Some("uid-g"),
            vec![m(&both, None), m(&sharded, Some("User"))],
        )],
        asked: "g",
        universe: vec![],
        // `both` is listed inline as a Group and in its shard as a User: the shard wins.
        expected: expect(&[("inline-only", "User"), (&both, "User"), (&sharded, "User")]),
    })
    .await;
}

#[tokio::test]
async fn nested_groups_count_and_grant_nothing_types_read_in_any_case() {
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| ids_in(9, 4)[i].clone());
    check(Case {
        name: "kinds",
        groups: vec![
            group(
                "g",
                Some("uid-g"),
                vec![m("nested", Some("GROUP")), m("bot", Some("Robot"))],
            ),
            group("nested", Some("uid-n"), vec![]),
        ],
        shards: vec![shard(
            &shard_name("g", 9),
            "g",
            None,
            vec![
                m(&a, Some("group")),
                m(&b, Some("user")),
                m(&c, Some("USER")),
                m(&d, None),
            ],
        )],
        asked: "g",
        // Values are case-exact: an upper-case spelling is nobody.
        universe: vec![a.to_uppercase(), "NESTED".into()],
        expected: expect(&[
            ("nested", "Group"),
            ("bot", "Robot"),
            (&a, "Group"),
            (&b, "User"),
            (&c, "User"),
            (&d, "User"),
        ]),
    })
    .await;
}

#[tokio::test]
async fn duplicates_are_one_member_the_last_entry_winning() {
    let [x, y] = [ids_in(4, 2)[0].clone(), ids_in(4, 2)[1].clone()];
    check(Case {
        name: "duplicates",
        groups: vec![group(
            "g",
            Some("uid-g"),
            vec![
                m("i", None),
                m("i", Some("Group")),
                m("j", Some("Group")),
                m("j", None),
            ],
        )],
        shards: vec![shard(
            &shard_name("g", 4),
            "g",
            Some("uid-g"),
            vec![
                m(&x, None),
                m(&x, Some("Group")),
                m(&y, Some("Group")),
                m(&y, None),
                m(&y, None),
            ],
        )],
        asked: "g",
        universe: vec![],
        expected: expect(&[("i", "Group"), ("j", "User"), (&x, "Group"), (&y, "User")]),
    })
    .await;
}

#[tokio::test]
async fn shards_left_by_an_earlier_group_with_the_same_id_do_not_count() {
    let old = ids_in(5, 1).remove(0);
    let kept = ids_in(8, 1).remove(0);
    check(Case {
        name: "stale owner",
        groups: vec![group("g", Some("uid-new"), vec![])],
        shards: vec![
            shard(
                &shard_name("g", 5),
                "g",
                Some("uid-old"),
                vec![m(&old, None)],
            ),
            shard(
                &shard_name("g", 8),
                "g",
                Some("uid-new"),
                vec![m(&kept, None)],
            ),
        ],
        asked: "g",
        universe: vec![old.clone()],
        expected: expect(&[(&kept, "User")]),
    })
    .await;
}
