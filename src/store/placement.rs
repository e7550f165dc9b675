//! Which shard each part of a member change goes to: pure, for `store::groups` to write.
//!
//! A member counts in whichever of its group's shards holds it (`crd::membership`, rule
//! 2), so a change is split by where its values *are*:
//!
//! - A value some shards hold is changed (re-typed, removed) in each of them.
//! - A value no shard holds is new: it goes to the shard with room, chosen once for the
//!   whole change, so that a PATCH adding 100 members to a 20,000-member group rewrites
//!   one small shard. Placing by a hash of the value spread those 100 over every shard,
//!   and every PATCH rewrote the whole group (~1.2 MB at 20k).
//! - Filtered removals, remove-all and replace-all apply to every shard.
//!
//! "Room" keeps shards small and even. A group stays in one shard until that shard holds
//! `fill` bytes (`--member-shard-fill-bytes`), then opens another. Shards are tried
//! smallest first, then free names, then names that another object (a stale or
//! hand-written one) holds, which SCIM takes over only when nothing else is left. Past
//! `SHARD_COUNT` times the fill, a shard may grow to a quarter above the average shard (the
//! slack lets a whole PATCH land in one shard instead of topping up several).
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::crd::group::SHARD_COUNT;
use crate::crd::membership;
use crate::crd::{ScimGroup, ScimGroupMembers};
use crate::scim::patch::{MemberOp, MemberValue};

use super::resource::Members;

/// Bound on the members JSON of one shard, under etcd's 1.5 MiB per object (the object
/// also has metadata): ~22,000 members of 36-character ids per shard.
pub const MAX_SHARD_MEMBER_BYTES: usize = 1_400_000;

/// Bytes one member takes in a shard's JSON (`{"value":"…","type":"…"},`), a bound for
/// plain ids.
pub fn member_bytes(value: &str, kind: Option<&str>) -> usize {
    value.len() + kind.map_or(0, |k| k.len() + 10) + 13
}

/// Bytes of a shard's members.
pub fn members_bytes(m: &Members) -> usize {
    m.iter().map(|(v, k)| member_bytes(v, k.as_deref())).sum()
}

/// The members an op sequence adds (each value once, first occurrence wins).
pub(super) fn added_members(ops: &[MemberOp]) -> Vec<&MemberValue> {
    let mut seen = HashSet::new();
    ops.iter()
        .flat_map(|op| match op {
            MemberOp::Add(v) | MemberOp::ReplaceAll(v) => v.as_slice(),
            _ => &[],
        })
        .filter(|m| seen.insert(m.value.as_str()))
        .collect()
}

/// A member change split by shard.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// Shard index → the operations restricted to the values that shard holds or
    /// receives. Shards the change can't affect are left out.
    pub parts: BTreeMap<u32, Vec<MemberOp>>,
    /// The shards that receive new members. The writer writes them first, and only then
    /// the others, and stamps this set on every shard it writes (see [`Earlier`]).
    pub placing: BTreeSet<u32>,
}

/// What an earlier attempt of the same change left, read from the shards carrying its
/// key (`store::groups`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Earlier {
    /// `done[i]`: shard `i` carries the change's key. The writer leaves such a shard as it
    /// is, so it receives no new member.
    pub done: Vec<bool>,
    /// The `placing` set that attempt stamped.
    pub placing: BTreeSet<u32>,
}

/// The member change `ops` split by shard. `shards[i]` is the object named shard `i` of
/// `group`, if any (an object that doesn't belong to the group holds nothing).
///
/// A retry (`earlier`) must end where one clean attempt would, also for the sequences
/// that applying twice changes (a typeless add, then a removal filtered on type). A value
/// no shard holds is the question: it may be new and still unwritten, or the earlier
/// attempt may have written it and then taken it out again. Writing the placing shards
/// first answers it:
/// - Every placing shard is done: the earlier attempt wrote every new value where it
///   belonged, so a value no shard holds now was taken out by the change. It is left out.
/// - Some placing shard is not done: nothing else was written either, and the value is
///   placed again among the placing shards not done. That is exact for every sequence
///   but the ones applying twice changes, and only for a change whose new members needed
///   more than one shard (thousands at once), cut off between those shards' writes.
pub fn split(
    group: &ScimGroup,
    shards: &[Option<&ScimGroupMembers>],
    earlier: Option<&Earlier>,
    ops: &[MemberOp],
    fill: usize,
) -> Split {
    let before: Vec<Members> = (0..SHARD_COUNT)
        .map(|i| membership::shard_members(group, i, shards.get(i as usize).copied().flatten()))
        .collect();
    let mut holders: HashMap<&str, Vec<u32>> = HashMap::new();
    for (i, members) in (0..SHARD_COUNT).zip(&before) {
        for v in members.keys() {
            holders.entry(v.as_str()).or_default().push(i);
        }
    }
    let done = |i: u32| earlier.is_some_and(|e| e.done.get(i as usize).copied().unwrap_or(false));
    let open: Vec<bool> = match earlier {
        None => vec![true; SHARD_COUNT as usize],
        Some(e) => (0..SHARD_COUNT)
            .map(|i| e.placing.contains(&i) && !done(i))
            .collect(),
    };
    let new: Vec<&MemberValue> = added_members(ops)
        .into_iter()
        .filter(|m| !holders.contains_key(m.value.as_str()))
        .collect();
    // Nowhere left to place them: every placing shard of the earlier attempt is done.
    let new = if open.iter().any(|o| *o) {
        new
    } else {
        Vec::new()
    };
    // Per index: 0 the group's own object, 1 no object, 2 an object not the group's (a
    // stale or hand-made one, taken over only when no other index is left).
    let slot: Vec<u8> = (0..SHARD_COUNT)
        .map(|i| match shards.get(i as usize).copied().flatten() {
            Some(s) if membership::shard_index(group, s) == Some(i) => 0,
            None => 1,
            Some(_) => 2,
        })
        .collect();
    let placed = place(&before, &slot, &open, &new, fill);
    let home = |v: &str| -> Vec<u32> {
        match holders.get(v) {
            Some(held) => held.clone(),
            None => placed.get(v).map(|i| vec![*i]).unwrap_or_default(),
        }
    };

    let bulk = ops.iter().any(|op| {
        matches!(
            op,
            MemberOp::RemoveWhere(_) | MemberOp::RemoveAll | MemberOp::ReplaceAll(_)
        )
    });
    let affected: BTreeSet<u32> = if bulk {
        (0..SHARD_COUNT).collect()
    } else {
        ops.iter()
            .flat_map(|op| match op {
                MemberOp::Add(v) => v.iter().flat_map(|m| home(&m.value)).collect(),
                MemberOp::Remove(ids) => ids.iter().flat_map(|id| home(id)).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    let parts = affected
        .into_iter()
        .map(|shard| {
            let keep_vals = |v: &[MemberValue]| -> Vec<MemberValue> {
                v.iter()
                    .filter(|m| home(&m.value).contains(&shard))
                    .cloned()
                    .collect()
            };
            let ops = ops
                .iter()
                .map(|op| match op {
                    MemberOp::Add(v) => MemberOp::Add(keep_vals(v)),
                    MemberOp::ReplaceAll(v) => MemberOp::ReplaceAll(keep_vals(v)),
                    MemberOp::Remove(ids) => MemberOp::Remove(
                        ids.iter()
                            .filter(|id| home(id).contains(&shard))
                            .cloned()
                            .collect(),
                    ),
                    other => other.clone(),
                })
                .collect();
            (shard, ops)
        })
        .collect();
    let placing = match earlier {
        // The same set on every attempt, so that a third one reads it too.
        Some(e) => e.placing.clone(),
        None => placed.values().copied().collect(),
    };
    Split { parts, placing }
}

/// The shard each new value goes to (see the module doc). `before[i]`: the members shard
/// `i` holds; `slot[i]`: 0 when its object is the group's, 1 when there is none, 2 when
/// another object holds the name; `open[i]`: whether it may receive members.
fn place<'v>(
    before: &[Members],
    slot: &[u8],
    open: &[bool],
    new: &[&'v MemberValue],
    fill: usize,
) -> HashMap<&'v str, u32> {
    let mut size: Vec<usize> = before.iter().map(members_bytes).collect();
    let bytes: Vec<usize> = new
        .iter()
        .map(|m| member_bytes(&m.value, m.kind.as_deref()))
        .collect();
    let growth: usize = bytes.iter().sum();
    let total: usize = size.iter().sum::<usize>() + growth;
    // Never above what one object can hold: past that, the value-by-value fill below
    // spreads the change over every shard with room.
    let level = fill
        .max(total * 5 / 4 / SHARD_COUNT as usize)
        .min(MAX_SHARD_MEMBER_BYTES);
    // The group's shards, smallest first, then the free indices, then those another
    // object holds.
    let mut order: Vec<u32> = (0..SHARD_COUNT).filter(|i| open[*i as usize]).collect();
    order.sort_by_key(|i| match slot[*i as usize] {
        0 => (0, size[*i as usize], *i),
        rank => (rank, 0, *i),
    });

    // The whole change in one shard when one has room for it: one write.
    if let Some(shard) = order
        .iter()
        .copied()
        .find(|i| size[*i as usize] + growth <= level)
    {
        return new.iter().map(|m| (m.value.as_str(), shard)).collect();
    }
    // Else value by value, filling the shards in order. The level times SHARD_COUNT exceeds
    // the total, so some shard has room while all are open; the smallest open one (or,
    // with none open, the smallest) takes the rest.
    let fallback = order
        .iter()
        .copied()
        .min_by_key(|i| (size[*i as usize], *i))
        .unwrap_or(0);
    let mut placed = HashMap::with_capacity(new.len());
    for (m, bytes) in new.iter().zip(bytes) {
        let shard = order
            .iter()
            .copied()
            .find(|i| size[*i as usize] + bytes <= level)
            .unwrap_or(fallback);
        size[shard as usize] += bytes;
        placed.insert(m.value.as_str(), shard);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::group::shard_name;
    use crate::crd::membership::fixtures::{group, m, shard};
    use crate::crd::membership::Membership;
    use crate::scim::patch::apply_member_ops;

    const FILL: usize = crate::store::DEFAULT_SHARD_FILL_BYTES as usize;

    fn mv(v: &str) -> MemberValue {
        MemberValue {
            value: v.into(),
            kind: Some("User".into()),
        }
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{prefix}-{i:05}-0000-0000-0000-000000000000"))
            .collect()
    }

    /// Shards of group `g` (uid `ug`) holding the given values, by index.
    fn shards_with(contents: &[(u32, Vec<String>)]) -> Vec<Option<ScimGroupMembers>> {
        let mut out: Vec<Option<ScimGroupMembers>> = vec![None; SHARD_COUNT as usize];
        for (i, vals) in contents {
            out[*i as usize] = Some(shard(
                &shard_name("g", *i),
                "g",
                Some("ug"),
                vals.iter().map(|v| m(v, Some("User"))).collect(),
            ));
        }
        out
    }

    /// Apply a split change shard by shard, as the writer does; the shards after.
    fn apply(
        shards: &[Option<ScimGroupMembers>],
        ops: &[MemberOp],
    ) -> (BTreeSet<u32>, Vec<Option<ScimGroupMembers>>) {
        let g = group("g", Some("ug"), vec![]);
        let refs: Vec<Option<&ScimGroupMembers>> = shards.iter().map(Option::as_ref).collect();
        let parts = split(&g, &refs, None, ops, FILL).parts;
        let mut after = shards.to_vec();
        let mut written = BTreeSet::new();
        for (i, ops) in parts {
            let before = membership::shard_members(&g, i, shards[i as usize].as_ref());
            let mut m = before.clone();
            apply_member_ops(&mut m, &ops).unwrap();
            if m != before {
                written.insert(i);
                after[i as usize] = Some(shard(
                    &shard_name("g", i),
                    "g",
                    Some("ug"),
                    super::super::resource::members_to_vec(&m),
                ));
            }
        }
        (written, after)
    }

    fn shard_index(s: &ScimGroupMembers) -> u32 {
        membership::parse_shard_name(s.metadata.name.as_deref().unwrap_or_default())
            .map_or(0, |(_, i)| i)
    }

    fn members(shards: &[Option<ScimGroupMembers>]) -> Members {
        let g = group("g", Some("ug"), vec![]);
        Membership::of(&g, shards.iter().flatten()).to_scim()
    }

    /// The split change gives the group exactly what the change gives its member list.
    fn same_as_whole(shards: &[Option<ScimGroupMembers>], ops: &[MemberOp]) {
        let mut expected = members(shards);
        apply_member_ops(&mut expected, ops).unwrap();
        let (_, after) = apply(shards, ops);
        assert_eq!(members(&after), expected, "{ops:?}");
    }

    /// A small group lives in one shard; a PATCH of 100 new members to a large group
    /// writes exactly one shard, and the group ends up with what was asked.
    #[test]
    fn adds_go_to_one_shard() {
        let (written, small) = apply(
            &shards_with(&[]),
            &[MemberOp::Add(ids("a", 50).iter().map(|v| mv(v)).collect())],
        );
        assert_eq!(written, [0].into());
        let (written, _) = apply(
            &small,
            &[MemberOp::Add(ids("b", 50).iter().map(|v| mv(v)).collect())],
        );
        assert_eq!(written, [0].into(), "room in shard 0 still");

        // 20,000 members, one PATCH of 100 at a time.
        let mut shards = shards_with(&[]);
        let all = ids("u", 20_000);
        for chunk in all.chunks(100) {
            let ops = [MemberOp::Add(chunk.iter().map(|v| mv(v)).collect())];
            let (written, after) = apply(&shards, &ops);
            assert_eq!(written.len(), 1, "one shard per PATCH: {written:?}");
            shards = after;
        }
        let got = members(&shards);
        assert_eq!(got.len(), 20_000);
        let sizes: Vec<usize> = shards
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.spec.members.len()))
            .collect();
        // Each shard stays within the fill, or a quarter above the average once the
        // group outgrows the fill of every shard (one PATCH of slack), and the group is
        // spread over as many shards as that takes.
        let bytes = |s: &Option<ScimGroupMembers>| {
            s.as_ref().map_or(0, |s| {
                let g = group("g", Some("ug"), vec![]);
                members_bytes(&membership::shard_members(&g, shard_index(s), Some(s)))
            })
        };
        let total: usize = shards.iter().map(bytes).sum();
        let bound = FILL.max(total * 5 / 4 / SHARD_COUNT as usize);
        assert!(
            shards.iter().all(|s| bytes(s) <= bound),
            "no shard above {bound} bytes: {sizes:?}"
        );
        let used = sizes.iter().filter(|n| **n > 0).count();
        assert!(used >= total / bound, "{used} shards: {sizes:?}");
    }

    /// A value already held is never placed again; removals and re-types reach every
    /// shard that holds the value (also one two replicas placed twice).
    #[test]
    fn new_members_avoid_names_another_object_holds() {
        // Index 0 holds a stale object (an earlier group's uid), index 1 is free.
        let mut shards = shards_with(&[]);
        shards[0] = Some(shard(&shard_name("g", 0), "g", Some("earlier"), vec![]));
        let g = group("g", Some("ug"), vec![]);
        let refs: Vec<Option<&ScimGroupMembers>> = shards.iter().map(Option::as_ref).collect();
        let ops = [MemberOp::Add(vec![mv("a"), mv("b")])];
        let s = split(&g, &refs, None, &ops, FILL);
        assert_eq!(s.placing, BTreeSet::from([1]));
        // With no free index left, the first held one is taken over.
        let shards: Vec<Option<ScimGroupMembers>> = (0..SHARD_COUNT)
            .map(|i| Some(shard(&shard_name("g", i), "g", Some("earlier"), vec![])))
            .collect();
        let refs: Vec<Option<&ScimGroupMembers>> = shards.iter().map(Option::as_ref).collect();
        let s = split(&g, &refs, None, &ops, FILL);
        assert_eq!(s.placing, BTreeSet::from([0]));
    }

    #[test]
    fn held_values_change_where_they_are() {
        let [a, b, c] = ["a", "b", "c"].map(String::from);
        let shards = shards_with(&[(2, vec![a.clone(), b.clone()]), (7, vec![b.clone()])]);
        let (written, after) = apply(&shards, &[MemberOp::Add(vec![mv(&a), mv(&b)])]);
        assert!(written.is_empty(), "already members: {written:?}");
        let (written, after2) = apply(&after, &[MemberOp::Remove(vec![b.clone()])]);
        assert_eq!(written, [2, 7].into());
        assert_eq!(members(&after2).keys().collect::<Vec<_>>(), [&a]);
        let regroup = MemberValue {
            value: b.clone(),
            kind: Some("Group".into()),
        };
        let (written, _) = apply(&shards, &[MemberOp::Add(vec![regroup, mv(&c)])]);
        assert!(written.contains(&2) && written.contains(&7), "{written:?}");
        assert!(
            split(
                &group("g", Some("ug"), vec![]),
                &[],
                None,
                &[MemberOp::Remove(vec![c])],
                FILL
            )
            .parts
            .is_empty(),
            "removing a non-member touches nothing"
        );
    }

    /// Whatever the shards hold, a split change lands as the whole change would: adds
    /// then removals of the same value, filtered removals, replace-all.
    #[test]
    fn split_changes_land_as_whole_changes() {
        let many = ids("m", 3_000);
        let shards = shards_with(&[
            (0, many[..1_200].to_vec()),
            (3, many[1_200..2_000].to_vec()),
            (9, vec!["x".into(), many[5].clone()]),
        ]);
        let filter = crate::scim::filter::parse_filter(r#"value eq "x""#).unwrap();
        let cases: Vec<Vec<MemberOp>> = vec![
            vec![
                MemberOp::Add(vec![mv("new")]),
                MemberOp::Remove(vec!["new".into()]),
            ],
            vec![
                MemberOp::Remove(vec!["new".into()]),
                MemberOp::Add(vec![mv("new")]),
            ],
            vec![MemberOp::Add(
                many[1_900..2_600].iter().map(|v| mv(v)).collect(),
            )],
            vec![MemberOp::Remove(vec![many[5].clone(), many[1_500].clone()])],
            vec![MemberOp::RemoveWhere(filter), MemberOp::Add(vec![mv("y")])],
            vec![MemberOp::ReplaceAll(
                many[100..300]
                    .iter()
                    .map(|v| mv(v))
                    .chain([mv("z")])
                    .collect(),
            )],
            vec![MemberOp::RemoveAll, MemberOp::Add(vec![mv("w")])],
        ];
        for ops in cases {
            same_as_whole(&shards, &ops);
        }
    }
}
