//! `kube-scim who NAMESPACE [--role R]`: every subject that kube-scim gives access to a
//! namespace, by which mapping, role and binding object. ClusterRoleBindings reach every
//! namespace: they are listed too, with scope `Cluster`.
//!
//! Read off the plan's bindings, like `access`; a subject that a live object still names
//! but the plan no longer does is listed as `Removing`.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::table::{or_dash, render};
use super::{
    bound, kept_note, Bound, Carrier, Facts, Live, LiveIndex, MappingRef, Scope, SubjectRef,
};
use crate::controller::plan::{
    BindingKind, GroupInput, MappingKey, MappingSpec, Plan, ResolvedSubjects, Subject, UserInput,
};
use crate::crd::RoleRef;

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhoReport {
    pub namespace: String,
    /// The `--role` filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub entries: Vec<Entry>,
    /// Problems of the mappings that target the namespace.
    pub problems: Vec<MappingProblem>,
    pub notes: Vec<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub subject: SubjectRef,
    /// The ScimUsers a User subject names (usually one).
    pub users: Vec<UserRef>,
    /// User subject: the user's groups the mapping selects. Group subject: the group.
    pub groups: Vec<String>,
    #[serde(flatten)]
    pub carrier: Carrier,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct UserRef {
    pub id: String,
    pub user_name: String,
    pub active: bool,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct MappingProblem {
    pub mapping: MappingRef,
    pub reason: String,
    pub message: String,
}

/// Whether `filter` (`edit`, `ClusterRole/edit`, `role/deployer`) names `role`.
fn role_matches(filter: &str, role: &RoleRef) -> bool {
    match filter.split_once('/') {
        Some((kind, name)) => {
            kind.eq_ignore_ascii_case(crate::controller::naming::role_kind_str(role.kind))
                && name == role.name
        }
        None => filter == role.name,
    }
}

/// Who has access to `namespace` through kube-scim under `plan` (made from `facts`).
pub fn report(facts: &Facts, plan: &Plan, namespace: &str, role: Option<&str>) -> WhoReport {
    let input = &facts.input;
    let live = LiveIndex::new(input);
    let wanted = |kind: BindingKind, ns: Option<&str>, r: &RoleRef| {
        let here = match kind {
            BindingKind::RoleBinding => ns == Some(namespace),
            BindingKind::ClusterRoleBinding => true,
        };
        here && role.is_none_or(|f| role_matches(f, r))
    };
    let mut names = Names::new(input);
    let mut entries = Vec::new();
    let mut planned: HashMap<(BindingKind, Option<&str>, &str), BTreeSet<&Subject>> =
        HashMap::new();
    for b in bound(plan, input) {
        if !wanted(b.kind, b.namespace, b.role_ref) {
            continue;
        }
        let layout = plan.layouts.get(b.mapping);
        for s in b.subjects {
            planned.entry(b.key()).or_default().insert(s);
            let (users, groups) = match layout {
                Some(l) => names.explain(s, &l.subjects, &l.groups),
                None => (Vec::new(), Vec::new()),
            };
            entries.push(Entry {
                subject: SubjectRef::from(s),
                users,
                groups,
                carrier: Carrier::new(
                    input,
                    &b,
                    Some(b.mapping),
                    live.state(&b, s),
                    b.kept.then(|| kept_note(plan, b.mapping)),
                ),
            });
        }
    }
    // Still in a live object, gone from the plan: the next pass removes them.
    for e in &input.existing {
        if !wanted(e.kind, e.namespace.as_deref(), &e.role_ref) {
            continue;
        }
        let key = (e.kind, e.namespace.as_deref(), e.name.as_str());
        let kept = planned.get(&key);
        for s in e.subjects.iter() {
            if kept.is_some_and(|k| k.contains(s)) {
                continue;
            }
            let (users, groups) = match e.mapping.as_ref().and_then(|k| plan.layouts.get(k)) {
                Some(l) => names.explain(s, &l.subjects, &l.groups),
                None => names.explain(s, &facts.settings.subjects, &[]),
            };
            let b = Bound {
                kind: e.kind,
                namespace: e.namespace.as_deref(),
                name: &e.name,
                role_ref: &e.role_ref,
                subjects: &e.subjects,
                mapping: e.mapping.as_ref().unwrap_or(&ORPHAN),
                kept: false,
            };
            entries.push(Entry {
                subject: SubjectRef::from(s),
                users,
                groups,
                carrier: Carrier::new(input, &b, e.mapping.as_ref(), Live::Removing, None),
            });
        }
    }
    entries.sort_by(|a, b| {
        let key = |e: &Entry| {
            let c = &e.carrier;
            (
                c.scope,
                c.role.clone(),
                e.subject.clone(),
                c.mapping.clone(),
                c.binding.clone(),
                c.live,
            )
        };
        key(a).cmp(&key(b))
    });

    let mut notes = Vec::new();
    if facts.settings.protected_namespaces.contains(namespace) {
        notes.push(format!(
            "namespace {namespace} is protected: kube-scim binds nothing there (cluster-wide grants still apply)"
        ));
    }
    if !input.namespaces.iter().any(|n| n.name == namespace) {
        notes.push(format!("namespace {namespace} does not exist"));
    }
    WhoReport {
        namespace: namespace.to_owned(),
        role: role.map(str::to_owned),
        entries,
        problems: problems(facts, plan, namespace),
        notes,
    }
}

/// Placeholder owner of an orphaned binding (never shown: its `mapping` is None).
static ORPHAN: MappingKey = MappingKey::Cluster {
    name: String::new(),
};

/// Problems of the mappings that bind in `namespace` or cluster-wide, or name it.
fn problems(facts: &Facts, plan: &Plan, namespace: &str) -> Vec<MappingProblem> {
    let mut out = Vec::new();
    for m in facts.input.mappings.iter().filter(|m| !m.deleting) {
        let targets_here = match (&m.key, &m.spec) {
            (MappingKey::Namespaced { namespace: ns, .. }, _) => ns == namespace,
            (MappingKey::Cluster { .. }, MappingSpec::Cluster(spec)) => {
                !spec.cluster_roles.is_empty()
                    || spec
                        .namespace_roles
                        .iter()
                        .any(|r| r.namespaces.iter().any(|n| n == namespace))
                    || plan.layouts.get(&m.key).is_some_and(|l| {
                        l.targets
                            .iter()
                            .any(|t| t.namespace.as_deref() == Some(namespace))
                    })
            }
            _ => false,
        } || plan.mapping_status.get(&m.key).is_some_and(|o| {
            // A namespace the budget keeps the mapping out of is still its target.
            o.fan_out.as_ref().is_some_and(|f| {
                f.withheld_bindings
                    .iter()
                    .any(|(ns, _)| ns.as_deref() == Some(namespace))
            })
        });
        if !targets_here {
            continue;
        }
        if let Some(o) = plan.mapping_status.get(&m.key) {
            for p in &o.problems {
                out.push(MappingProblem {
                    mapping: MappingRef::from(&m.key),
                    reason: p.reason.as_str().to_owned(),
                    message: p.message.clone(),
                });
            }
        }
        if let Some(message) = facts.binding_refused(&m.key) {
            out.push(MappingProblem {
                mapping: MappingRef::from(&m.key),
                reason: "BindingRefused".to_owned(),
                message: message.to_owned(),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Who a subject name stands for, under one mapping's subject settings.
struct Names<'a> {
    users: &'a [UserInput],
    groups: &'a [GroupInput],
    /// Per distinct settings: User subject name → users.
    by_settings: Vec<(ResolvedSubjects, HashMap<String, Vec<usize>>)>,
    /// User id → group ids.
    member_of: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> Names<'a> {
    fn new(input: &'a crate::controller::plan::PlanInput) -> Self {
        let mut member_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for g in &input.groups {
            for m in &g.members {
                member_of.entry(m).or_default().push(&g.id);
            }
        }
        Names {
            users: &input.users,
            groups: &input.groups,
            by_settings: Vec::new(),
            member_of,
        }
    }

    /// The users and groups `s` stands for under `cfg`, for a mapping selecting `selected`
    /// (group ids).
    fn explain(
        &mut self,
        s: &Subject,
        cfg: &ResolvedSubjects,
        selected: &[String],
    ) -> (Vec<UserRef>, Vec<String>) {
        let group_name = |id: &str| {
            self.groups
                .iter()
                .find(|g| g.id == id)
                .map(|g| g.display_name.clone())
        };
        if super::is_user(s) {
            let users = self.users;
            let pos = match self.by_settings.iter().position(|(c, _)| c == cfg) {
                Some(p) => p,
                None => {
                    let mut map: HashMap<String, Vec<usize>> = HashMap::new();
                    for (i, u) in users.iter().enumerate() {
                        if let Ok(name) = cfg.explain_user_subject(u) {
                            map.entry(name.name).or_default().push(i);
                        }
                    }
                    self.by_settings.push((cfg.clone(), map));
                    self.by_settings.len() - 1
                }
            };
            let found = self.by_settings[pos]
                .1
                .get(&s.name)
                .cloned()
                .unwrap_or_default();
            let mut refs: Vec<UserRef> = found
                .iter()
                .map(|i| UserRef {
                    id: users[*i].id.clone(),
                    user_name: users[*i].user_name.clone(),
                    active: users[*i].active,
                })
                .collect();
            refs.sort();
            let mut via: BTreeSet<String> = BTreeSet::new();
            for i in &found {
                for gid in self
                    .member_of
                    .get(users[*i].id.as_str())
                    .into_iter()
                    .flatten()
                {
                    if selected.iter().any(|x| x == gid) {
                        via.extend(group_name(gid));
                    }
                }
            }
            (refs, via.into_iter().collect())
        } else {
            let groups: BTreeMap<&str, ()> = self
                .groups
                .iter()
                .filter(|g| cfg.explain_group_subject(g).is_ok_and(|n| n.name == s.name))
                .map(|g| (g.display_name.as_str(), ()))
                .collect();
            (Vec::new(), groups.into_keys().map(str::to_owned).collect())
        }
    }
}

/// The report as columns.
pub fn table(r: &WhoReport) -> String {
    let mut out = String::new();
    for n in &r.notes {
        out.push_str(&format!("Note: {n}\n"));
    }
    if r.entries.is_empty() {
        out.push_str(&format!(
            "Nobody has access to namespace {} through kube-scim{}.\n",
            r.namespace,
            r.role
                .as_deref()
                .map(|f| format!(" with role {f}"))
                .unwrap_or_default()
        ));
    } else {
        let rows: Vec<Vec<String>> = r
            .entries
            .iter()
            .map(|e| {
                let users: Vec<String> = e
                    .users
                    .iter()
                    .map(|u| {
                        if u.active {
                            u.user_name.clone()
                        } else {
                            format!("{} (inactive)", u.user_name)
                        }
                    })
                    .collect();
                let place = match e.carrier.scope {
                    Scope::Cluster => "cluster-wide",
                    Scope::Namespace => "namespace",
                };
                let mut row = vec![
                    e.subject.to_string(),
                    or_dash(Some(&users.join(","))),
                    or_dash(Some(&e.groups.join(","))),
                ];
                row.extend(e.carrier.cells(place.to_owned()));
                row
            })
            .collect();
        out.push_str(&render(
            &[
                "SUBJECT", "USER", "GROUPS", "MAPPING", "ROLE", "SCOPE", "BINDING", "LIVE",
                "EXPIRES", "NOTE",
            ],
            &rows,
        ));
    }
    if !r.problems.is_empty() {
        out.push_str("\nProblems of mappings that target it:\n");
        let rows: Vec<Vec<String>> = r
            .problems
            .iter()
            .map(|p| vec![p.mapping.to_string(), p.reason.clone(), p.message.clone()])
            .collect();
        out.push_str(&render(&["MAPPING", "REASON", "MESSAGE"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::role_text;
    use super::super::testing::{applied, grm, world};
    use super::*;
    use crate::controller::plan::plan;
    use serde_json::json;

    fn who(facts: &Facts, ns: &str, role: Option<&str>) -> WhoReport {
        let p = plan(&facts.settings, &facts.input);
        report(facts, &p, ns, role)
    }

    #[test]
    fn namespace_grants_and_cluster_wide_grants_marked() {
        let r = who(&applied(world()), "payments", None);
        let rows: Vec<(String, Scope, String, Live)> = r
            .entries
            .iter()
            .map(|e| {
                (
                    e.subject.to_string(),
                    e.carrier.scope,
                    e.carrier.mapping.as_ref().unwrap().to_string(),
                    e.carrier.live,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "User alice@example.com".to_owned(),
                    Scope::Namespace,
                    "grm payments/devs".to_owned(),
                    Live::Applied
                ),
                (
                    "User alice@example.com".to_owned(),
                    Scope::Cluster,
                    "cgrm staff-view".to_owned(),
                    Live::Applied
                ),
            ]
        );
        assert_eq!(r.entries[0].users[0].id, "u-alice");
        assert_eq!(r.entries[0].groups, ["devs"]);
        assert_eq!(r.entries[1].groups, ["staff"]);
        // cluster-admin refused: the cluster mapping binds cluster-wide, so it's relevant.
        assert!(
            r.problems
                .iter()
                .any(|p| p.reason == "ProtectedRoleRefused" && p.mapping.name == "staff-admin"),
            "{:#?}",
            r.problems
        );
        let text = table(&r);
        assert!(text.contains("cluster-wide"), "{text}");

        let r = who(&applied(world()), "payments", Some("ClusterRole/edit"));
        assert_eq!(r.entries.len(), 1);
        assert_eq!(role_text(&r.entries[0].carrier.role), "ClusterRole/edit");
        assert_eq!(
            who(&applied(world()), "payments", Some("view"))
                .entries
                .len(),
            1
        );
        assert!(who(&applied(world()), "payments", Some("admin"))
            .entries
            .is_empty());
    }

    #[test]
    fn removals_pending_group_subjects_and_notes() {
        // bob deactivated after the bindings were applied with him in them.
        let mut w = world();
        w.input.users[1].active = true;
        let mut w = applied(w);
        w.input.users[1].active = false;
        let r = who(&w, "payments", Some("edit"));
        let bob = r
            .entries
            .iter()
            .find(|e| e.subject.name == "bob@example.com")
            .expect("bob listed");
        assert_eq!(bob.carrier.live, Live::Removing);
        assert!(!bob.users[0].active);

        let mut w = world();
        w.input.mappings = vec![grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "edit"},
                   "subjects": {"kind": "Group", "groupAttribute": "displayName", "groupPrefix": "oidc:"}}),
        )];
        let r = who(&w, "payments", None);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].subject.to_string(), "Group oidc:devs");
        assert_eq!(r.entries[0].groups, ["devs"]);
        assert_eq!(r.entries[0].carrier.live, Live::Absent);

        let r = who(&world(), "kube-system", None);
        assert!(r.notes[0].contains("protected"), "{:?}", r.notes);
        assert!(who(&world(), "nowhere", None).notes[0].contains("does not exist"));
    }

    #[test]
    fn a_namespace_the_fan_out_budget_keeps_a_mapping_out_of_shows_why() {
        use super::super::testing::{cgrm, namespace};
        let mut w = world();
        w.settings.max_fanout = 1;
        w.input
            .namespaces
            .push(namespace("web-1", &[("tier", "web")]));
        w.input.mappings = vec![cgrm(
            "web",
            json!({"groups": [{"displayName": "devs"}],
                   "namespaceRoles": [{"clusterRole": "view", "namespaceSelector": {"matchLabels": {"tier": "web"}}}]}),
        )];
        let mut w = applied(w);
        w.input
            .namespaces
            .push(namespace("web-2", &[("tier", "web")]));
        let r = who(&w, "web-2", None);
        assert!(r.entries.is_empty(), "{:#?}", r.entries);
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        assert_eq!(r.problems[0].reason, "FanOutExceeded");
        assert_eq!(r.problems[0].mapping.name, "web");
        // web-1 keeps its binding, and is told about the budget too.
        let r = who(&w, "web-1", None);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.problems[0].reason, "FanOutExceeded");
    }
}
