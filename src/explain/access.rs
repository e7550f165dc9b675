//! `kube-scim access USER`: every grant a user has through kube-scim, as the chain
//! group → mapping → role → namespace or cluster, with the binding object that carries
//! it; and, for every mapping that selects one of the user's groups, what stands in the
//! way of a grant.
//!
//! Grants are read off the plan's bindings (a grant is a binding naming the user, or a
//! group of the user, as a subject), so they are exactly what the controller applies;
//! each says whether the live object already names the subject.
use std::collections::BTreeMap;

use serde::Serialize;

use super::table::{or_dash, render};
use super::{
    bound, held_note, kept_note, Bound, Carrier, Facts, LiveIndex, MappingRef, Scope, SubjectRef,
    Why,
};
use crate::controller::plan::{
    GroupInput, MappingKey, NoSubject, Plan, Reason, Subject, UserInput,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("no ScimUser has the id, userName or email {0:?} (kubectl get scimusers lists them)")]
    NotFound(String),
    #[error("{query:?} matches several ScimUsers ({}): name one by its id", .ids.join(", "))]
    Ambiguous { query: String, ids: Vec<String> },
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessReport {
    pub user: UserView,
    /// The groups the user is a member of, and the mappings that select each.
    pub groups: Vec<GroupView>,
    pub grants: Vec<Grant>,
    /// Why a mapping that selects one of the user's groups gives (some of) its roles not.
    pub missing: Vec<Missing>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub user_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub emails: Vec<String>,
    pub active: bool,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub id: String,
    pub display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub mappings: Vec<MappingRef>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The user's groups (displayName) the mapping selects; empty for a subject the plan
    /// only keeps (see `note`).
    pub groups: Vec<String>,
    #[serde(flatten)]
    pub carrier: Carrier,
    /// The namespace of a `Namespace` grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// How the binding names the user: a User subject, or a Group subject of one of
    /// the user's groups.
    pub subject: SubjectRef,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Missing {
    /// The mapping concerned; none when the user is in no selected group at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingRef>,
    /// The user's groups (displayName) concerned.
    pub groups: Vec<String>,
    pub reason: Why,
    pub message: String,
}

/// The user `query` names: an exact id, else a userName (case-insensitive, as SCIM
/// compares them), else an email (case-insensitive).
pub fn find_user<'a>(facts: &'a Facts, query: &str) -> Result<&'a UserInput, AccessError> {
    let users = &facts.input.users;
    if let Some(u) = users.iter().find(|u| u.id == query) {
        return Ok(u);
    }
    let by_name: Vec<&UserInput> = users
        .iter()
        .filter(|u| u.user_name.eq_ignore_ascii_case(query))
        .collect();
    let matches = if by_name.is_empty() {
        users
            .iter()
            .filter(|u| {
                u.work_email
                    .iter()
                    .chain(facts.people.get(&u.id).into_iter().flat_map(|p| &p.emails))
                    .any(|e| e.eq_ignore_ascii_case(query))
            })
            .collect()
    } else {
        by_name
    };
    match matches.as_slice() {
        [] => Err(AccessError::NotFound(query.to_owned())),
        [one] => Ok(one),
        many => {
            let mut ids: Vec<String> = many.iter().map(|u| u.id.clone()).collect();
            ids.sort();
            Err(AccessError::Ambiguous {
                query: query.to_owned(),
                ids,
            })
        }
    }
}

/// What `query`'s user has through kube-scim under `plan` (made from `facts`).
pub fn report(facts: &Facts, plan: &Plan, query: &str) -> Result<AccessReport, AccessError> {
    let u = find_user(facts, query)?;
    let input = &facts.input;
    let person = facts.people.get(&u.id);

    let mut groups: Vec<&GroupInput> = input
        .groups
        .iter()
        .filter(|g| g.members.contains(&u.id))
        .collect();
    groups.sort_by(|a, b| (&a.display_name, &a.id).cmp(&(&b.display_name, &b.id)));
    groups.dedup_by(|a, b| a.id == b.id);

    // Mapping → the user's groups it selects.
    let mut selecting: BTreeMap<&MappingKey, Vec<&GroupInput>> = BTreeMap::new();
    for (key, layout) in &plan.layouts {
        for g in &groups {
            if layout.groups.contains(&g.id) {
                selecting.entry(key).or_default().push(g);
            }
        }
    }

    let grants = grants(facts, plan, u, &groups, &selecting);
    let mut missing = Vec::new();
    for (key, selected) in &selecting {
        missing.extend(blocked(facts, plan, u, key, selected));
    }
    missing.extend(near_misses(facts, &groups));
    if selecting.is_empty() {
        let message = if groups.is_empty() {
            "member of no SCIM group".to_owned()
        } else {
            format!(
                "member of {}, but no mapping selects {}",
                names(&groups).join(", "),
                if groups.len() == 1 { "it" } else { "them" }
            )
        };
        missing.push(Missing {
            mapping: None,
            groups: names(&groups),
            reason: Why::NotAMember,
            message,
        });
    }
    missing.sort();
    missing.dedup();

    Ok(AccessReport {
        user: UserView {
            id: u.id.clone(),
            user_name: u.user_name.clone(),
            display_name: person.and_then(|p| p.display_name.clone()),
            external_id: u.external_id.clone(),
            emails: person.map(|p| p.emails.clone()).unwrap_or_default(),
            active: u.active,
        },
        groups: groups
            .iter()
            .map(|g| GroupView {
                id: g.id.clone(),
                display_name: g.display_name.clone(),
                external_id: g.external_id.clone(),
                mappings: selecting
                    .iter()
                    .filter(|(_, gs)| gs.iter().any(|s| s.id == g.id))
                    .map(|(k, _)| MappingRef::from(*k))
                    .collect(),
            })
            .collect(),
        grants,
        missing,
    })
}

fn names(groups: &[&GroupInput]) -> Vec<String> {
    groups.iter().map(|g| g.display_name.clone()).collect()
}

/// Every binding object that names the user or one of its groups.
fn grants(
    facts: &Facts,
    plan: &Plan,
    u: &UserInput,
    groups: &[&GroupInput],
    selecting: &BTreeMap<&MappingKey, Vec<&GroupInput>>,
) -> Vec<Grant> {
    let live = LiveIndex::new(&facts.input);
    let mut out = Vec::new();
    for b in bound(plan, &facts.input) {
        let Some(layout) = plan.layouts.get(b.mapping) else {
            continue;
        };
        let cfg = &layout.subjects;
        let outcome = plan.mapping_status.get(b.mapping);
        let selected: &[&GroupInput] = selecting.get(b.mapping).map_or(&[], Vec::as_slice);
        let grant = |subject: &crate::controller::plan::Subject,
                     via: Vec<String>,
                     note: Option<String>| Grant {
            groups: via,
            carrier: Carrier::new(
                &facts.input,
                &b,
                Some(b.mapping),
                live.state(&b, subject),
                note,
            ),
            namespace: b.namespace.map(str::to_owned),
            subject: SubjectRef::from(subject),
        };
        if cfg.binds_users() {
            if let Ok(s) = cfg.explain_user_subject(u) {
                if b.subjects.contains(&s) {
                    let deserved = u.active && !selected.is_empty();
                    let note = note_for(plan, &b, deserved, outcome);
                    out.push(grant(&s, names(selected), note));
                }
            }
        }
        if cfg.binds_groups() {
            for g in groups {
                let Ok(s) = cfg.explain_group_subject(g) else {
                    continue;
                };
                if !b.subjects.contains(&s) {
                    continue;
                }
                let deserved = selected.iter().any(|x| x.id == g.id);
                let note = note_for(plan, &b, deserved, outcome).or_else(|| {
                    (!u.active).then(|| {
                        "the user is inactive in SCIM, but the binding names the group: access lasts while the identity provider issues the user tokens with the group claim".to_owned()
                    })
                });
                out.push(grant(&s, vec![g.display_name.clone()], note));
            }
        }
    }
    // The chain's order: group, mapping, role, where.
    out.sort_by(|a, b| {
        let key = |g: &Grant| {
            let c = &g.carrier;
            (
                g.groups.clone(),
                c.mapping.clone(),
                c.scope,
                g.namespace.clone(),
                c.role.clone(),
                c.binding.clone(),
                g.subject.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    out
}

/// Why a subject is in a binding the plan does not give it by membership.
fn note_for(
    plan: &Plan,
    b: &Bound<'_>,
    deserved: bool,
    outcome: Option<&crate::controller::plan::MappingOutcome>,
) -> Option<String> {
    if b.kept {
        return Some(kept_note(plan, b.mapping));
    }
    if deserved {
        return None;
    }
    Some(match outcome {
        Some(o) if o.held_removals.is_some() => held_note(o),
        _ => "named by the binding, though not through a group the mapping selects".to_owned(),
    })
}

/// What stands between the user and the grants of `key`, which selects `selected`.
fn blocked(
    facts: &Facts,
    plan: &Plan,
    u: &UserInput,
    key: &MappingKey,
    selected: &[&GroupInput],
) -> Vec<Missing> {
    let (Some(outcome), Some(layout)) = (plan.mapping_status.get(key), plan.layouts.get(key))
    else {
        return Vec::new();
    };
    let cfg = &layout.subjects;
    let via = names(selected);
    let missing = |reason: Why, message: String| Missing {
        mapping: Some(MappingRef::from(key)),
        groups: via.clone(),
        reason,
        message,
    };
    let mut out = Vec::new();
    for p in &outcome.problems {
        if let Some(why) = Why::blocking(p.reason) {
            out.push(missing(why, p.message.clone()));
        }
    }
    if let Some(message) = facts.binding_refused(key) {
        if !outcome
            .problems
            .iter()
            .any(|p| p.reason == Reason::BindingRefused)
        {
            out.push(missing(
                Why::Mapping(Reason::BindingRefused),
                message.to_owned(),
            ));
        }
    }
    let frozen_or_expired = outcome.problems.iter().any(|p| {
        matches!(
            p.reason,
            Reason::Expired | Reason::InvalidSpec | Reason::InvalidSelector
        )
    });
    if frozen_or_expired {
        return out;
    }
    if cfg.binds_users() {
        match cfg.explain_user_subject(u) {
            _ if !u.active => out.push(missing(
                Why::Inactive,
                "deactivated in SCIM (active: false): not bound as a User subject".to_owned(),
            )),
            Ok(_) => {}
            Err(NoSubject::Missing(m)) => out.push(missing(
                Why::NoSubjectName,
                format!("{m}, which names User subjects of this mapping: not bound"),
            )),
            Err(NoSubject::Refused(m)) => {
                out.push(missing(Why::Mapping(Reason::SubjectRefused), m))
            }
        }
    }
    if cfg.binds_groups() {
        for g in selected {
            let problem = match cfg.explain_group_subject(g) {
                Ok(_) => continue,
                Err(NoSubject::Missing(m)) => (
                    Why::NoSubjectName,
                    format!("{m}, which names Group subjects of this mapping: not bound"),
                ),
                Err(NoSubject::Refused(m)) => (Why::Mapping(Reason::SubjectRefused), m),
            };
            out.push(Missing {
                groups: vec![g.display_name.clone()],
                ..missing(problem.0, problem.1)
            });
        }
    }
    if let Some(message) = fan_out_withheld(plan, u, key, selected) {
        out.push(missing(Why::Mapping(Reason::FanOutExceeded), message));
    }
    out
}

/// What the fan-out budget keeps from `u` under `key`: its subject not added (the
/// mapping binds it nowhere), or new bindings not made. None when it keeps nothing.
fn fan_out_withheld(
    plan: &Plan,
    u: &UserInput,
    key: &MappingKey,
    selected: &[&GroupInput],
) -> Option<String> {
    let outcome = plan.mapping_status.get(key)?;
    let fan = outcome.fan_out.as_ref()?;
    let why = outcome
        .problems
        .iter()
        .find(|p| p.reason == Reason::FanOutExceeded)
        .map_or("", |p| p.message.as_str());
    let cfg = &plan.layouts.get(key)?.subjects;
    // The subjects that would carry the user's grants.
    let mut wanted = Vec::new();
    if cfg.binds_users() && u.active {
        wanted.extend(cfg.explain_user_subject(u).ok());
    }
    if cfg.binds_groups() {
        wanted.extend(
            selected
                .iter()
                .filter_map(|g| cfg.explain_group_subject(g).ok()),
        );
    }
    if wanted.is_empty() {
        return None;
    }
    let bound = |s: &Subject| {
        plan.bindings
            .iter()
            .any(|b| &b.mapping == key && b.subjects.binary_search(s).is_ok())
    };
    if let Some(s) = wanted.iter().find(|s| !bound(s)) {
        return Some(format!(
            "{} {} is not added ({} of {} ask to be): {why}",
            s.kind.as_str(),
            s.name,
            fan.withheld_subjects,
            fan.subjects
        ));
    }
    if fan.withheld_bindings.is_empty() {
        return None;
    }
    Some(format!(
        "not bound in {} new binding(s) ({}): {why}",
        fan.withheld_bindings.len(),
        fan.withheld_places()
    ))
}

/// Mappings naming a group that does not exist, where one of the user's groups has that
/// name in another case: group names match exactly, so this is a likely typo.
fn near_misses(facts: &Facts, groups: &[&GroupInput]) -> Vec<Missing> {
    let all = &facts.input.groups;
    let mut out = Vec::new();
    for m in facts.input.mappings.iter().filter(|m| !m.deleting) {
        for r in m.spec.groups() {
            let (field, wanted, exists) = match (&r.display_name, &r.external_id) {
                (Some(d), None) => ("displayName", d, all.iter().any(|g| g.display_name == *d)),
                (None, Some(e)) => (
                    "externalId",
                    e,
                    all.iter().any(|g| g.external_id.as_ref() == Some(e)),
                ),
                _ => continue,
            };
            if exists {
                continue;
            }
            for g in groups {
                let have = match field {
                    "displayName" => Some(&g.display_name),
                    _ => g.external_id.as_ref(),
                };
                if have.is_some_and(|h| h.eq_ignore_ascii_case(wanted)) {
                    out.push(Missing {
                        mapping: Some(MappingRef::from(&m.key)),
                        groups: vec![g.display_name.clone()],
                        reason: Why::Mapping(Reason::GroupNotFound),
                        message: format!(
                            "the mapping names group {field} {wanted:?}, which does not exist; the user's group has {field} {:?} (groups are matched exactly, case included)",
                            have.map_or("", String::as_str)
                        ),
                    });
                }
            }
        }
    }
    out
}

/// The report as columns: the user, the grants, then what is missing.
pub fn table(r: &AccessReport) -> String {
    let u = &r.user;
    let mut out = format!(
        "User:    {} (id {}{}){}\n",
        u.user_name,
        u.id,
        if u.active { "" } else { ", INACTIVE" },
        u.display_name
            .as_deref()
            .map(|d| format!(" {d}"))
            .unwrap_or_default()
    );
    let groups: Vec<&str> = r.groups.iter().map(|g| g.display_name.as_str()).collect();
    out.push_str(&format!(
        "Groups:  {}\n\n",
        if groups.is_empty() {
            "-".to_owned()
        } else {
            groups.join(", ")
        }
    ));
    if r.grants.is_empty() {
        out.push_str("No grants through kube-scim.\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .grants
            .iter()
            .map(|g| {
                let place = match g.carrier.scope {
                    Scope::Cluster => "(cluster)".to_owned(),
                    Scope::Namespace => or_dash(g.namespace.as_deref()),
                };
                let mut row = vec![or_dash(Some(&g.groups.join(",")))];
                row.extend(g.carrier.cells(place));
                row.insert(5, g.subject.to_string());
                row
            })
            .collect();
        out.push_str(&render(
            &[
                "GROUP", "MAPPING", "ROLE", "WHERE", "BINDING", "SUBJECT", "LIVE", "EXPIRES",
                "NOTE",
            ],
            &rows,
        ));
    }
    if !r.missing.is_empty() {
        out.push_str("\nNot granted:\n");
        let rows: Vec<Vec<String>> = r
            .missing
            .iter()
            .map(|m| {
                vec![
                    or_dash(Some(&m.groups.join(","))),
                    m.mapping
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), ToString::to_string),
                    m.reason.as_str().to_owned(),
                    m.message.clone(),
                ]
            })
            .collect();
        out.push_str(&render(&["GROUP", "MAPPING", "REASON", "MESSAGE"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{applied, cgrm, grm, world};
    use super::super::{role_text, Live};
    use super::*;
    use crate::controller::plan::plan;
    use serde_json::json;

    fn access(facts: &Facts, who: &str) -> AccessReport {
        let p = plan(&facts.settings, &facts.input);
        report(facts, &p, who).expect("report")
    }

    #[test]
    fn users_are_found_by_id_user_name_in_any_case_or_email() {
        let w = world();
        assert_eq!(find_user(&w, "u-bob").unwrap().id, "u-bob");
        assert_eq!(find_user(&w, "ALICE@example.com").unwrap().id, "u-alice");
        assert_eq!(find_user(&w, "carol@CONTOSO.com").unwrap().id, "u-carol");
        assert_eq!(find_user(&w, "u-alice@work.example").unwrap().id, "u-alice");
        assert_eq!(
            find_user(&w, "nobody"),
            Err(AccessError::NotFound("nobody".into()))
        );
        let mut w = world();
        w.people.get_mut("u-bob").unwrap().emails = vec!["alice@contoso.com".into()];
        assert_eq!(
            find_user(&w, "alice@contoso.com"),
            Err(AccessError::Ambiguous {
                query: "alice@contoso.com".into(),
                ids: vec!["u-alice".into(), "u-bob".into()]
            })
        );
    }

    #[test]
    fn grants_name_the_chain_and_the_binding_object_and_whether_it_is_live() {
        let w = world();
        let r = access(&w, "alice@example.com");
        assert_eq!(r.user.display_name.as_deref(), Some("Alice A"));
        assert_eq!(
            r.groups.iter().map(|g| &g.display_name).collect::<Vec<_>>(),
            ["devs", "staff"]
        );
        assert_eq!(r.grants.len(), 2, "{:#?}", r.grants);
        let ns = &r.grants[0];
        assert_eq!(ns.groups, ["devs"]);
        assert_eq!(
            ns.carrier.mapping.as_ref().unwrap().to_string(),
            "grm payments/devs"
        );
        assert_eq!(role_text(&ns.carrier.role), "ClusterRole/edit");
        assert_eq!(
            (ns.carrier.scope, ns.namespace.as_deref()),
            (Scope::Namespace, Some("payments"))
        );
        assert!(
            ns.carrier.binding.name.starts_with("kube-scim.devs.edit-"),
            "{ns:?}"
        );
        assert_eq!(ns.subject.to_string(), "User alice@example.com");
        assert_eq!(ns.carrier.live, Live::Absent, "nothing applied yet");
        let cluster = &r.grants[1];
        assert_eq!(
            cluster.carrier.mapping.as_ref().unwrap().to_string(),
            "cgrm staff-view"
        );
        assert_eq!(cluster.carrier.scope, Scope::Cluster);
        assert_eq!(cluster.carrier.binding.kind, "ClusterRoleBinding");

        let r = access(&applied(world()), "u-alice");
        assert!(
            r.grants.iter().all(|g| g.carrier.live == Live::Applied),
            "{r:#?}"
        );
        let text = table(&r);
        assert!(text.contains("grm payments/devs"), "{text}");
        assert!(text.contains("(cluster)"), "{text}");
    }

    #[test]
    fn missing_grants_say_why() {
        let r = access(&world(), "alice@example.com");
        let refused: Vec<&Missing> = r
            .missing
            .iter()
            .filter(|m| m.reason == Why::Mapping(Reason::ProtectedRoleRefused))
            .collect();
        assert_eq!(refused.len(), 1, "{:#?}", r.missing);
        assert_eq!(
            refused[0].mapping.as_ref().unwrap().to_string(),
            "cgrm staff-admin"
        );
        assert_eq!(refused[0].groups, ["staff"]);
        assert!(refused[0].message.contains("cluster-admin"), "{refused:?}");

        let r = access(&world(), "bob@example.com");
        assert!(r.grants.is_empty(), "{:#?}", r.grants);
        assert_eq!(r.missing.len(), 1, "{:#?}", r.missing);
        assert_eq!(r.missing[0].reason, Why::Inactive);
        assert_eq!(r.missing[0].groups, ["devs"]);

        let r = access(&world(), "carol@example.com");
        assert_eq!(r.missing.len(), 1);
        assert_eq!(r.missing[0].reason, Why::NotAMember);
        assert_eq!(r.missing[0].message, "member of no SCIM group");
    }

    #[test]
    fn protected_namespaces_expiry_subject_names_and_refusals_are_reasons() {
        let mut w = world();
        let past = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap();
        w.input.now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        w.input.mappings = vec![
            grm(
                "kube-system",
                "sys",
                json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
            ),
            grm(
                "payments",
                "old",
                json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "view"},
                       "expiresAt": past.to_string()}),
            ),
            grm(
                "payments",
                "by-email",
                json!({"groups": [{"displayName": "staff"}], "roleRef": {"kind": "ClusterRole", "name": "view"},
                       "subjects": {"userAttribute": "email", "userPrefix": "system:"}}),
            ),
            cgrm(
                "typo",
                json!({"groups": [{"displayName": "DEVS"}], "clusterRoles": ["view"]}),
            ),
        ];
        let mut facts = w;
        facts.live_status.insert(
            MappingKey::Namespaced {
                namespace: "payments".into(),
                name: "old".into(),
            },
            super::super::LiveStatus {
                reason: Some("Expired".into()),
                message: Some("expired".into()),
            },
        );
        let r = access(&facts, "u-alice");
        let reasons: Vec<(String, Why)> = r
            .missing
            .iter()
            .map(|m| (m.mapping.as_ref().unwrap().to_string(), m.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("cgrm typo".to_owned(), Why::Mapping(Reason::GroupNotFound)),
                (
                    "grm kube-system/sys".to_owned(),
                    Why::Mapping(Reason::ScopeRefused)
                ),
                (
                    "grm payments/by-email".to_owned(),
                    Why::Mapping(Reason::SubjectRefused)
                ),
                ("grm payments/old".to_owned(), Why::Mapping(Reason::Expired)),
            ],
            "{:#?}",
            r.missing
        );
        assert!(
            r.missing[0].message.contains("\"DEVS\""),
            "{:?}",
            r.missing[0]
        );
        assert!(
            r.missing[3].message.contains("2023-11-14"),
            "{:?}",
            r.missing[3]
        );
        assert!(r.grants.is_empty(), "{:#?}", r.grants);
    }

    #[test]
    fn binding_refused_comes_from_the_live_status_and_expiry_is_shown_on_grants() {
        let mut w = world();
        let later = k8s_openapi::jiff::Timestamp::from_second(4_000_000_000).unwrap();
        w.input.mappings[0] = grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "edit"},
                   "expiresAt": later.to_string()}),
        );
        w.live_status.insert(
            w.input.mappings[0].key.clone(),
            super::super::LiveStatus {
                reason: Some("BindingRefused".into()),
                message: Some("rolebindings is forbidden: escalation".into()),
            },
        );
        let r = access(&w, "u-alice");
        let g = r
            .grants
            .iter()
            .find(|g| g.carrier.mapping.as_ref().unwrap().name == "devs")
            .expect("grant");
        assert_eq!(
            g.carrier.expires_at.as_deref(),
            Some("2096-10-02T07:06:40Z")
        );
        let m = r
            .missing
            .iter()
            .find(|m| m.reason == Why::Mapping(Reason::BindingRefused))
            .expect("refusal");
        assert_eq!(m.message, "rolebindings is forbidden: escalation");
    }

    #[test]
    fn group_subjects_grant_through_the_group_and_held_removals_are_explained() {
        let mut w = world();
        w.input.mappings = vec![grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "edit"},
                   "subjects": {"kind": "Group"}}),
        )];
        let r = access(&w, "u-bob");
        assert_eq!(r.grants.len(), 1, "{r:#?}");
        assert_eq!(r.grants[0].subject.to_string(), "Group ext-g-devs");
        assert!(
            r.grants[0]
                .carrier
                .note
                .as_deref()
                .unwrap()
                .contains("inactive"),
            "{r:#?}"
        );

        // Held: the spec was edited so that it selects nobody, and the guard holds the
        // removal of every managed subject.
        let mut w = world();
        w.settings.mass_removal_min_subjects = 1;
        w.input.users.push(super::super::testing::user(
            "u-dan",
            "dan@example.com",
            true,
        ));
        w.input.groups[0].members.push("u-dan".into());
        let mut w = applied(w);
        w.input.mappings[0] = grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "nobody"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}}),
        );
        w.input.mappings[0].generation = Some(2);
        let r = access(&w, "u-alice");
        let held = r
            .grants
            .iter()
            .find(|g| g.carrier.mapping.as_ref().unwrap().name == "devs")
            .expect("held grant");
        assert!(held.groups.is_empty(), "{held:?}");
        assert!(
            held.carrier
                .note
                .as_deref()
                .unwrap()
                .contains("mass-removal guard"),
            "{held:?}"
        );
    }

    #[test]
    fn the_fan_out_budget_is_the_reason_for_those_it_keeps_out() {
        let mut w = world();
        w.settings.max_fanout = 2;
        w.input.namespaces.push(super::super::testing::namespace(
            "web-1",
            &[("tier", "web")],
        ));
        w.input.mappings = vec![cgrm(
            "web",
            json!({"groups": [{"displayName": "devs"}],
                   "namespaceRoles": [{"clusterRole": "view", "namespaceSelector": {"matchLabels": {"tier": "web"}}}]}),
        )];
        // alice alone (bob is inactive): 1 × 1, applied.
        let mut w = applied(w);
        // bob activated and a second web namespace: 2 × 2 = 4 > 2.
        w.input.users[1].active = true;
        w.input.namespaces.push(super::super::testing::namespace(
            "web-2",
            &[("tier", "web")],
        ));

        let r = access(&w, "u-bob");
        assert!(r.grants.is_empty(), "{:#?}", r.grants);
        let fan: Vec<&Missing> = r
            .missing
            .iter()
            .filter(|m| m.reason == Why::Mapping(Reason::FanOutExceeded))
            .collect();
        assert_eq!(fan.len(), 1, "{:#?}", r.missing);
        assert!(
            fan[0].message.starts_with(
                "User bob@example.com is not added (1 of 2 ask to be): fan-out over budget"
            ),
            "{:?}",
            fan[0]
        );
        assert_eq!(fan[0].groups, ["devs"]);

        // alice keeps web-1 and is told why web-2 is missing.
        let r = access(&w, "u-alice");
        assert_eq!(r.grants.len(), 1, "{:#?}", r.grants);
        assert_eq!(r.grants[0].namespace.as_deref(), Some("web-1"));
        assert_eq!(r.grants[0].carrier.live, super::super::Live::Applied);
        let m = r
            .missing
            .iter()
            .find(|m| m.reason == Why::Mapping(Reason::FanOutExceeded))
            .expect("fan-out reason");
        assert!(
            m.message
                .starts_with("not bound in 1 new binding(s) (ClusterRole/view in web-2)"),
            "{m:?}"
        );
        assert!(table(&r).contains("FanOutExceeded"));

        // Under an unlimited budget neither is kept out.
        w.settings.max_fanout = 0;
        let r = access(&w, "u-bob");
        assert_eq!(r.grants.len(), 2);
        assert!(r
            .missing
            .iter()
            .all(|m| m.reason != Why::Mapping(Reason::FanOutExceeded)));
    }
}
