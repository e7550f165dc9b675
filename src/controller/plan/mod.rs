//! The controller's pure decision core: a snapshot of the world in, the bindings that
//! should exist, the managed bindings to delete and every status out. No I/O, no kube
//! client or object types: the I/O layer fills [`PlanInput`] from reflector caches,
//! applies [`Plan::bindings`] (server-side apply), then deletes [`Plan::prune`] and writes
//! the statuses.
//!
//! Rules, per mapping:
//! 1. A mapping being deleted plans nothing and is not guarded (deleting is an explicit
//!    human act): its bindings are pruned, then the caller removes its finalizer. It has
//!    no entry in [`Plan::mapping_status`].
//! 2. An invalid spec or selector (`InvalidSpec`, `InvalidSelector`) *freezes* the
//!    mapping: its existing bindings are neither updated nor pruned until the spec is
//!    fixed, so a typo never revokes access. (The CRD schema should reject most of these.)
//! 3. Groups resolve by exact displayName or externalId. Unknown refs → `GroupNotFound`;
//!    the groups that are found are bound anyway.
//! 4. Subjects: `spec.subjects` overrides [`Settings::subjects`] field by field. `User`:
//!    one subject per active, known member that has the chosen attribute, prefixed;
//!    `Group`: one per group that has the chosen attribute, prefixed; `UserAndGroup`: both.
//!    Deduplicated and sorted. Skipped members/groups are counted in the message only.
//!    A final name (prefix included) that fails [`check_subject_name`] (`system:…`,
//!    empty, too long) is never bound: `SubjectRefused` names the user or group.
//! 5. Targets: GroupRoleMapping → one RoleBinding in its namespace. ClusterGroupRoleMapping
//!    → one ClusterRoleBinding per `clusterRoles` entry and one RoleBinding (to the
//!    ClusterRole) per namespace listed or selected by a `namespaceRoles` entry (existing,
//!    not terminating). Protected ClusterRoles (cluster-admin plus
//!    [`Settings::protected_roles`]) are refused without `allowProtectedRoles: true`; a
//!    missing role is still bound (RBAC allows dangling roleRefs) but reported.
//! 6. Zero subjects → no binding object (an empty binding grants nothing; creating one
//!    would only add objects); status shows no bindings and says "no subjects".
//! 7. Mass-removal guard (see [`Settings::mass_removal_threshold`]).
//! 8. Bindings too big for one object, or copied into so many namespaces that one change
//!    would rewrite too much, are split into parts (see [`crate::controller::split`]).
//! 9. Fan-out budget (see [`Settings::max_fanout`]): a mapping whose subjects × logical
//!    bindings would exceed it gets no additions — no new subject, no new namespace —
//!    while its removals go through as usual (`FanOutExceeded`).
//!
//! Reasons, most severe first (several problems → Ready=False with the most severe reason
//! and a message listing all): `Expired`, `InvalidSpec`, `InvalidSelector`, `ScopeRefused`,
//! `ProtectedRoleRefused`, `BindingRefused` (set by the apply layer via
//! [`MappingOutcome::add_problem`] when the API server forbids a binding),
//! `FanOutExceeded`, `RemovalHeld`, `SubjectRefused`, `GroupNotFound`, `RoleNotFound`,
//! `NamespaceNotFound`; `Reconciled` when there is none.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;

use super::naming;
pub use super::naming::mapping_key_from_labels;
use super::split::{split_subjects, Limits};
use crate::crd::subject_name::{check_subject_name, UnsafeName};
use crate::crd::user::{AccessGrant, GrantScope, UserGroupRef};
use crate::crd::{
    BindingStatus, ClusterGroupRoleMappingSpec, GroupAttribute, GroupRef, GroupRoleMappingSpec,
    HeldRemovals, RoleKind, RoleRef, SubjectKind, SubjectOptions, UserAttribute,
    CONFIRM_REMOVAL_ANNOTATION,
};

/// apiGroup of every subject kube-scim writes.
pub const RBAC_API_GROUP: &str = "rbac.authorization.k8s.io";
/// Always protected, whatever [`Settings::protected_roles`] says.
pub const ALWAYS_PROTECTED_ROLE: &str = "cluster-admin";

mod input;
mod output;
mod selector;
mod settings;
mod subjects;
mod summary;
#[cfg(test)]
mod tests;

pub use input::*;
pub use output::*;
use selector::*;
pub use settings::*;
pub use subjects::*;
use summary::*;

// ---------------------------------------------------------------------------------------
// Planning
// ---------------------------------------------------------------------------------------

/// Lookups built once per plan. Users and groups are addressed by dense indices (their
/// position in the input) so the per-mapping work indexes arrays instead of hashing ids:
/// at 50k users that is most of the plan's time.
struct Index<'a> {
    users: Vec<&'a UserInput>,
    groups: Vec<&'a GroupInput>,
    /// Per group: members that are known users, as user indices, without repeats.
    members: Vec<Vec<usize>>,
    /// Per group: member ids that match no user.
    unknown_members: Vec<Vec<&'a str>>,
    groups_by_name: HashMap<&'a str, Vec<usize>>,
    groups_by_external_id: HashMap<&'a str, Vec<usize>>,
    namespaces: HashMap<&'a str, &'a NamespaceInput>,
    namespaces_sorted: Vec<&'a NamespaceInput>,
    existing: HashMap<&'a MappingKey, Vec<&'a ExistingBinding>>,
    cluster_roles: &'a BTreeSet<String>,
    roles: &'a BTreeSet<(String, String)>,
}

impl<'a> Index<'a> {
    fn new(input: &'a PlanInput) -> Self {
        let user_ix: HashMap<&str, usize> = input
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.as_str(), i))
            .collect();
        let mut groups_by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut groups_by_external_id: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut members = Vec::with_capacity(input.groups.len());
        let mut unknown_members = Vec::with_capacity(input.groups.len());
        for (gi, g) in input.groups.iter().enumerate() {
            groups_by_name.entry(&g.display_name).or_default().push(gi);
            if let Some(e) = g.external_id.as_deref() {
                groups_by_external_id.entry(e).or_default().push(gi);
            }
            let mut known = Vec::with_capacity(g.members.len());
            let mut unknown = Vec::new();
            for m in &g.members {
                match user_ix.get(m.as_str()) {
                    Some(ui) => known.push(*ui),
                    None => unknown.push(m.as_str()),
                }
            }
            known.sort_unstable();
            known.dedup();
            members.push(known);
            unknown_members.push(unknown);
        }
        let mut existing: HashMap<&MappingKey, Vec<&ExistingBinding>> = HashMap::new();
        for b in &input.existing {
            if let Some(k) = &b.mapping {
                existing.entry(k).or_default().push(b);
            }
        }
        let mut namespaces_sorted: Vec<&NamespaceInput> = input.namespaces.iter().collect();
        namespaces_sorted.sort_by(|a, b| a.name.cmp(&b.name));
        Index {
            users: input.users.iter().collect(),
            groups: input.groups.iter().collect(),
            members,
            unknown_members,
            groups_by_name,
            groups_by_external_id,
            namespaces: input
                .namespaces
                .iter()
                .map(|n| (n.name.as_str(), n))
                .collect(),
            namespaces_sorted,
            existing,
            cluster_roles: &input.cluster_roles,
            roles: &input.roles,
        }
    }

    /// A binding in this namespace can exist and be written (cluster scope always can).
    fn namespace_live(&self, ns: Option<&str>) -> bool {
        ns.is_none_or(|ns| self.namespaces.get(ns).is_some_and(|n| !n.terminating))
    }
}

/// One logical binding of a mapping: (kind, namespace, roleRef). Split parts share it.
type TargetKey = (BindingKind, Option<String>, RoleRef);

/// What one mapping contributes to the plan.
struct MappingPlan<'a> {
    outcome: MappingOutcome,
    bindings: Vec<DesiredBinding>,
    /// Existing bindings left exactly as they are (frozen mapping or held prune).
    keep: Vec<&'a ExistingBinding>,
    /// Indices of the groups the mapping selects.
    groups: Vec<usize>,
    /// Targets users get access through (empty when frozen).
    grant_targets: Vec<TargetKey>,
    /// Targets whose parts are hash-addressed (see [`TargetLayout::hashed`]).
    hashed: HashSet<TargetKey>,
    subjects: ResolvedSubjects,
    /// Subjects the fan-out budget keeps out: members they stand for get no grant.
    withheld: HashSet<Subject>,
}

/// Plan the whole world. Deterministic: the same input gives the same plan.
pub fn plan(settings: &Settings, input: &PlanInput) -> Plan {
    let idx = Index::new(input);
    let mut out = Plan::default();
    let mut keep: HashSet<(BindingKind, Option<&str>, &str)> = HashSet::new();
    let mut group_mappings: Vec<BTreeSet<String>> = vec![BTreeSet::new(); idx.groups.len()];
    let mut grants: Vec<Vec<Arc<[AccessGrant]>>> = vec![Vec::new(); idx.users.len()];
    let mut seen = HashSet::new();

    // By key, so every output (down to the order of grant blocks) is independent of input order.
    let mut mappings: Vec<&MappingInput> = input.mappings.iter().collect();
    mappings.sort_by(|a, b| a.key.cmp(&b.key));
    for m in mappings {
        if m.deleting || !seen.insert(&m.key) {
            continue;
        }
        if let Some(at) = m.spec.expires_at().filter(|at| *at > input.now) {
            out.next_expiry = Some(out.next_expiry.map_or(at, |n| n.min(at)));
        }
        let mp = plan_mapping(settings, &idx, m, input.now);
        let display = m.key.to_string();
        for gi in &mp.groups {
            group_mappings[*gi].insert(display.clone());
        }
        collect_grants(&idx, &mp, &display, &mut grants);
        out.layouts.insert(m.key.clone(), layout(&idx, &mp));
        for b in &mp.keep {
            keep.insert((b.kind, b.namespace.as_deref(), &b.name));
        }
        out.bindings.extend(mp.bindings);
        out.mapping_status.insert(m.key.clone(), mp.outcome);
    }
    out.bindings
        .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));

    let desired: HashSet<(BindingKind, Option<&str>, &str)> = out
        .bindings
        .iter()
        .map(|b| (b.kind, b.namespace.as_deref(), b.name.as_str()))
        .collect();
    for b in &input.existing {
        let id = (b.kind, b.namespace.as_deref(), b.name.as_str());
        if desired.contains(&id)
            || keep.contains(&id)
            || !idx.namespace_live(b.namespace.as_deref())
        {
            continue;
        }
        out.prune.push(BindingId {
            kind: b.kind,
            namespace: b.namespace.clone(),
            name: b.name.clone(),
        });
    }
    out.prune.sort();
    out.prune.dedup();

    let mut user_groups: Vec<Vec<usize>> = vec![Vec::new(); idx.users.len()];
    for (gi, members) in idx.members.iter().enumerate() {
        for ui in members {
            user_groups[*ui].push(gi);
        }
    }
    // One shared ref per group: a user's status lists its groups as pointers, not copies
    // of their ids and names (~100 bytes per membership, in every plan and every queued
    // status write).
    let group_refs: Vec<Arc<UserGroupRef>> = idx
        .groups
        .iter()
        .map(|g| {
            Arc::new(UserGroupRef {
                id: g.id.clone(),
                display_name: Some(g.display_name.clone()),
            })
        })
        .collect();
    // Collected then bulk-built: BTreeMap::from_iter sorts once instead of 50k inserts.
    out.user_status = idx
        .users
        .iter()
        .zip(user_groups)
        .zip(grants)
        .map(|((u, group_ixs), grants)| {
            let mut groups: Vec<Arc<UserGroupRef>> = group_ixs
                .into_iter()
                .map(|gi| Arc::clone(&group_refs[gi]))
                .collect();
            groups.sort();
            groups.dedup();
            (u.id.clone(), UserAccess { groups, grants })
        })
        .collect();
    out.group_status = idx
        .groups
        .iter()
        .zip(group_mappings)
        .map(|(g, mappings)| (g.id.clone(), mappings.into_iter().collect()))
        .collect();
    out
}

fn layout(idx: &Index<'_>, mp: &MappingPlan<'_>) -> MappingLayout {
    // Parts of one target are consecutive in `bindings`, in part order.
    let mut targets: Vec<(TargetKey, TargetLayout)> = Vec::new();
    let planned = mp
        .bindings
        .iter()
        .map(|b| (b.kind, &b.namespace, &b.role_ref, &b.name, true));
    let kept = mp
        .keep
        .iter()
        .map(|b| (b.kind, &b.namespace, &b.role_ref, &b.name, false));
    for (kind, namespace, role, name, planned) in planned.chain(kept) {
        let key = (kind, namespace.clone(), role.clone());
        let hashed = planned && mp.hashed.contains(&key);
        match targets.iter_mut().find(|(k, _)| *k == key) {
            Some((_, t)) => {
                t.parts.push(name.clone());
                t.hashed &= hashed;
            }
            None => targets.push((
                key,
                TargetLayout {
                    kind,
                    namespace: namespace.clone(),
                    parts: vec![name.clone()],
                    hashed,
                },
            )),
        }
    }
    MappingLayout {
        subjects: mp.subjects.clone(),
        groups: mp
            .groups
            .iter()
            .map(|gi| idx.groups[*gi].id.clone())
            .collect(),
        targets: targets.into_iter().map(|(_, t)| t).collect(),
    }
}

fn collect_grants(
    idx: &Index<'_>,
    mp: &MappingPlan<'_>,
    display: &str,
    grants: &mut [Vec<Arc<[AccessGrant]>>],
) {
    if mp.grant_targets.is_empty() {
        return;
    }
    let cfg = &mp.subjects;
    let scopes = grant_scopes(&mp.grant_targets);
    for &gi in &mp.groups {
        let g = idx.groups[gi];
        let block: Arc<[AccessGrant]> = scopes
            .iter()
            .map(|(role, namespace, scope)| AccessGrant {
                role_kind: naming::role_kind_str(role.kind).to_owned(),
                role_name: role.name.clone(),
                namespace: namespace.clone(),
                scope: Some(*scope),
                mapping: display.to_owned(),
                group: g.display_name.clone(),
            })
            .collect();
        // A subject the fan-out budget withholds grants nothing (yet).
        let admitted = |named: Named, subject: fn(String) -> Subject| match named {
            Named::Bound(name) => mp.withheld.is_empty() || !mp.withheld.contains(&subject(name)),
            _ => false,
        };
        let via_group = cfg.binds_groups() && admitted(cfg.group_subject(g), Subject::group);
        for &ui in &idx.members[gi] {
            let u = idx.users[ui];
            let via_user = cfg.binds_users() && admitted(cfg.user_subject(u), Subject::user);
            if !u.active || !(via_user || via_group) {
                continue;
            }
            grants[ui].push(Arc::clone(&block));
        }
    }
}

/// One grant per role and scope: a role bound in several namespaces is one
/// `SelectedNamespaces` grant, so a user's status stays small (50,000 users × 100
/// namespaces would be 5M entries) and unchanged when a selected namespace comes or goes.
fn grant_scopes(targets: &[TargetKey]) -> Vec<(&RoleRef, Option<String>, GrantScope)> {
    let mut namespaces: BTreeMap<&RoleRef, Vec<&str>> = BTreeMap::new();
    let mut out = Vec::new();
    for (kind, ns, role) in targets {
        match (kind, ns) {
            (BindingKind::RoleBinding, Some(ns)) => namespaces.entry(role).or_default().push(ns),
            _ => out.push((role, None, GrantScope::Cluster)),
        }
    }
    for (role, nss) in namespaces {
        match nss.as_slice() {
            [one] => out.push((role, Some((*one).to_owned()), GrantScope::Namespace)),
            _ => out.push((role, None, GrantScope::SelectedNamespaces)),
        }
    }
    out
}

/// Problems found while reading a spec, grouped by reason.
#[derive(Default)]
struct SpecFindings {
    invalid: Vec<String>,
    bad_selectors: Vec<String>,
    missing_namespaces: BTreeSet<String>,
    missing_roles: BTreeSet<String>,
    refused_roles: BTreeSet<String>,
    /// Targets refused for their scope, as messages.
    refused_scopes: BTreeSet<String>,
    /// Protected namespaces a selector matched (skipped, noted).
    skipped_namespaces: BTreeSet<String>,
    missing_groups: Vec<String>,
}

fn plan_mapping<'a>(
    settings: &Settings,
    idx: &Index<'a>,
    m: &'a MappingInput,
    now: Timestamp,
) -> MappingPlan<'a> {
    let mut outcome = MappingOutcome::new(m.generation);
    outcome.groups = groups_summary(m.spec.groups());
    outcome.roles = roles_summary(&m.spec);
    let mut f = SpecFindings::default();
    let subjects_cfg = settings.subjects.with_overrides(m.spec.subjects());
    let targets = targets(settings, idx, m, &mut f);
    let groups = resolve_groups(idx, m.spec.groups(), &mut f);
    let existing: &[&ExistingBinding] = idx.existing.get(&m.key).map_or(&[], Vec::as_slice);

    // Expired: nothing is bound, everything it had is pruned (explicit, like a deletion:
    // not held by the mass-removal guard), whatever else the spec says.
    let expires_at = m.spec.expires_at();
    if let Some(at) = expires_at.filter(|at| *at <= now) {
        let msg = format!(
            "expired at {at}: its bindings are removed; move spec.expiresAt into the future to renew"
        );
        outcome.events.push(PlanEvent {
            type_: EventType::Normal,
            reason: Reason::Expired.as_str().to_owned(),
            note: msg.clone(),
        });
        outcome.problems.push(problem(Reason::Expired, msg));
        outcome.subject_count = Some(0);
        outcome.refresh();
        return MappingPlan {
            outcome,
            bindings: Vec::new(),
            keep: Vec::new(),
            groups,
            grant_targets: Vec::new(),
            hashed: HashSet::new(),
            subjects: subjects_cfg,
            withheld: HashSet::new(),
        };
    }

    for msg in &f.invalid {
        outcome
            .problems
            .push(problem(Reason::InvalidSpec, msg.clone()));
    }
    for msg in &f.bad_selectors {
        outcome
            .problems
            .push(problem(Reason::InvalidSelector, msg.clone()));
    }
    if !f.invalid.is_empty() || !f.bad_selectors.is_empty() {
        outcome.summary = "existing bindings are left unchanged until the spec is fixed".into();
        outcome.bindings = binding_statuses(existing.iter().map(|b| existing_part(b)));
        outcome.refresh();
        return MappingPlan {
            outcome,
            bindings: Vec::new(),
            keep: existing.to_vec(),
            groups,
            grant_targets: Vec::new(),
            hashed: HashSet::new(),
            subjects: subjects_cfg,
            withheld: HashSet::new(),
        };
    }

    for msg in &f.refused_scopes {
        outcome.events.push(warning(Reason::ScopeRefused, msg));
        outcome
            .problems
            .push(problem(Reason::ScopeRefused, msg.clone()));
    }
    for role in &f.refused_roles {
        let msg = format!(
            "ClusterRole {role} is protected and was not bound: set allowProtectedRoles: true to bind it"
        );
        outcome
            .events
            .push(warning(Reason::ProtectedRoleRefused, &msg));
        outcome
            .problems
            .push(problem(Reason::ProtectedRoleRefused, msg));
    }
    if !f.missing_groups.is_empty() {
        let msg = format!("groups not found: {}", f.missing_groups.join(", "));
        outcome.problems.push(problem(Reason::GroupNotFound, msg));
    }
    if !f.missing_roles.is_empty() {
        let roles: Vec<&str> = f.missing_roles.iter().map(String::as_str).collect();
        let msg = format!(
            "roles not found: {} (bound anyway; access starts once they exist)",
            roles.join(", ")
        );
        outcome.problems.push(problem(Reason::RoleNotFound, msg));
    }
    if !f.missing_namespaces.is_empty() {
        let names: Vec<&str> = f.missing_namespaces.iter().map(String::as_str).collect();
        let msg = format!("namespaces not found: {}", names.join(", "));
        outcome
            .problems
            .push(problem(Reason::NamespaceNotFound, msg));
    }

    let ResolvedMembers {
        subjects,
        notes,
        refused,
    } = resolve_subjects(&subjects_cfg, &groups, idx);
    outcome.notes = notes;
    if let Some(at) = expires_at {
        outcome.notes.push(format!("expires at {at}"));
    }
    if !f.skipped_namespaces.is_empty() {
        let names: Vec<&str> = f.skipped_namespaces.iter().map(String::as_str).collect();
        outcome.notes.push(format!(
            "the namespaceSelector skips protected namespaces: {}",
            names.join(", ")
        ));
    }
    if !refused.is_empty() {
        let msg = format!(
            "{} subject(s) refused for unsafe names, not bound: {}",
            refused.len(),
            examples(&refused.iter().map(String::as_str).collect::<Vec<_>>())
        );
        outcome.problems.push(problem(Reason::SubjectRefused, msg));
    }

    // Existing bindings that can still be written; others go with their namespace.
    let live: Vec<&ExistingBinding> = existing
        .iter()
        .copied()
        .filter(|b| idx.namespace_live(b.namespace.as_deref()))
        .collect();
    let held = guard(settings, m, &live, &subjects, &mut outcome);
    // After the guard: the budget changes what is added, never what is removed.
    let (subjects, targets, withheld) = budget(
        settings,
        &live,
        subjects,
        targets,
        &subjects_cfg,
        bound_groups(&subjects_cfg, &groups, idx),
        &mut outcome,
    );

    // Held subjects stay in the logical bindings they were in.
    let mut extras: HashMap<TargetKey, BTreeSet<&Subject>> = HashMap::new();
    let mut existing_parts: HashMap<TargetKey, usize> = HashMap::new();
    for b in &live {
        let key = (b.kind, b.namespace.clone(), b.role_ref.clone());
        *existing_parts.entry(key.clone()).or_default() += 1;
        if !held.is_empty() {
            let kept: Vec<&Subject> = b.subjects.iter().filter(|s| held.contains(*s)).collect();
            if !kept.is_empty() {
                extras.entry(key).or_default().extend(kept);
            }
        }
    }
    let mut keep = Vec::new();
    if !extras.is_empty() {
        // A binding that would be pruned while it holds held subjects: hold the prune too.
        keep = live
            .iter()
            .copied()
            .filter(|b| {
                let key = (b.kind, b.namespace.clone(), b.role_ref.clone());
                extras.contains_key(&key) && !targets.contains(&key)
            })
            .collect();
    }

    let (labels, annotations) = naming::mapping_metadata(&m.key);
    let (labels, annotations) = (Arc::new(labels), Arc::new(annotations));
    let mut bindings = Vec::new();
    let mut grant_targets = Vec::new();
    // Targets without held extras share one split per part count (which depends only on
    // the current part count, so on `preferred`).
    // (parts, addressed by hash) per part count.
    type Split = (Vec<Arc<[Subject]>>, bool);
    let mut split_cache: HashMap<usize, Split> = HashMap::new();
    let mut hashed = HashSet::new();
    let limits = Limits::for_copies(
        settings.max_subjects_per_binding,
        settings.max_binding_bytes,
        settings.max_change_bytes,
        targets.len(),
    );
    for target in &targets {
        let (kind, ns, role_ref) = target;
        let preferred = existing_parts.get(target).copied().unwrap_or(0);
        let (parts, addressed): (Vec<Arc<[Subject]>>, bool) = match extras.get(target) {
            Some(extra) => {
                let mut merged: Vec<Subject> = subjects
                    .iter()
                    .chain(extra.iter().copied())
                    .cloned()
                    .collect();
                merged.sort();
                merged.dedup();
                // Held subjects are not where the hash puts them: not addressed.
                let (parts, _) = split_subjects(&merged, limits, preferred);
                (parts.into_iter().map(Arc::from).collect(), false)
            }
            None if subjects.is_empty() => continue,
            None => split_cache
                .entry(preferred)
                .or_insert_with(|| {
                    let (parts, addressed) = split_subjects(&subjects, limits, preferred);
                    (parts.into_iter().map(Arc::from).collect(), addressed)
                })
                .clone(),
        };
        if parts.iter().all(|p| p.is_empty()) {
            continue;
        }
        if addressed {
            hashed.insert(target.clone());
        }
        grant_targets.push(target.clone());
        let base = naming::binding_name(&m.key, *kind, role_ref);
        for (i, part) in parts.into_iter().enumerate() {
            bindings.push(DesiredBinding {
                kind: *kind,
                namespace: ns.clone(),
                name: naming::part_name(&base, i),
                role_ref: role_ref.clone(),
                subjects: part,
                mapping: m.key.clone(),
                labels: Arc::clone(&labels),
                annotations: Arc::clone(&annotations),
            });
        }
    }

    outcome.bindings = binding_statuses(
        bindings
            .iter()
            .map(|b| (b.kind, &b.namespace, &b.role_ref, &b.name, b.subjects.len()))
            .chain(keep.iter().map(|b| existing_part(b))),
    );
    outcome.subject_count = Some(u32::try_from(subjects.len()).unwrap_or(u32::MAX));
    outcome.summary = if subjects.is_empty() {
        "no subjects: the groups have no bindable members".to_owned()
    } else {
        format!(
            "{} binding(s) for {} subject(s)",
            outcome.bindings.len(),
            subjects.len()
        )
    };
    outcome.refresh();

    MappingPlan {
        outcome,
        bindings,
        keep,
        groups,
        grant_targets,
        hashed,
        subjects: subjects_cfg,
        withheld,
    }
}

/// The mass-removal guard. Returns the subjects whose removal is held (empty = none).
fn guard<'e>(
    settings: &Settings,
    m: &MappingInput,
    live: &[&'e ExistingBinding],
    desired: &[Subject],
    outcome: &mut MappingOutcome,
) -> HashSet<&'e Subject> {
    let current = current_subjects(live);
    if current.is_empty() || current.len() < settings.mass_removal_min_subjects {
        return HashSet::new();
    }
    // Revocation is never held: with the spec unchanged since the last reconcile, every
    // removal comes from the identity side (deactivation, deletion, leaving a group).
    if m.generation.is_some() && m.generation == m.observed_generation {
        return HashSet::new();
    }
    let desired: HashSet<&Subject> = desired.iter().collect();
    let mut removed: Vec<&Subject> = current
        .iter()
        .copied()
        .filter(|s| !desired.contains(s))
        .collect();
    let share = removed.len() as f64 / current.len() as f64;
    if removed.is_empty() || share <= settings.mass_removal_threshold {
        return HashSet::new();
    }
    removed.sort();
    let token = naming::confirm_token(removed.iter().copied());
    let what = format!(
        "removal of {} of {} managed subjects ({:.0}% > {:.0}%)",
        removed.len(),
        current.len(),
        share * 100.0,
        settings.mass_removal_threshold * 100.0
    );
    if m.confirm_annotation.as_deref() == Some(token.as_str()) {
        outcome.events.push(PlanEvent {
            type_: EventType::Normal,
            reason: "RemovalConfirmed".into(),
            note: format!("{what} confirmed by annotation {CONFIRM_REMOVAL_ANNOTATION}"),
        });
        return HashSet::new();
    }
    let examples: Vec<&str> = removed.iter().take(5).map(|s| s.name.as_str()).collect();
    let mut msg = format!(
        "holding {what}, e.g. {}: set annotation {CONFIRM_REMOVAL_ANNOTATION}={token} to let it through",
        examples.join(", ")
    );
    if let Some(other) = &m.confirm_annotation {
        msg.push_str(&format!(
            " (the current value {other:?} confirms a different removal)"
        ));
    }
    outcome.events.push(warning(Reason::RemovalHeld, &msg));
    outcome.problems.push(problem(Reason::RemovalHeld, msg));
    // The edit is not applied yet: keep reporting the spec last applied in full, so the
    // next passes still see an edit and keep holding.
    outcome.observed_generation = m.observed_generation;
    outcome.held_removals = Some(HeldRemovals {
        subjects: count_u32(removed.len()),
        managed_subjects: count_u32(current.len()),
        confirm_token: token,
    });
    removed.into_iter().collect()
}

/// The subjects a mapping's live bindings hold, all parts and namespaces together.
fn current_subjects<'e>(live: &[&'e ExistingBinding]) -> HashSet<&'e Subject> {
    // A cluster mapping's RoleBindings usually carry identical lists: hash each list once.
    let mut distinct: Vec<&[Subject]> = Vec::new();
    for b in live {
        // Copies in many namespaces are usually one shared list: compare pointers first.
        let list = &b.subjects[..];
        if !distinct
            .iter()
            .any(|d| std::ptr::eq(*d, list) || *d == list)
        {
            distinct.push(list);
        }
    }
    distinct.iter().flat_map(|l| l.iter()).collect()
}

/// How many of `groups` have a Group subject name under `cfg` (what Group subjects
/// would bind, for the fan-out message).
fn bound_groups(cfg: &ResolvedSubjects, groups: &[usize], idx: &Index<'_>) -> usize {
    groups
        .iter()
        .filter(|gi| cfg.group_subject(idx.groups[**gi]).is_bound())
        .count()
}

/// The fan-out budget ([`Settings::max_fanout`]). Within it, returns `subjects` and
/// `targets` as they are. Over it, refuses every addition and nothing else: the subjects
/// still desired that some live binding of the mapping already holds, the targets that
/// already exist (still desired), and the new subjects it withholds. A removal is never
/// affected (whatever leaves `subjects` leaves the result), and a new namespace a
/// selector matches gets nothing until the mapping fits.
///
/// All or nothing rather than "fill up to the budget": which new members got in would
/// depend on the order of names, and a member who can't tell why a colleague got access
/// and they didn't is worse off than one told the mapping is over budget.
fn budget(
    settings: &Settings,
    live: &[&ExistingBinding],
    subjects: Vec<Subject>,
    targets: Vec<TargetKey>,
    cfg: &ResolvedSubjects,
    groups: usize,
    outcome: &mut MappingOutcome,
) -> (Vec<Subject>, Vec<TargetKey>, HashSet<Subject>) {
    let total = fan_out_total(subjects.len(), targets.len());
    if settings.max_fanout == 0 || total <= settings.max_fanout {
        return (subjects, targets, HashSet::new());
    }
    let current = current_subjects(live);
    let existing: HashSet<(BindingKind, Option<&str>, &RoleRef)> = live
        .iter()
        .map(|b| (b.kind, b.namespace.as_deref(), &b.role_ref))
        .collect();
    let asked = (subjects.len(), targets.len());
    let (kept, withheld): (Vec<Subject>, Vec<Subject>) =
        subjects.into_iter().partition(|s| current.contains(s));
    let (kept_targets, new_targets): (Vec<TargetKey>, Vec<TargetKey>) = targets
        .into_iter()
        .partition(|(kind, ns, role)| existing.contains(&(*kind, ns.as_deref(), role)));
    let budget = settings.max_fanout;

    // Stable while the mapping stays over budget (no counts that move with every member),
    // so it makes one Event per transition; the numbers go in a note.
    let advice = if cfg.binds_users() {
        "bind Group subjects (spec.subjects.kind: Group, one subject per group) or narrow the namespaces"
    } else {
        "narrow the namespaces or split the mapping"
    };
    let msg = format!(
        "fan-out over budget: subjects × bindings would exceed {budget} (the operator's --max-fanout), so new subjects and namespaces are not bound until it fits; removals still apply; {advice}"
    );
    outcome.events.push(warning(Reason::FanOutExceeded, &msg));
    outcome.problems.push(problem(Reason::FanOutExceeded, msg));
    let fan = FanOut {
        budget,
        subjects: asked.0,
        bindings: asked.1,
        withheld_subjects: withheld.len(),
        withheld_bindings: new_targets
            .into_iter()
            .map(|(_, ns, role)| (ns, role))
            .collect(),
    };
    let mut note = format!(
        "fan-out {} subject(s) × {} binding(s) = {total} > {budget}: {} new subject(s) and {} new binding(s) withheld",
        fan.subjects,
        fan.bindings,
        fan.withheld_subjects,
        fan.withheld_bindings.len()
    );
    if !fan.withheld_bindings.is_empty() {
        note.push_str(&format!(" ({})", fan.withheld_places()));
    }
    if cfg.kind == SubjectKind::User {
        note.push_str(&format!(
            "; as Group subjects: {groups} × {} = {}",
            fan.bindings,
            fan_out_total(groups, fan.bindings)
        ));
    }
    outcome.notes.push(note);
    outcome.fan_out = Some(fan);
    (kept, kept_targets, withheld.into_iter().collect())
}

/// The logical bindings a spec asks for, deduplicated and sorted; records spec problems.
fn targets(
    settings: &Settings,
    idx: &Index<'_>,
    m: &MappingInput,
    f: &mut SpecFindings,
) -> Vec<TargetKey> {
    let mut wanted: BTreeSet<TargetKey> = BTreeSet::new();
    if m.spec.groups().is_empty() {
        f.invalid.push("spec.groups is empty".into());
    }
    match (&m.key, &m.spec) {
        (MappingKey::Namespaced { namespace, .. }, MappingSpec::Namespaced(spec)) => {
            if spec.role_ref.name.is_empty() {
                f.invalid.push("spec.roleRef.name is empty".into());
            } else if settings.protected_namespaces.contains(namespace) {
                f.refused_scopes.insert(format!(
                    "namespace {namespace} is protected: kube-scim binds nothing there unless the operator lists it"
                ));
            } else if !idx
                .namespaces
                .get(namespace.as_str())
                .is_some_and(|n| n.terminating)
            {
                // Only a terminating namespace is skipped: an unknown one is cache lag (the mapping lives there).
                wanted.insert((
                    BindingKind::RoleBinding,
                    Some(namespace.clone()),
                    spec.role_ref.clone(),
                ));
            }
        }
        (MappingKey::Cluster { .. }, MappingSpec::Cluster(spec)) => {
            if spec.cluster_roles.is_empty() && spec.namespace_roles.is_empty() {
                f.invalid
                    .push("spec sets neither clusterRoles nor namespaceRoles".into());
            }
            for (i, role) in spec.cluster_roles.iter().enumerate() {
                if role.is_empty() {
                    f.invalid.push(format!("spec.clusterRoles[{i}] is empty"));
                    continue;
                }
                if !settings.may_bind_cluster_wide(role) {
                    f.refused_scopes.insert(format!(
                        "ClusterRole {role} may not be bound cluster-wide: the operator allows {} there (bind it per namespace with namespaceRoles instead)",
                        settings.cluster_wide_roles.join(", ")
                    ));
                    continue;
                }
                wanted.insert((BindingKind::ClusterRoleBinding, None, cluster_role(role)));
            }
            for (i, nr) in spec.namespace_roles.iter().enumerate() {
                if nr.cluster_role.is_empty() {
                    f.invalid
                        .push(format!("spec.namespaceRoles[{i}].clusterRole is empty"));
                    continue;
                }
                if nr.namespaces.is_empty() && nr.namespace_selector.is_none() {
                    f.invalid.push(format!(
                        "spec.namespaceRoles[{i}] sets neither namespaces nor namespaceSelector"
                    ));
                    continue;
                }
                let role = cluster_role(&nr.cluster_role);
                for ns in &nr.namespaces {
                    if settings.protected_namespaces.contains(ns) {
                        f.refused_scopes.insert(format!(
                            "namespace {ns} is protected: kube-scim binds nothing there unless the operator lists it"
                        ));
                        continue;
                    }
                    match idx.namespaces.get(ns.as_str()) {
                        None => {
                            f.missing_namespaces.insert(ns.clone());
                        }
                        Some(n) if n.terminating => {}
                        Some(_) => {
                            wanted.insert((
                                BindingKind::RoleBinding,
                                Some(ns.clone()),
                                role.clone(),
                            ));
                        }
                    }
                }
                if let Some(sel) = &nr.namespace_selector {
                    if let Err(e) = validate_selector(sel) {
                        f.bad_selectors
                            .push(format!("spec.namespaceRoles[{i}].namespaceSelector: {e}"));
                        continue;
                    }
                    for n in &idx.namespaces_sorted {
                        if !n.terminating && selector_matches(sel, &n.labels) {
                            if settings.protected_namespaces.contains(&n.name) {
                                f.skipped_namespaces.insert(n.name.clone());
                                continue;
                            }
                            wanted.insert((
                                BindingKind::RoleBinding,
                                Some(n.name.clone()),
                                role.clone(),
                            ));
                        }
                    }
                }
            }
        }
        (MappingKey::Namespaced { .. }, MappingSpec::Cluster(_)) => {
            f.invalid
                .push("a GroupRoleMapping key carries a ClusterGroupRoleMapping spec".into());
        }
        (MappingKey::Cluster { .. }, MappingSpec::Namespaced(_)) => {
            f.invalid
                .push("a ClusterGroupRoleMapping key carries a GroupRoleMapping spec".into());
        }
    }

    let allow_protected = m.spec.allow_protected_roles();
    let mut out = Vec::with_capacity(wanted.len());
    for target in wanted {
        let (_, ns, role) = &target;
        if settings.is_protected(role) && !allow_protected {
            f.refused_roles.insert(role.name.clone());
            continue;
        }
        let exists = match role.kind {
            RoleKind::ClusterRole => idx.cluster_roles.contains(&role.name),
            RoleKind::Role => ns
                .as_ref()
                .is_some_and(|ns| idx.roles.contains(&(ns.clone(), role.name.clone()))),
        };
        if !exists {
            f.missing_roles.insert(match ns {
                Some(ns) if role.kind == RoleKind::Role => format!("Role {ns}/{}", role.name),
                _ => format!("{} {}", naming::role_kind_str(role.kind), role.name),
            });
        }
        out.push(target);
    }
    out
}

/// The groups a spec names, deduplicated by id; records unknown and malformed refs.
fn resolve_groups(idx: &Index<'_>, refs: &[GroupRef], f: &mut SpecFindings) -> Vec<usize> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in refs.iter().enumerate() {
        let (found, label) = match (r.display_name.as_deref(), r.external_id.as_deref()) {
            (Some(d), None) if !d.is_empty() => {
                (idx.groups_by_name.get(d), format!("displayName {d:?}"))
            }
            (None, Some(e)) if !e.is_empty() => (
                idx.groups_by_external_id.get(e),
                format!("externalId {e:?}"),
            ),
            _ => {
                f.invalid.push(format!(
                    "spec.groups[{i}] must set exactly one of displayName and externalId"
                ));
                continue;
            }
        };
        match found {
            Some(groups) => {
                for gi in groups {
                    if seen.insert(*gi) {
                        out.push(*gi);
                    }
                }
            }
            None => f.missing_groups.push(label),
        }
    }
    out
}

/// The mapping's subjects.
struct ResolvedMembers {
    /// Sorted, unique.
    subjects: Vec<Subject>,
    /// About members and groups that were skipped; informational.
    notes: Vec<String>,
    /// Users and groups whose subject name is unsafe (see [`check_subject_name`]): never
    /// bound, and reported as a problem so a person looks at them.
    refused: Vec<String>,
}

fn resolve_subjects(cfg: &ResolvedSubjects, groups: &[usize], idx: &Index<'_>) -> ResolvedMembers {
    let mut subjects = Vec::new();
    let mut notes = Vec::new();
    let mut refused = Vec::new();
    if cfg.binds_groups() {
        let mut skipped = Vec::new();
        for g in groups.iter().map(|gi| idx.groups[*gi]) {
            match cfg.group_subject(g) {
                Named::Bound(name) => subjects.push(Subject::group(name)),
                Named::Refused(name, why) => refused.push(refusal(
                    format!("group {:?}", g.display_name),
                    cfg.group_attribute_name(),
                    &name,
                    why,
                )),
                Named::Missing => skipped.push(g.display_name.as_str()),
            }
        }
        if !skipped.is_empty() {
            notes.push(format!(
                "{} group(s) skipped for lacking {}: {}",
                skipped.len(),
                cfg.group_attribute_name(),
                examples(&skipped)
            ));
        }
    }
    if cfg.binds_users() {
        let mut seen = vec![false; idx.users.len()];
        let mut unknown: HashSet<&str> = HashSet::new();
        let mut inactive = 0usize;
        let mut no_attr = Vec::new();
        for &gi in groups {
            unknown.extend(idx.unknown_members[gi].iter().copied());
            for &ui in &idx.members[gi] {
                if std::mem::replace(&mut seen[ui], true) {
                    continue;
                }
                let u = idx.users[ui];
                if !u.active {
                    inactive += 1;
                    continue;
                }
                match cfg.user_subject(u) {
                    Named::Bound(name) => subjects.push(Subject::user(name)),
                    Named::Refused(name, why) => refused.push(refusal(
                        format!("user {}", u.id),
                        cfg.user_attribute_name(),
                        &name,
                        why,
                    )),
                    Named::Missing => no_attr.push(u.id.as_str()),
                }
            }
        }
        let unknown = unknown.len();
        if !no_attr.is_empty() {
            no_attr.sort_unstable();
            notes.push(format!(
                "{} member(s) skipped for lacking {}: {}",
                no_attr.len(),
                cfg.user_attribute_name(),
                examples(&no_attr)
            ));
        }
        if inactive > 0 {
            notes.push(format!("{inactive} inactive member(s) not bound"));
        }
        if unknown > 0 {
            notes.push(format!("{unknown} member id(s) not found as ScimUser"));
        }
    }
    subjects.sort_unstable();
    subjects.dedup();
    refused.sort_unstable();
    ResolvedMembers {
        subjects,
        notes,
        refused,
    }
}

fn examples(items: &[&str]) -> String {
    let mut s = items.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(", …");
    }
    s
}
