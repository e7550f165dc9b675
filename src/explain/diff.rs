//! `kube-scim plan -f FILE`: what applying new or edited mappings would change. The same
//! pure plan runs twice, on the live snapshot without and with the edits; the report is
//! the difference: binding objects created, updated and deleted, the subjects each
//! logical binding gains and loses, and the status each edited mapping would get (its
//! refusals, held removals, expiry and the Events the controller would record).
//!
//! Comparing two plans (rather than the edited plan with the live objects) isolates the
//! edits: a controller that is behind or stopped does not show up as a change. Where the
//! live objects differ from the plan without the edits, the report says so (`drift`).
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::table::{or_dash, render};
use super::{bound, role_text, BindingRef, Bound, LiveIndex, MappingRef, Scope, SubjectRef};
use crate::controller::plan::{
    BindingKind, EventType, MappingInput, MappingKey, MappingOutcome, MappingSpec, Plan, PlanInput,
    Subject,
};
use crate::crd::{BindingStatus, HeldRemovals, RoleRef};

/// A mapping as a file gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Edit {
    pub key: MappingKey,
    pub spec: MappingSpec,
    /// The file's `scim.kubescim.io/confirm-removal` annotation, if it sets one (the live
    /// one stays otherwise, as `kubectl apply` leaves annotations it did not set).
    pub confirm_annotation: Option<String>,
}

/// `input` with `edits` stored as the API server would store them: a changed spec bumps
/// `metadata.generation` (so the mass-removal guard sees an edit); a new mapping starts
/// at generation 1 with no status.
pub fn apply_edits(input: &PlanInput, edits: &[Edit]) -> PlanInput {
    let mut out = input.clone();
    for e in edits {
        match out.mappings.iter_mut().find(|m| m.key == e.key) {
            Some(m) => {
                if m.spec != e.spec {
                    m.generation = Some(m.generation.unwrap_or(0).saturating_add(1));
                    m.spec = e.spec.clone();
                }
                if e.confirm_annotation.is_some() {
                    m.confirm_annotation = e.confirm_annotation.clone();
                }
            }
            None => out.mappings.push(MappingInput {
                key: e.key.clone(),
                generation: Some(1),
                observed_generation: None,
                spec: e.spec.clone(),
                confirm_annotation: e.confirm_annotation.clone(),
                deleting: false,
            }),
        }
    }
    out
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    /// Some binding object would be created, updated or deleted (exit code 2).
    pub changed: bool,
    /// The file's mappings: what they are now and the status they would get.
    pub mappings: Vec<MappingChange>,
    /// Binding objects to create, update or delete.
    pub bindings: Vec<BindingChange>,
    /// Per logical binding (all parts of a split one together): subjects gained and lost.
    pub subjects: Vec<SubjectChange>,
    /// Binding objects that differ in the cluster from the plan without the edits: the
    /// controller is behind, stopped, or runs with other settings than assumed.
    pub drift: Vec<BindingRef>,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Create,
    Update,
    Delete,
    Unchanged,
}

impl Action {
    fn text(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Unchanged => "unchanged",
        }
    }
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MappingChange {
    pub mapping: MappingRef,
    /// `Create` (new), `Update` (the spec changes) or `Unchanged`.
    pub action: Action,
    /// The status the plan gives it now (none for a new mapping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<StatusView>,
    pub after: StatusView,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub problems: Vec<ProblemView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_removals: Option<HeldRemovals>,
    /// The Events the controller would record.
    pub events: Vec<EventView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_count: Option<u32>,
    pub bindings: Vec<BindingStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ProblemView {
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct BindingChange {
    pub action: Action,
    pub binding: BindingRef,
    pub role: RoleRef,
    pub mapping: MappingRef,
    pub subjects_before: usize,
    pub subjects_after: usize,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SubjectChange {
    pub mapping: MappingRef,
    pub role: RoleRef,
    pub scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub gained: Vec<SubjectRef>,
    pub lost: Vec<SubjectRef>,
}

fn status_view(o: &MappingOutcome, expires_at: Option<String>) -> StatusView {
    StatusView {
        ready: o.ready,
        reason: o.reason.as_str().to_owned(),
        message: o.message.clone(),
        problems: o
            .problems
            .iter()
            .map(|p| ProblemView {
                reason: p.reason.as_str().to_owned(),
                message: p.message.clone(),
            })
            .collect(),
        held_removals: o.held_removals.clone(),
        events: o
            .events
            .iter()
            .map(|e| EventView {
                type_: match e.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
                reason: e.reason.clone(),
                note: e.note.clone(),
            })
            .collect(),
        subject_count: o.subject_count,
        bindings: o.bindings.clone(),
        expires_at,
    }
}

type ObjectKey<'a> = (BindingKind, Option<&'a str>, &'a str);
type TargetKey<'a> = (&'a MappingKey, BindingKind, Option<&'a str>, &'a RoleRef);

/// The subjects of each logical binding, its parts together.
fn by_target<'a>(all: &[Bound<'a>]) -> BTreeMap<TargetKey<'a>, BTreeSet<&'a Subject>> {
    let mut m: BTreeMap<TargetKey<'a>, BTreeSet<&'a Subject>> = BTreeMap::new();
    for b in all {
        m.entry((b.mapping, b.kind, b.namespace, b.role_ref))
            .or_default()
            .extend(b.subjects.iter());
    }
    m
}

fn sorted(subjects: &[Subject]) -> BTreeSet<&Subject> {
    subjects.iter().collect()
}

/// The difference `edits` make: `before` was planned from `before_input`, `after` from
/// [`apply_edits`]`(before_input, edits)` = `after_input`.
pub fn report(
    before_input: &PlanInput,
    before: &Plan,
    after_input: &PlanInput,
    after: &Plan,
    edits: &[Edit],
) -> DiffReport {
    let old = bound(before, before_input);
    let new = bound(after, after_input);
    let old_by: BTreeMap<ObjectKey<'_>, &Bound<'_>> = old.iter().map(|b| (b.key(), b)).collect();
    let new_by: BTreeMap<ObjectKey<'_>, &Bound<'_>> = new.iter().map(|b| (b.key(), b)).collect();

    let mut bindings = Vec::new();
    let change = |action: Action, b: &Bound<'_>, before: usize, after: usize| BindingChange {
        action,
        binding: b.binding_ref(),
        role: b.role_ref.clone(),
        mapping: MappingRef::from(b.mapping),
        subjects_before: before,
        subjects_after: after,
    };
    for (key, n) in &new_by {
        match old_by.get(key) {
            None => bindings.push(change(Action::Create, n, 0, n.subjects.len())),
            Some(o) if o.role_ref != n.role_ref || sorted(o.subjects) != sorted(n.subjects) => {
                bindings.push(change(
                    Action::Update,
                    n,
                    o.subjects.len(),
                    n.subjects.len(),
                ))
            }
            Some(_) => {}
        }
    }
    for (key, o) in &old_by {
        if !new_by.contains_key(key) {
            bindings.push(change(Action::Delete, o, o.subjects.len(), 0));
        }
    }
    bindings.sort();

    let mut subjects = Vec::new();
    let (old_t, new_t) = (by_target(&old), by_target(&new));
    let empty = BTreeSet::new();
    let targets: BTreeSet<&TargetKey<'_>> = old_t.keys().chain(new_t.keys()).collect();
    for t in targets {
        let (was, is) = (
            old_t.get(t).unwrap_or(&empty),
            new_t.get(t).unwrap_or(&empty),
        );
        let gained: Vec<SubjectRef> = is.difference(was).map(|s| SubjectRef::from(*s)).collect();
        let lost: Vec<SubjectRef> = was.difference(is).map(|s| SubjectRef::from(*s)).collect();
        if gained.is_empty() && lost.is_empty() {
            continue;
        }
        let (mapping, kind, namespace, role) = t;
        subjects.push(SubjectChange {
            mapping: MappingRef::from(*mapping),
            role: (*role).clone(),
            scope: Scope::of(*kind),
            namespace: namespace.map(str::to_owned),
            gained,
            lost,
        });
    }
    subjects.sort();

    let mut mappings: Vec<MappingChange> = edits
        .iter()
        .filter_map(|e| {
            let after_status = after.mapping_status.get(&e.key)?;
            let was = before_input.mappings.iter().find(|m| m.key == e.key);
            let action = match was {
                None => Action::Create,
                Some(m) if m.spec != e.spec => Action::Update,
                Some(_) => Action::Unchanged,
            };
            Some(MappingChange {
                mapping: MappingRef::from(&e.key),
                action,
                before: before
                    .mapping_status
                    .get(&e.key)
                    .map(|o| status_view(o, super::expires_at(before_input, &e.key))),
                after: status_view(after_status, super::expires_at(after_input, &e.key)),
            })
        })
        .collect();
    mappings.sort_by(|a, b| a.mapping.cmp(&b.mapping));

    DiffReport {
        changed: !bindings.is_empty(),
        mappings,
        bindings,
        subjects,
        drift: drift(before_input, before, &old),
    }
}

/// Objects where the cluster is not what `plan` (without the edits) says.
fn drift(input: &PlanInput, plan: &Plan, planned: &[Bound<'_>]) -> Vec<BindingRef> {
    let live = LiveIndex::new(input);
    let mut out: Vec<BindingRef> = planned
        .iter()
        .filter(|b| {
            live.get(b.key()).is_none_or(|e| {
                e.role_ref != *b.role_ref || sorted(&e.subjects) != sorted(b.subjects)
            })
        })
        .map(Bound::binding_ref)
        .chain(
            plan.prune
                .iter()
                .map(|p| BindingRef::new(p.kind, p.namespace.as_deref(), &p.name)),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Most subjects listed per logical binding in the table (JSON and YAML list all).
const TABLE_SUBJECTS: usize = 20;

/// The report as text: mappings, binding objects, then subjects as `+`/`-` lines.
pub fn table(r: &DiffReport) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = r
        .mappings
        .iter()
        .map(|m| {
            vec![
                m.mapping.to_string(),
                m.action.text().to_owned(),
                if m.after.ready { "True" } else { "False" }.to_owned(),
                m.after.reason.clone(),
                or_dash(m.after.expires_at.as_deref()),
                m.after.message.clone(),
            ]
        })
        .collect();
    out.push_str(&render(
        &["MAPPING", "CHANGE", "READY", "REASON", "EXPIRES", "MESSAGE"],
        &rows,
    ));
    let events: Vec<Vec<String>> = r
        .mappings
        .iter()
        .flat_map(|m| {
            m.after.events.iter().map(|e| {
                vec![
                    m.mapping.to_string(),
                    e.type_.clone(),
                    e.reason.clone(),
                    e.note.clone(),
                ]
            })
        })
        .collect();
    if !events.is_empty() {
        out.push_str("\nEvents it would record:\n");
        out.push_str(&render(&["MAPPING", "TYPE", "REASON", "NOTE"], &events));
    }
    if r.bindings.is_empty() {
        out.push_str("\nNo binding would change.\n");
    } else {
        out.push_str("\nBindings:\n");
        let rows: Vec<Vec<String>> = r
            .bindings
            .iter()
            .map(|b| {
                vec![
                    b.action.text().to_owned(),
                    b.binding.to_string(),
                    or_dash(b.binding.namespace.as_deref()),
                    role_text(&b.role),
                    b.mapping.to_string(),
                    format!("{} -> {}", b.subjects_before, b.subjects_after),
                ]
            })
            .collect();
        out.push_str(&render(
            &[
                "ACTION",
                "BINDING",
                "NAMESPACE",
                "ROLE",
                "MAPPING",
                "SUBJECTS",
            ],
            &rows,
        ));
    }
    for s in &r.subjects {
        let place = match (&s.scope, &s.namespace) {
            (Scope::Namespace, Some(ns)) => format!("in {ns}"),
            _ => "cluster-wide".to_owned(),
        };
        out.push_str(&format!(
            "\n{} {} {place}: +{} -{}\n",
            s.mapping,
            role_text(&s.role),
            s.gained.len(),
            s.lost.len()
        ));
        let lines = s
            .gained
            .iter()
            .map(|x| format!("  + {x}"))
            .chain(s.lost.iter().map(|x| format!("  - {x}")));
        let total = s.gained.len() + s.lost.len();
        for l in lines.take(TABLE_SUBJECTS) {
            out.push_str(&l);
            out.push('\n');
        }
        if total > TABLE_SUBJECTS {
            out.push_str(&format!(
                "  … {} more (-o json lists all)\n",
                total - TABLE_SUBJECTS
            ));
        }
    }
    if !r.drift.is_empty() {
        out.push_str(&format!(
            "\nNote: {} binding object(s) in the cluster differ from what the controller would write even without these changes (it is behind, stopped, or runs with other settings than assumed), e.g. {}\n",
            r.drift.len(),
            r.drift[0]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{applied, cgrm, grm, world};
    use super::*;
    use crate::controller::plan::plan;
    use serde_json::json;

    fn diff(input: &PlanInput, edits: &[Edit]) -> DiffReport {
        let settings = crate::controller::plan::Settings {
            mass_removal_min_subjects: 1,
            ..world().settings
        };
        let before = plan(&settings, input);
        let after_input = apply_edits(input, edits);
        let after = plan(&settings, &after_input);
        report(input, &before, &after_input, &after, edits)
    }

    fn edit(m: crate::controller::plan::MappingInput) -> Edit {
        Edit {
            key: m.key,
            spec: m.spec,
            confirm_annotation: None,
        }
    }

    #[test]
    fn the_same_mapping_changes_nothing_and_a_new_one_creates_its_binding() {
        let w = applied(world());
        let same = edit(w.input.mappings[0].clone());
        let r = diff(&w.input, &[same]);
        assert!(!r.changed, "{r:#?}");
        assert_eq!(r.mappings[0].action, Action::Unchanged);
        assert!(r.drift.is_empty(), "{:?}", r.drift);

        let new = edit(grm(
            "payments",
            "viewers",
            json!({"groups": [{"displayName": "staff"}], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
        ));
        let r = diff(&w.input, &[new]);
        assert!(r.changed);
        assert_eq!(r.mappings[0].action, Action::Create);
        assert!(r.mappings[0].before.is_none());
        assert!(r.mappings[0].after.ready);
        assert_eq!(r.bindings.len(), 1);
        assert_eq!(r.bindings[0].action, Action::Create);
        assert_eq!(r.bindings[0].binding.namespace.as_deref(), Some("payments"));
        assert_eq!(r.subjects.len(), 1);
        assert_eq!(
            r.subjects[0].gained[0].to_string(),
            "User alice@example.com"
        );
        assert!(r.subjects[0].lost.is_empty());
        let text = table(&r);
        assert!(text.contains("+ User alice@example.com"), "{text}");
        assert!(text.contains("create"), "{text}");
    }

    #[test]
    fn edits_update_delete_and_show_refusals_and_held_removals() {
        let mut w = world();
        w.input.users[1].active = true; // bob, in devs
        let w = applied(w);
        // devs → staff: alice stays, bob goes (1 of 2 = 50%, not above the threshold).
        let to_staff = grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "staff"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}}),
        );
        let r = diff(&w.input, &[edit(to_staff)]);
        assert!(r.changed);
        assert_eq!(r.mappings[0].action, Action::Update);
        assert_eq!(r.bindings[0].action, Action::Update);
        assert_eq!(
            (r.bindings[0].subjects_before, r.bindings[0].subjects_after),
            (2, 1)
        );
        assert_eq!(r.subjects[0].lost[0].name, "bob@example.com");

        // A role change is a new object and the old one's deletion.
        let to_view = grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "view"}}),
        );
        let r = diff(&w.input, &[edit(to_view)]);
        let actions: Vec<Action> = r.bindings.iter().map(|b| b.action).collect();
        assert_eq!(actions, [Action::Create, Action::Delete]);

        // Dropping every group: the guard holds the removal; nothing changes, and the
        // status says how to confirm.
        let to_nobody = grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "nobody"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}}),
        );
        let r = diff(&w.input, &[edit(to_nobody)]);
        assert!(!r.changed, "{r:#?}");
        let after = &r.mappings[0].after;
        assert_eq!(after.reason, "RemovalHeld");
        assert!(after.held_removals.is_some());
        assert!(after.events.iter().any(|e| e.reason == "RemovalHeld"));

        // cluster-admin without the opt-in: refused, an Event, no binding.
        let admin = cgrm(
            "admins",
            json!({"groups": [{"displayName": "devs"}], "clusterRoles": ["cluster-admin"]}),
        );
        let r = diff(&w.input, &[edit(admin)]);
        assert!(!r.changed);
        assert_eq!(r.mappings[0].after.reason, "ProtectedRoleRefused");
        assert_eq!(r.mappings[0].after.events[0].type_, "Warning");
    }

    #[test]
    fn expiry_shows_and_drift_is_reported() {
        let w = applied(world());
        let mut input = w.input.clone();
        input.now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let expired = grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "edit"},
                   "expiresAt": "2020-01-01T00:00:00Z"}),
        );
        let r = diff(&input, &[edit(expired)]);
        assert!(r.changed);
        assert_eq!(r.bindings[0].action, Action::Delete);
        assert_eq!(r.mappings[0].after.reason, "Expired");
        assert_eq!(
            r.mappings[0].after.expires_at.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );

        let mut input = world().input; // nothing applied
        input.now = w.input.now;
        let r = diff(&input, &[]);
        assert!(!r.changed);
        assert_eq!(r.drift.len(), 2, "{:?}", r.drift);
    }

    #[test]
    fn edits_bump_the_generation_only_when_the_spec_changes() {
        let w = world();
        let mut same = edit(w.input.mappings[0].clone());
        same.confirm_annotation = Some("abc".into());
        let out = apply_edits(&w.input, &[same]);
        assert_eq!(out.mappings[0].generation, Some(1));
        assert_eq!(out.mappings[0].confirm_annotation.as_deref(), Some("abc"));
        let changed = edit(grm(
            "payments",
            "devs",
            json!({"groups": [{"displayName": "staff"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}}),
        ));
        let out = apply_edits(&w.input, &[changed]);
        assert_eq!(out.mappings[0].generation, Some(2));
        assert_eq!(out.mappings[0].observed_generation, Some(1));
    }

    #[test]
    fn a_mapping_over_the_fan_out_budget_plans_no_additions() {
        let w = applied(world());
        // staff (alice) bound cluster-wide and in payments: 1 × 2 > 1.
        let wide = cgrm(
            "wide",
            json!({"groups": [{"displayName": "staff"}], "clusterRoles": ["view"],
                   "namespaceRoles": [{"clusterRole": "view", "namespaces": ["payments"]}]}),
        );
        let settings = crate::controller::plan::Settings {
            max_fanout: 1,
            ..world().settings
        };
        let before = plan(&settings, &w.input);
        let edits = [edit(wide)];
        let after_input = apply_edits(&w.input, &edits);
        let after = plan(&settings, &after_input);
        let r = report(&w.input, &before, &after_input, &after, &edits);
        assert!(!r.changed, "{r:#?}");
        assert!(r.bindings.is_empty());
        let st = &r.mappings[0].after;
        assert_eq!(st.reason, "FanOutExceeded");
        assert!(
            st.message.contains("1 subject(s) × 2 binding(s) = 2 > 1"),
            "{}",
            st.message
        );
        assert!(st
            .events
            .iter()
            .any(|e| e.reason == "FanOutExceeded" && e.type_ == "Warning"));
        assert!(table(&r).contains("FanOutExceeded"));
    }
}
