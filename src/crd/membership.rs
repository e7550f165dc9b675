//! Who is a member of a ScimGroup: the one definition that the SCIM store (GET /Groups,
//! member filters, member writes) and the controller (plan, `status.memberCount`,
//! revocation fast lane) share. Both watch the same objects; neither may read them its
//! own way. Everything here is pure. The callers fetch the objects, by name from a
//! cache, from a LIST or from the API server, and this module says what they mean.
//!
//! # The definition
//!
//! A group's members are its inline `spec.members`, overlaid with the entries of its
//! shards:
//!
//! 1. **Which shard objects belong to group `G`.** A ScimGroupMembers object is shard `i`
//!    of `G` when all three of these hold:
//!    - its name is exactly `shard_name(G, i)` (`<G>-<NN>`, `NN` 00..63);
//!    - its `spec.group` is `G`;
//!    - if it has owner references to ScimGroups, one of them carries `G`'s uid.
//!
//!    The name is required because the writer (the SCIM store) addresses shards by name
//!    only. A member in an object it never writes (`x-01` or `G-99` saying
//!    `spec.group: G`) could not be removed through SCIM, yet it would grant access.
//!    `spec.group` is required because a name and a `spec.group` that disagree
//!    (`G-03` saying `spec.group: H`) make a broken object, and a broken object grants
//!    nothing. It then belongs to no group. Before this module the store read by name
//!    and the controller by `spec.group`; requiring both keeps only what both accepted.
//!    The owner uid is required because garbage collection removes a deleted group's
//!    shards only eventually, and the SCIM delete's own cleanup can fail. A group
//!    created again with the same id (by hand, or by a restore) must not inherit the old
//!    group's members. A shard with no ScimGroup owner (written by hand) still belongs
//!    to `G` by name and `spec.group`. A group whose uid is unknown (an object not yet
//!    stored) skips the uid check.
//! 2. **Where an entry counts.** In any shard of its group. The writer puts a new member
//!    in the shard with the most room (`store::placement`), so that adding 100 members to
//!    a 20,000-member group rewrites one shard and not every shard, as placing each member
//!    by a hash of its value did. A removal by value takes the value out of every shard
//!    that holds it. Two replicas with stale caches can both add the same new value, each
//!    to its own shard: the value is then one member listed twice, which rule 3 handles.
//!    The single-member lookup reads all the shards, as the list does.
//! 3. **Duplicates and case.** Values are compared exactly: SCIM ids are case-exact, and
//!    ScimUser and ScimGroup names are lower case. A value is one member however often
//!    it is listed. Within one list the last entry wins (as when a list is read into a
//!    map). Across lists, the shards are read in index order after the inline members, so
//!    a shard's entry wins over an inline one (what SCIM wrote last wins over what was
//!    written by hand) and a higher-indexed shard's over a lower one's (one fixed answer
//!    for the rare value two shards hold with different types).
//! 4. **Type.** A missing `type`, or `User` in any case, makes a User member. `Group` in
//!    any case makes a Group member: a nested group, which counts and is shown but
//!    grants nothing by itself, since the controller doesn't expand nested groups. Any
//!    other type counts and is shown as written, and grants nothing. SCIM shows and
//!    filters the canonical type, so `User`/`Group` are shown spelled that way.
//! 5. **`spec.sharded`** is informational. Shards count whether or not it is set: the
//!    store writes a hand-written group's first shards before it sets the flag.
//! 6. **Count.** `status.memberCount` is the number of distinct member values, of every
//!    type.
//!
//! [`Membership::of`] builds the full list and [`member_kind`] answers for one value. A
//! unit test checks that the two agree on every value of randomised groups.
use std::collections::{BTreeMap, HashSet};

use kube::Resource;

use super::group::{shard_name, SHARD_COUNT};
use super::{Member, ScimGroup, ScimGroupMembers};

/// What a member is, by its `type` (see the module doc, rule 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberKind {
    /// No `type`, or `User` in any case: the only kind that is granted anything.
    User,
    /// `Group` in any case: a nested group.
    Group,
    /// Any other `type`.
    Other,
}

impl MemberKind {
    pub fn of(kind: Option<&str>) -> MemberKind {
        match kind {
            None => MemberKind::User,
            Some(k) if k.eq_ignore_ascii_case("User") => MemberKind::User,
            Some(k) if k.eq_ignore_ascii_case("Group") => MemberKind::Group,
            Some(_) => MemberKind::Other,
        }
    }
}

/// The `type` SCIM shows (and member filters see) for a stored one: `User`, `Group`, or
/// the type as written.
pub fn scim_type(kind: Option<&str>) -> &str {
    match (MemberKind::of(kind), kind) {
        (MemberKind::User, _) => "User",
        (MemberKind::Group, _) => "Group",
        (MemberKind::Other, Some(k)) => k,
        (MemberKind::Other, None) => "User",
    }
}

/// The group id and index a shard name stands for: `<id>-<NN>`, `NN` two digits below
/// [`SHARD_COUNT`]. Inverse of [`shard_name`].
pub fn parse_shard_name(name: &str) -> Option<(&str, u32)> {
    let (id, nn) = name.rsplit_once('-')?;
    if id.is_empty() || nn.len() != 2 || !nn.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u32 = nn.parse().ok()?;
    (index < SHARD_COUNT).then_some((id, index))
}

/// The group and index a shard object claims: its name and `spec.group` agree (rule 1
/// without the owner check, which needs the group). None for a broken object.
pub fn claimed(shard: &ScimGroupMembers) -> Option<(&str, u32)> {
    let (id, index) = parse_shard_name(shard.metadata.name.as_deref()?)?;
    (shard.spec.group == id).then_some((id, index))
}

/// Whether nothing in the shard's owner references says it belongs to another group
/// than `group` (rule 1).
fn owned_by(group: &ScimGroup, shard: &ScimGroupMembers) -> bool {
    let Some(uid) = group.metadata.uid.as_deref() else {
        return true;
    };
    let kind = ScimGroup::kind(&());
    let api_group = format!("{}/", ScimGroup::group(&()));
    let mut owners = shard
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == kind && o.api_version.starts_with(&api_group))
        .peekable();
    owners.peek().is_none() || owners.any(|o| o.uid == uid)
}

/// The index under which `shard` belongs to `group`, if it does (rule 1).
pub fn shard_index(group: &ScimGroup, shard: &ScimGroupMembers) -> Option<u32> {
    let id = group.metadata.name.as_deref()?;
    match claimed(shard) {
        Some((claimed_id, index)) if claimed_id == id && owned_by(group, shard) => Some(index),
        _ => None,
    }
}

/// The entries of a shard, value and type as stored (rule 2: all of them count).
fn entries(members: &[Member]) -> impl Iterator<Item = (&str, Option<&str>)> {
    members
        .iter()
        .map(|m| (m.value.as_str(), m.kind.as_deref()))
}

/// The last entry for `value` in a list (rule 3).
fn last_in<'a>(members: &'a [Member], value: &str) -> Option<&'a Member> {
    members.iter().rev().find(|m| m.value == value)
}

/// The names of every shard object group `group_id` can have.
pub fn shard_names(group_id: &str) -> impl Iterator<Item = String> + '_ {
    (0..SHARD_COUNT).map(move |i| shard_name(group_id, i))
}

/// The members shard `index` of `group` gives, value → type as stored, for the writer to
/// apply member operations to. `shard` is the object named `shard_name(group, index)`,
/// if there is one. An object that doesn't belong to the group gives nothing (rule 1).
pub fn shard_members(
    group: &ScimGroup,
    index: u32,
    shard: Option<&ScimGroupMembers>,
) -> BTreeMap<String, Option<String>> {
    shard
        .filter(|s| shard_index(group, s) == Some(index))
        .map(|s| {
            entries(&s.spec.members)
                .map(|(v, k)| (v.to_owned(), k.map(str::to_owned)))
                .collect()
        })
        .unwrap_or_default()
}

/// The shards among `candidates` that belong to `group`, in index order (rule 3).
fn belonging<'a>(
    group: &ScimGroup,
    candidates: impl IntoIterator<Item = &'a ScimGroupMembers>,
) -> Vec<(u32, &'a ScimGroupMembers)> {
    let mut shards: Vec<(u32, &ScimGroupMembers)> = candidates
        .into_iter()
        .filter_map(|s| Some((shard_index(group, s)?, s)))
        .collect();
    shards.sort_by_key(|(i, _)| *i);
    shards
}

/// What `value` is in `group`, read from the shards among `candidates` (the objects
/// named [`shard_names`] of the group, or any superset) and the inline members, without
/// building the whole list. None: not a member. Always equal to
/// `Membership::of(group, candidates).kind(value)`.
pub fn member_kind<'a>(
    group: &ScimGroup,
    candidates: impl IntoIterator<Item = &'a ScimGroupMembers>,
    value: &str,
) -> Option<MemberKind> {
    let sharded = belonging(group, candidates)
        .into_iter()
        .rev()
        .find_map(|(_, s)| last_in(&s.spec.members, value));
    sharded
        .or_else(|| last_in(&group.spec.members, value))
        .map(|m| MemberKind::of(m.kind.as_deref()))
}

/// All members of one group: value → type as stored (the type read through
/// [`MemberKind::of`] or [`scim_type`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership<'a> {
    members: BTreeMap<&'a str, Option<&'a str>>,
}

impl<'a> Membership<'a> {
    /// The members of `group`, reading the shards among `candidates` that belong to it
    /// (any objects may be passed: the ones looked up by name, or every shard listed).
    pub fn of(
        group: &'a ScimGroup,
        candidates: impl IntoIterator<Item = &'a ScimGroupMembers>,
    ) -> Membership<'a> {
        let mut members: BTreeMap<&str, Option<&str>> = group
            .spec
            .members
            .iter()
            .map(|m| (m.value.as_str(), m.kind.as_deref()))
            .collect();
        for (_, shard) in belonging(group, candidates) {
            members.extend(entries(&shard.spec.members));
        }
        Membership { members }
    }

    /// The number of members, of every type: `status.memberCount`.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn kind(&self, value: &str) -> Option<MemberKind> {
        self.members.get(value).map(|k| MemberKind::of(*k))
    }

    /// Every member and its kind, by value.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, MemberKind)> + '_ {
        self.members.iter().map(|(v, k)| (*v, MemberKind::of(*k)))
    }

    /// The User members: the ones the controller grants to.
    pub fn users(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.iter()
            .filter(|(_, k)| *k == MemberKind::User)
            .map(|(v, _)| v)
    }

    /// The members for SCIM to show: value → type, a stored type canonical
    /// ([`scim_type`]), a missing one still missing (shown as `User`; 50,000 members
    /// need no 50,000 copies of the word).
    pub fn to_scim(&self) -> BTreeMap<String, Option<String>> {
        self.members
            .iter()
            .map(|(v, k)| ((*v).to_owned(), k.map(|k| scim_type(Some(k)).to_owned())))
            .collect()
    }
}

/// The User members a shard object lists for the group it claims (rules 2 to 4; the
/// owner check needs the group and is left to [`member_kind`]). For the revocation fast
/// lane: the users an event may have taken out of a group, checked again with
/// [`member_kind`] (another shard may still hold them).
pub fn claimed_users(shard: &ScimGroupMembers) -> Option<(&str, HashSet<&str>)> {
    let (id, _) = claimed(shard)?;
    let last: BTreeMap<&str, Option<&str>> = entries(&shard.spec.members).collect();
    let users = last
        .into_iter()
        .filter(|(_, k)| MemberKind::of(*k) == MemberKind::User)
        .map(|(v, _)| v)
        .collect();
    Some((id, users))
}

/// The User members listed inline in a group (rules 3 and 4), for the same purpose.
pub fn inline_users(group: &ScimGroup) -> HashSet<&str> {
    let last: BTreeMap<&str, Option<&str>> = group
        .spec
        .members
        .iter()
        .map(|m| (m.value.as_str(), m.kind.as_deref()))
        .collect();
    last.into_iter()
        .filter(|(_, k)| MemberKind::of(*k) == MemberKind::User)
        .map(|(v, _)| v)
        .collect()
}

/// Objects for the tests of every reader of membership.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::crd::group::shard_of;
    use crate::crd::{ScimGroupMembersSpec, ScimGroupSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    pub(crate) fn m(v: &str, kind: Option<&str>) -> Member {
        Member {
            value: v.into(),
            kind: kind.map(Into::into),
        }
    }

    /// Group `id` (uid `uid` when given) with `inline` members.
    pub(crate) fn group(id: &str, uid: Option<&str>, inline: Vec<Member>) -> ScimGroup {
        let mut g = ScimGroup::new(
            id,
            ScimGroupSpec {
                display_name: format!("{id} name"),
                external_id: None,
                members: inline,
                sharded: true,
                attributes: Default::default(),
            },
        );
        g.metadata.uid = uid.map(Into::into);
        g
    }

    /// An owner reference to the ScimGroup with `uid`.
    pub(crate) fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "scim.kubescim.io/v1alpha1".into(),
            kind: "ScimGroup".into(),
            name: "whatever".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    /// A ScimGroupMembers object named `name` saying `spec.group`, owned by the group with
    /// `owner_uid` when given.
    pub(crate) fn shard(
        name: &str,
        spec_group: &str,
        owner_uid: Option<&str>,
        members: Vec<Member>,
    ) -> ScimGroupMembers {
        let mut s = ScimGroupMembers::new(
            name,
            ScimGroupMembersSpec {
                group: spec_group.into(),
                members,
            },
        );
        s.metadata.owner_references = owner_uid.map(|u| vec![owner(u)]);
        s
    }

    /// `n` ids (valid object names) that hash to shard `index`.
    pub(crate) fn ids_in(index: u32, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("user-{i}"))
            .filter(|v| shard_of(v) == index)
            .take(n)
            .collect()
    }

    /// An id that hashes to another shard than `index`.
    pub(crate) fn id_not_in(index: u32) -> String {
        (0..)
            .map(|i| format!("user-{i}"))
            .find(|v| shard_of(v) != index)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// The full list and the lookup, for every value in `universe`, agree; returns the
    /// list (value → kind).
    fn both(
        g: &ScimGroup,
        shards: &[ScimGroupMembers],
        universe: &[&str],
    ) -> BTreeMap<String, MemberKind> {
        let full = Membership::of(g, shards);
        for v in universe.iter().copied().chain(full.iter().map(|(v, _)| v)) {
            let one = member_kind(g, shards, v);
            assert_eq!(one, full.kind(v), "lookup and list disagree on {v}");
        }
        full.iter().map(|(v, k)| (v.to_owned(), k)).collect()
    }

    #[test]
    fn shard_names_parse_back() {
        for i in 0..SHARD_COUNT {
            assert_eq!(parse_shard_name(&shard_name("g-1", i)), Some(("g-1", i)));
        }
        for bad in ["g", "g-1", "g-001", "g-64", "g-99", "-03", "g-0a", "g-+3"] {
            assert_eq!(parse_shard_name(bad), None, "{bad}");
        }
        assert_eq!(shard_names("g").count(), SHARD_COUNT as usize);
    }

    /// A shard named for one group whose spec.group names another belongs to neither.
    #[test]
    fn a_shard_whose_name_and_spec_disagree_belongs_to_nobody() {
        let [a, b] = [
            group("a", Some("ua"), vec![]),
            group("b", Some("ub"), vec![]),
        ];
        let ids = ids_in(3, 2);
        let s = shard("a-03", "b", None, ids.iter().map(|v| m(v, None)).collect());
        assert_eq!(claimed(&s), None);
        let universe: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert!(both(&a, std::slice::from_ref(&s), &universe).is_empty());
        assert!(both(&b, std::slice::from_ref(&s), &universe).is_empty());
        assert_eq!(claimed_users(&s), None);
    }

    /// `<id>-99`, `x-01` and `<id>-3` saying spec.group = id are not shards of id.
    #[test]
    fn only_the_shard_names_count() {
        let g = group("g", Some("ug"), vec![]);
        let v = ids_in(1, 1).remove(0);
        let shards = vec![
            shard("g-99", "g", Some("ug"), vec![m(&v, None)]),
            shard("x-01", "g", Some("ug"), vec![m(&v, None)]),
            shard("g-1", "g", Some("ug"), vec![m(&v, None)]),
            shard("g-001", "g", Some("ug"), vec![m(&v, None)]),
        ];
        assert!(both(&g, &shards, &[&v]).is_empty());
        let good = shard("g-01", "g", Some("ug"), vec![m(&v, None)]);
        assert_eq!(
            both(&g, &[good], &[&v]),
            [(v.clone(), MemberKind::User)].into()
        );
    }

    /// A member counts in whichever shard holds it; a value two shards hold is one
    /// member, the higher-indexed shard giving its type, in whatever order the shards
    /// are passed.
    #[test]
    fn a_member_counts_in_any_shard_the_highest_index_winning() {
        let g = group("g", Some("ug"), vec![]);
        let [a, b] = ["user-a", "user-b"];
        let low = shard("g-02", "g", None, vec![m(a, None), m(b, Some("Group"))]);
        let high = shard("g-09", "g", Some("ug"), vec![m(b, Some("User"))]);
        for shards in [[low.clone(), high.clone()], [high.clone(), low.clone()]] {
            let list = both(&g, &shards, &[a, b]);
            assert_eq!(
                list,
                [
                    (a.to_string(), MemberKind::User),
                    (b.to_string(), MemberKind::User)
                ]
                .into()
            );
            assert_eq!(Membership::of(&g, &shards).len(), 2, "b counts once");
        }
        assert_eq!(
            shard_members(&g, 2, Some(&low)).keys().collect::<Vec<_>>(),
            [a, b]
        );
        assert_eq!(
            shard_members(&g, 3, Some(&low)).len(),
            0,
            "named g-02, not g-03"
        );
        assert_eq!(claimed_users(&low).unwrap().1, [a].into_iter().collect());
    }

    /// Inline and sharded members are one list; a value in both is one member, the
    /// shard's type winning; in one list the last entry wins.
    #[test]
    fn inline_and_sharded_members_combine_shards_winning() {
        let [x, y] = [ids_in(2, 2)[0].clone(), ids_in(2, 2)[1].clone()];
        let z = ids_in(7, 1).remove(0);
        let g = group(
            "g",
            None,
            vec![
                m(&x, Some("Group")),
                m(&z, None),
                m(&z, Some("group")),
                m("inline-only", None),
            ],
        );
        let s = shard(
            "g-02",
            "g",
            None,
            vec![
                m(&x, Some("User")),
                m(&y, None),
                m(&y, Some("Group")),
                m(&y, Some("user")),
            ],
        );
        let list = both(&g, std::slice::from_ref(&s), &[&x, &y, &z, "inline-only"]);
        assert_eq!(
            list,
            [
                (x.clone(), MemberKind::User),
                (y.clone(), MemberKind::User),
                (z.clone(), MemberKind::Group),
                ("inline-only".to_string(), MemberKind::User),
            ]
            .into()
        );
        let full = Membership::of(&g, [&s]);
        assert_eq!(full.len(), 4, "memberCount counts each value once");
        assert_eq!(full.users().count(), 3);
    }

    /// Nested groups and unknown types count as members and are shown, never granted;
    /// `type` is read in any case and shown canonically.
    #[test]
    fn kinds_in_any_case() {
        let g = group(
            "g",
            None,
            vec![
                m("a", Some("USER")),
                m("b", Some("gRoUp")),
                m("c", Some("Robot")),
                m("d", None),
            ],
        );
        let full = Membership::of(&g, []);
        assert_eq!(full.len(), 4);
        assert_eq!(full.users().collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(full.kind("b"), Some(MemberKind::Group));
        assert_eq!(full.kind("c"), Some(MemberKind::Other));
        assert_eq!(full.kind("A"), None, "values are case-exact");
        let shown = full.to_scim();
        let shown: Vec<(&str, &str)> = shown
            .iter()
            .map(|(v, k)| (v.as_str(), scim_type(k.as_deref())))
            .collect();
        assert_eq!(
            shown,
            [("a", "User"), ("b", "Group"), ("c", "Robot"), ("d", "User")]
        );
        assert_eq!(inline_users(&g), ["a", "d"].into_iter().collect());
    }

    /// Shards left from an earlier group with the same id (another owner uid) don't
    /// count; an ownerless shard does; an unknown group uid skips the check.
    #[test]
    fn shards_of_an_earlier_group_with_the_same_id_do_not_count() {
        let v = ids_in(4, 1).remove(0);
        let now = group("g", Some("new"), vec![]);
        let stale = shard("g-04", "g", Some("old"), vec![m(&v, None)]);
        assert!(both(&now, std::slice::from_ref(&stale), &[&v]).is_empty());
        assert!(shard_members(&now, 4, Some(&stale)).is_empty());
        let mut two_owners = stale.clone();
        two_owners
            .metadata
            .owner_references
            .as_mut()
            .unwrap()
            .push(owner("new"));
        assert_eq!(both(&now, &[two_owners], &[&v]).len(), 1);
        let ownerless = shard("g-04", "g", None, vec![m(&v, None)]);
        assert_eq!(both(&now, &[ownerless], &[&v]).len(), 1);
        let mut other_kind = stale.clone();
        other_kind.metadata.owner_references.as_mut().unwrap()[0].kind = "ConfigMap".into();
        assert_eq!(both(&now, &[other_kind], &[&v]).len(), 1);
        let unknown_uid = group("g", None, vec![]);
        assert_eq!(both(&unknown_uid, &[stale], &[&v]).len(), 1);
    }

    /// Random groups: inline members, the shards (some stale, some broken, values
    /// in several shards, duplicates, every kind spelling), plus decoys. The list and
    /// the lookup agree on every value, and the list equals a straightforward reading of
    /// the rules.
    #[test]
    fn the_list_and_the_lookup_agree_on_random_groups() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10_07);
        let kinds = [
            None,
            Some("User"),
            Some("user"),
            Some("Group"),
            Some("GROUP"),
            Some("Bot"),
        ];
        let values: Vec<String> = (0..60).map(|i| format!("v-{i}")).collect();
        for round in 0..300 {
            let pick = |rng: &mut rand::rngs::StdRng, n: usize| -> Vec<Member> {
                (0..n)
                    .map(|_| {
                        m(
                            &values[rng.random_range(0..values.len())],
                            kinds[rng.random_range(0..kinds.len())],
                        )
                    })
                    .collect()
            };
            let inline = pick(&mut rng, round % 7);
            let g = group("g", Some("ug"), inline);
            let mut shards = Vec::new();
            let mut expected: BTreeMap<String, MemberKind> = BTreeMap::new();
            for m in &g.spec.members {
                expected.insert(m.value.clone(), MemberKind::of(m.kind.as_deref()));
            }
            let mut from_shards = BTreeMap::new();
            for i in 0..SHARD_COUNT {
                let entries = pick(&mut rng, 8);
                let (owner_uid, spec_group) = match rng.random_range(0..6) {
                    0 => (Some("stale"), "g"),
                    1 => (None, "other"),
                    2 => (None, "g"),
                    _ => (Some("ug"), "g"),
                };
                let s = shard(&shard_name("g", i), spec_group, owner_uid, entries);
                if owner_uid != Some("stale") && spec_group == "g" {
                    for e in &s.spec.members {
                        from_shards.insert(e.value.clone(), MemberKind::of(e.kind.as_deref()));
                    }
                }
                shards.push(s);
            }
            // Decoys that never belong.
            shards.push(shard(
                &format!("g-{SHARD_COUNT}"),
                "g",
                Some("ug"),
                pick(&mut rng, 3),
            ));
            shards.push(shard("h-00", "g", Some("ug"), pick(&mut rng, 3)));
            shards.shuffle(&mut rng);
            expected.extend(from_shards);
            let universe: Vec<&str> = values.iter().map(String::as_str).collect();
            assert_eq!(both(&g, &shards, &universe), expected, "round {round}");
        }
    }
}
