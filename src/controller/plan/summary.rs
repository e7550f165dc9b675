//! Small helpers: short texts for status columns and messages, binding statuses.
use super::*;

pub(super) fn cluster_role(name: &str) -> RoleRef {
    RoleRef {
        kind: RoleKind::ClusterRole,
        name: name.to_owned(),
    }
}

/// Longest summary column (groups, roles) before it is shortened to "a, b, +N".
pub const MAX_COLUMN: usize = 48;

/// Items joined by ", ", as many as fit in [`MAX_COLUMN`] characters, then "+N" for
/// the rest (at least the first item, itself cut if needed).
pub(super) fn shorten_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let rest = items.len() - i - 1;
        let more = if rest > 0 {
            format!(", +{rest}").len()
        } else {
            0
        };
        let sep = if i == 0 { 0 } else { 2 };
        if i > 0 && out.len() + sep + item.len() + more > MAX_COLUMN {
            out.push_str(&format!(", +{}", items.len() - i));
            return out;
        }
        if i > 0 {
            out.push_str(", ");
        }
        if i == 0 && item.chars().count() > MAX_COLUMN {
            out.extend(item.chars().take(MAX_COLUMN - 3));
            out.push_str("...");
        } else {
            out.push_str(item);
        }
    }
    out
}

/// The groups of a spec as a column: displayName, else externalId.
pub(super) fn groups_summary(groups: &[GroupRef]) -> String {
    shorten_list(
        groups
            .iter()
            .filter_map(|g| g.display_name.as_deref().or(g.external_id.as_deref())),
    )
}

/// The roles of a spec as a column: the role name; a ClusterGroupRoleMapping's
/// cluster-wide roles, then its per-namespace roles marked `(ns)`, without repeats.
pub(super) fn roles_summary(spec: &MappingSpec) -> String {
    match spec {
        MappingSpec::Namespaced(s) => shorten_list([s.role_ref.name.as_str()]),
        MappingSpec::Cluster(s) => {
            let mut seen = BTreeSet::new();
            let names: Vec<String> = s
                .cluster_roles
                .iter()
                .cloned()
                .chain(
                    s.namespace_roles
                        .iter()
                        .map(|r| format!("{} (ns)", r.cluster_role)),
                )
                .filter(|n| seen.insert(n.clone()))
                .collect();
            shorten_list(names.iter().map(String::as_str))
        }
    }
}

/// `ClusterRole/edit` or `Role/deployer`, as in `BindingStatus.role`.
pub(super) fn role_display(role: &RoleRef) -> String {
    format!("{}/{}", naming::role_kind_str(role.kind), role.name)
}

/// A binding object as (kind, namespace, role, name, subject count).
pub(super) type PartInfo<'a> = (
    BindingKind,
    &'a Option<String>,
    &'a RoleRef,
    &'a String,
    usize,
);

pub(super) fn existing_part(b: &ExistingBinding) -> PartInfo<'_> {
    (b.kind, &b.namespace, &b.role_ref, &b.name, b.subjects.len())
}

/// One status entry per logical binding, sorted: its first part's name, the part count
/// and the subjects of all parts. Per part, a mapping reaching 100 namespaces with a
/// 50,000-member group would list thousands of entries and rewrite them all on every
/// membership change.
pub(super) fn binding_statuses<'a>(
    parts: impl Iterator<Item = PartInfo<'a>>,
) -> Vec<BindingStatus> {
    type Key<'k> = (BindingKind, &'k Option<String>, &'k RoleRef);
    let mut by_target: BTreeMap<Key<'a>, (BindingStatus, u32)> = BTreeMap::new();
    for (kind, namespace, role, name, subjects) in parts {
        let (entry, count) = by_target.entry((kind, namespace, role)).or_insert_with(|| {
            let status = BindingStatus {
                kind: kind.as_str().to_owned(),
                namespace: namespace.clone(),
                name: name.clone(),
                role: role_display(role),
                parts: None,
                subjects: 0,
            };
            (status, 0)
        });
        // The unsuffixed part 0 sorts first.
        if *name < entry.name {
            entry.name = name.clone();
        }
        entry.subjects = entry.subjects.saturating_add(count_u32(subjects));
        *count += 1;
    }
    let mut out: Vec<BindingStatus> = by_target
        .into_values()
        .map(|(status, count)| BindingStatus {
            parts: (count > 1).then_some(count),
            ..status
        })
        .collect();
    out.sort();
    out
}

pub(super) fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn problem(reason: Reason, message: String) -> Problem {
    Problem { reason, message }
}

pub(super) fn warning(reason: Reason, note: &str) -> PlanEvent {
    PlanEvent {
        type_: EventType::Warning,
        reason: reason.as_str().to_owned(),
        note: note.to_owned(),
    }
}
