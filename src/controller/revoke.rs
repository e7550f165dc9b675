//! The revocation fast lane, pure part: given what changed (a user deactivated, deleted
//! or renamed; a user leaving a group) and where each mapping's subjects live (the last
//! plan's [`MappingLayout`]s), which subjects to take out of which binding parts now.
//!
//! A whole-world pass costs what the tenant holds; a revocation must cost what it
//! changes. So removals skip the pass: the watch event names the user, the layout
//! names the part (linear hashing), and the live binding says whether the subject is
//! there. The next pass reconciles everything else, additions included.
//!
//! It only ever removes. It may remove a subject that another user still justifies
//! (two users sharing one email, say): the next pass, triggered by the same event, puts
//! it back. It never adds, so a stale view can only err towards less access.
use std::collections::{BTreeMap, HashMap, HashSet};

use super::plan::{
    BindingKind, MappingKey, MappingLayout, ResolvedSubjects, Subject, TargetLayout, UserInput,
};
use super::split::part_of;

/// A change that can only take access away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The user as it was before being deactivated, deleted or renamed: the subject
    /// names it had are withdrawn unless its current state still earns the same name.
    User(UserInput),
    /// The user left the group.
    Member { group: String, user: String },
}

/// The live state the fast lane checks against (the controller's caches).
pub trait View {
    /// The user as it is now (None: deleted).
    fn user(&self, id: &str) -> Option<UserInput>;
    fn is_member(&self, group: &str, user: &str) -> bool;
    /// Every User member of `group` (for many checks on one group at once).
    fn user_members(&self, group: &str) -> HashSet<String>;
    /// Whether the live binding holds `subject`.
    fn holds(
        &self,
        kind: BindingKind,
        namespace: Option<&str>,
        name: &str,
        subject: &Subject,
    ) -> bool;
}

/// One subject to take out of one binding object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Removal {
    pub kind: BindingKind,
    pub namespace: Option<String>,
    pub name: String,
    pub subject: Subject,
}

/// Group id → the mappings that select it.
pub fn mappings_by_group(
    layouts: &BTreeMap<MappingKey, MappingLayout>,
) -> HashMap<String, Vec<MappingKey>> {
    let mut by_group: HashMap<String, Vec<MappingKey>> = HashMap::new();
    for (key, layout) in layouts {
        for g in &layout.groups {
            by_group.entry(g.clone()).or_default().push(key.clone());
        }
    }
    by_group
}

/// Layouts for the moments before the first plan (a restart: at 100,000 users the first
/// snapshot and plan take seconds, and a deactivation sent then waited for them): every
/// mapping's subject naming, and the binding parts the cache holds for it, each target's
/// parts marked as able to hold any subject (`hashed: false`: found by looking, not by
/// hashing). Enough for a user's revocation (deactivated, deleted, renamed), which needs
/// no group resolution. Which groups a mapping selects is the plan's to resolve, so
/// `groups` stays empty and a member's removal still waits for the first pass.
pub fn provisional_layouts(
    mappings: impl IntoIterator<Item = (MappingKey, ResolvedSubjects)>,
    parts: impl IntoIterator<Item = (MappingKey, BindingKind, Option<String>, String)>,
) -> BTreeMap<MappingKey, MappingLayout> {
    let mut out: BTreeMap<MappingKey, MappingLayout> = mappings
        .into_iter()
        .map(|(key, subjects)| {
            let layout = MappingLayout {
                subjects,
                groups: Vec::new(),
                targets: Vec::new(),
            };
            (key, layout)
        })
        .collect();
    let mut targets: BTreeMap<(MappingKey, BindingKind, Option<String>), Vec<String>> =
        BTreeMap::new();
    for (key, kind, namespace, name) in parts {
        // A part of no mapping the cache holds is an orphan: the pass prunes it.
        if out.contains_key(&key) {
            targets
                .entry((key, kind, namespace))
                .or_default()
                .push(name);
        }
    }
    for ((key, kind, namespace), mut parts) in targets {
        parts.sort_unstable();
        if let Some(layout) = out.get_mut(&key) {
            layout.targets.push(TargetLayout {
                kind,
                namespace,
                parts,
                hashed: false,
            });
        }
    }
    out
}

/// Up to this many member revocations in one batch, each membership check scans the
/// group's shards; past it, each group's members are listed once.
const MEMBER_CHECKS_BEFORE_LISTING: usize = 64;

/// The removals `changes` call for, sorted and unique.
pub fn removals(
    layouts: &BTreeMap<MappingKey, MappingLayout>,
    by_group: &HashMap<String, Vec<MappingKey>>,
    changes: &[Revocation],
    view: &impl View,
) -> Vec<Removal> {
    let mut out: HashSet<Removal> = HashSet::new();
    // Many members leaving at once (a group emptied): each group's members read once, not
    // a scan of all its shards per member (that is quadratic in the group's size).
    let member_changes = changes
        .iter()
        .filter(|c| matches!(c, Revocation::Member { .. }))
        .count();
    let mut members_of: HashMap<String, HashSet<String>> = HashMap::new();
    let mut is_member = |group: &str, user: &str| -> bool {
        if member_changes <= MEMBER_CHECKS_BEFORE_LISTING {
            return view.is_member(group, user);
        }
        members_of
            .entry(group.to_owned())
            .or_insert_with(|| view.user_members(group))
            .contains(user)
    };
    for change in changes {
        match change {
            Revocation::User(before) => {
                let now = view.user(&before.id);
                for layout in layouts.values() {
                    let cfg = &layout.subjects;
                    if !cfg.binds_users() {
                        continue;
                    }
                    let Some(subject) = cfg.user_subject_name(before) else {
                        continue;
                    };
                    // Still active under the same name (a rename of another attribute,
                    // or reactivated since): nothing to withdraw here.
                    let kept = now.as_ref().is_some_and(|u| {
                        u.active && cfg.user_subject_name(u).as_ref() == Some(&subject)
                    });
                    if !kept {
                        withdraw(layout, &subject, view, &mut out);
                    }
                }
            }
            Revocation::Member { group, user } => {
                // A deleted user is handled by its own User revocation.
                let Some(now) = view.user(user) else { continue };
                for key in by_group.get(group).into_iter().flatten() {
                    let Some(layout) = layouts.get(key) else {
                        continue;
                    };
                    let cfg = &layout.subjects;
                    if !cfg.binds_users() {
                        continue;
                    }
                    let Some(subject) = cfg.user_subject_name(&now) else {
                        continue;
                    };
                    let still_member = layout.groups.iter().any(|g| is_member(g, user));
                    if now.active && still_member {
                        continue;
                    }
                    withdraw(layout, &subject, view, &mut out);
                }
            }
        }
    }
    let mut out: Vec<Removal> = out.into_iter().collect();
    out.sort();
    out
}

/// Every part of `layout` that holds `subject`.
fn withdraw(
    layout: &MappingLayout,
    subject: &Subject,
    view: &impl View,
    out: &mut HashSet<Removal>,
) {
    for t in &layout.targets {
        let candidates: Vec<&String> = if t.hashed {
            t.parts
                .get(part_of(subject, t.parts.len()))
                .into_iter()
                .collect()
        } else {
            t.parts.iter().collect()
        };
        for name in candidates {
            if view.holds(t.kind, t.namespace.as_deref(), name, subject) {
                out.insert(Removal {
                    kind: t.kind,
                    namespace: t.namespace.clone(),
                    name: name.clone(),
                    subject: subject.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::plan::{ResolvedSubjects, TargetLayout};
    use crate::controller::split::{split_subjects, Limits};
    use crate::crd::SubjectKind;
    use std::collections::BTreeSet;

    /// Bindings as name → subjects; users; memberships (group, user).
    #[derive(Default)]
    struct Fake {
        bindings: HashMap<(Option<String>, String), Vec<Subject>>,
        users: HashMap<String, UserInput>,
        members: HashSet<(String, String)>,
    }

    impl View for Fake {
        fn user(&self, id: &str) -> Option<UserInput> {
            self.users.get(id).cloned()
        }
        fn is_member(&self, group: &str, user: &str) -> bool {
            self.members.contains(&(group.to_owned(), user.to_owned()))
        }
        fn user_members(&self, group: &str) -> HashSet<String> {
            self.members
                .iter()
                .filter(|(g, _)| g == group)
                .map(|(_, u)| u.clone())
                .collect()
        }
        fn holds(&self, _: BindingKind, ns: Option<&str>, name: &str, s: &Subject) -> bool {
            self.bindings
                .get(&(ns.map(str::to_owned), name.to_owned()))
                .is_some_and(|l| l.contains(s))
        }
    }

    fn user(id: &str) -> UserInput {
        UserInput {
            id: id.into(),
            user_name: format!("{id}@example.com"),
            external_id: None,
            work_email: None,
            active: true,
        }
    }

    /// A cluster mapping over `groups` whose subjects (users u0..u{n}) are split into
    /// parts in namespaces ns0..ns{k}, exactly as the plan writes them.
    fn world(n: usize, namespaces: usize) -> (BTreeMap<MappingKey, MappingLayout>, Fake) {
        let mut fake = Fake::default();
        let mut subjects = Vec::new();
        for i in 0..n {
            let u = user(&format!("u{i}"));
            subjects.push(Subject::user(u.user_name.clone()));
            fake.members.insert(("g1".into(), u.id.clone()));
            fake.users.insert(u.id.clone(), u);
        }
        subjects.sort();
        let limits = Limits {
            max_subjects: 20,
            max_bytes: 1 << 20,
        };
        let (parts, hashed) = split_subjects(&subjects, limits, 0);
        assert!(hashed && parts.len() > 2);
        let mut targets = Vec::new();
        for k in 0..namespaces {
            let ns = format!("ns{k}");
            let names: Vec<String> = (0..parts.len()).map(|i| format!("b-{i}")).collect();
            for (name, part) in names.iter().zip(&parts) {
                fake.bindings
                    .insert((Some(ns.clone()), name.clone()), part.clone());
            }
            targets.push(TargetLayout {
                kind: BindingKind::RoleBinding,
                namespace: Some(ns),
                parts: names,
                hashed: true,
            });
        }
        let layout = MappingLayout {
            subjects: ResolvedSubjects::default(),
            groups: vec!["g1".into(), "g2".into()],
            targets,
        };
        (
            BTreeMap::from([(MappingKey::Cluster { name: "m".into() }, layout)]),
            fake,
        )
    }

    fn run(
        layouts: &BTreeMap<MappingKey, MappingLayout>,
        fake: &Fake,
        changes: &[Revocation],
    ) -> Vec<Removal> {
        removals(layouts, &mappings_by_group(layouts), changes, fake)
    }

    #[test]
    fn deactivation_takes_the_subject_out_of_its_one_part_in_every_namespace() {
        let (layouts, mut fake) = world(400, 3);
        let before = fake.users["u7"].clone();
        fake.users.get_mut("u7").unwrap().active = false;
        let r = run(&layouts, &fake, &[Revocation::User(before)]);
        assert_eq!(r.len(), 3, "{r:?}");
        for x in &r {
            assert_eq!(x.subject, Subject::user("u7@example.com"));
            assert!(fake.holds(x.kind, x.namespace.as_deref(), &x.name, &x.subject));
        }
        let namespaces: HashSet<_> = r.iter().map(|x| x.namespace.clone()).collect();
        assert_eq!(namespaces.len(), 3);
    }

    /// Before the first plan: the same removals as the plan's layouts give, found by
    /// looking through the mapping's cached parts; a member's removal waits for the plan
    /// (no group resolution), and a part of an unknown mapping is not a target.
    #[test]
    fn provisional_layouts_find_a_revoked_user_without_a_plan() {
        let (planned, mut fake) = world(400, 3);
        let key = MappingKey::Cluster { name: "m".into() };
        let parts = planned[&key].targets.iter().flat_map(|t| {
            t.parts
                .iter()
                .map(|name| (key.clone(), t.kind, t.namespace.clone(), name.clone()))
        });
        let orphan = MappingKey::Cluster {
            name: "gone".into(),
        };
        let orphan_part = (
            orphan.clone(),
            BindingKind::RoleBinding,
            Some("ns0".into()),
            "x".into(),
        );
        let provisional = provisional_layouts(
            [(key.clone(), ResolvedSubjects::default())],
            parts.chain([orphan_part]),
        );
        assert!(!provisional.contains_key(&orphan));
        let layout = &provisional[&key];
        assert_eq!(layout.targets.len(), 3);
        assert!(layout
            .targets
            .iter()
            .all(|t| !t.hashed && t.parts.len() > 2));
        assert!(layout.groups.is_empty());

        let before = fake.users["u7"].clone();
        fake.users.get_mut("u7").unwrap().active = false;
        let change = [Revocation::User(before)];
        let found = run(&provisional, &fake, &change);
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found, run(&planned, &fake, &change));

        fake.members.remove(&("g1".into(), "u5".into()));
        let left = [Revocation::Member {
            group: "g1".into(),
            user: "u5".into(),
        }];
        assert!(run(&provisional, &fake, &left).is_empty());
        assert!(!run(&planned, &fake, &left).is_empty());
    }

    #[test]
    fn deletion_and_rename_withdraw_the_old_name() {
        let (layouts, mut fake) = world(100, 1);
        let gone = fake.users.remove("u1").unwrap();
        let before = fake.users["u2"].clone();
        fake.users.get_mut("u2").unwrap().user_name = "renamed@example.com".into();
        let r = run(
            &layouts,
            &fake,
            &[Revocation::User(gone), Revocation::User(before)],
        );
        let names: Vec<&str> = r.iter().map(|x| x.subject.name.as_str()).collect();
        assert_eq!(names, ["u1@example.com", "u2@example.com"]);
    }

    #[test]
    fn a_user_still_active_under_the_same_name_keeps_access() {
        let (layouts, fake) = world(100, 2);
        // e.g. reactivated before the fast lane ran, or another attribute changed.
        let before = fake.users["u3"].clone();
        assert!(run(&layouts, &fake, &[Revocation::User(before)]).is_empty());
    }

    #[test]
    fn leaving_a_group_withdraws_unless_another_selected_group_holds_the_user() {
        let (layouts, mut fake) = world(100, 2);
        fake.members.remove(&("g1".into(), "u5".into()));
        fake.members.remove(&("g1".into(), "u6".into()));
        fake.members.insert(("g2".into(), "u6".into()));
        let r = run(
            &layouts,
            &fake,
            &[
                Revocation::Member {
                    group: "g1".into(),
                    user: "u5".into(),
                },
                Revocation::Member {
                    group: "g1".into(),
                    user: "u6".into(),
                },
                // A group no mapping selects changes nothing.
                Revocation::Member {
                    group: "other".into(),
                    user: "u7".into(),
                },
            ],
        );
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|x| x.subject.name == "u5@example.com"));
    }

    /// A group emptied at once: past MEMBER_CHECKS_BEFORE_LISTING revocations the
    /// members are listed once per group, with the same answer as one check each.
    #[test]
    fn many_members_leaving_at_once_get_the_same_answer_from_the_listing() {
        let (layouts, mut fake) = world(300, 1);
        let leaving: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();
        for u in &leaving {
            fake.members.remove(&("g1".to_string(), u.clone()));
        }
        // Ten of them are still members through the other selected group.
        for u in &leaving[..10] {
            fake.members.insert(("g2".into(), u.clone()));
        }
        let changes: Vec<Revocation> = leaving
            .iter()
            .map(|u| Revocation::Member {
                group: "g1".into(),
                user: u.clone(),
            })
            .collect();
        assert!(changes.len() > MEMBER_CHECKS_BEFORE_LISTING);
        let listed = run(&layouts, &fake, &changes);
        let one_by_one: BTreeSet<Removal> = changes
            .iter()
            .flat_map(|c| run(&layouts, &fake, std::slice::from_ref(c)))
            .collect();
        assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), one_by_one);
        let withdrawn: BTreeSet<&str> = listed.iter().map(|r| r.subject.name.as_str()).collect();
        assert_eq!(withdrawn.len(), 190);
        assert!(!withdrawn.contains("u3@example.com"));
    }

    #[test]
    fn group_subjects_and_unbound_names_are_left_to_the_pass() {
        let (mut layouts, mut fake) = world(100, 1);
        let before = fake.users["u8"].clone();
        fake.users.get_mut("u8").unwrap().active = false;
        for l in layouts.values_mut() {
            l.subjects.kind = SubjectKind::Group;
        }
        assert!(run(&layouts, &fake, &[Revocation::User(before.clone())]).is_empty());
        for l in layouts.values_mut() {
            l.subjects.kind = SubjectKind::User;
            l.subjects.user_prefix = "oidc:".into();
        }
        // Bound as "oidc:u8@…", which no binding holds: nothing to remove.
        assert!(run(&layouts, &fake, &[Revocation::User(before)]).is_empty());
    }

    #[test]
    fn unaddressed_parts_are_searched() {
        let (mut layouts, mut fake) = world(200, 1);
        // Move u9 into another part, as a held removal or the greedy fallback would.
        let key = fake
            .bindings
            .iter()
            .find(|(_, l)| l.contains(&Subject::user("u9@example.com")))
            .map(|(k, _)| k.clone())
            .unwrap();
        fake.bindings
            .get_mut(&key)
            .unwrap()
            .retain(|s| s.name != "u9@example.com");
        let other = fake.bindings.keys().find(|k| **k != key).cloned().unwrap();
        fake.bindings
            .get_mut(&other)
            .unwrap()
            .push(Subject::user("u9@example.com"));
        let before = fake.users["u9"].clone();
        fake.users.get_mut("u9").unwrap().active = false;
        assert!(run(&layouts, &fake, &[Revocation::User(before.clone())]).is_empty());
        for l in layouts.values_mut() {
            l.targets[0].hashed = false;
        }
        let r = run(&layouts, &fake, &[Revocation::User(before)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, other.1);
    }
}
