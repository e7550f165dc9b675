//! Names, labels and tokens of what the controller manages: deterministic, valid and
//! collision-free, so a re-plan always lands on the same objects.
//!
//! Binding names: `kube-scim.<mapping>.<role>-<hash>` for a GroupRoleMapping and
//! `kube-scim.c.<mapping>.<role>-<hash>` for a ClusterGroupRoleMapping; a binding split
//! into parts keeps that name for part 0 and adds `-part-<i>` for part i ≥ 1. The hash
//! (8 hex chars of sha256) covers the unsanitized identity (mapping kind, namespace and
//! name, binding kind, role kind and name) and is always present: readable parts may be
//! sanitized or truncated into the same text, and the role *kind* must be part of the
//! name because a binding's roleRef is immutable.
use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::plan::{BindingKind, MappingKey, Subject};
use crate::crd::{RoleKind, RoleRef, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// Label: `GroupRoleMapping` or `ClusterGroupRoleMapping`.
pub const MAPPING_KIND_LABEL: &str = "scim.kubescim.io/mapping-kind";
/// Label: the mapping's name, or a hashed form when it is not a valid label value.
pub const MAPPING_NAME_LABEL: &str = "scim.kubescim.io/mapping-name";
/// Label: the namespace of a GroupRoleMapping.
pub const MAPPING_NAMESPACE_LABEL: &str = "scim.kubescim.io/mapping-namespace";
/// Annotation: the mapping's exact name (labels hold at most 63 characters).
pub const MAPPING_NAME_ANNOTATION: &str = "scim.kubescim.io/mapping-name";
/// Annotation: the exact namespace of a GroupRoleMapping.
pub const MAPPING_NAMESPACE_ANNOTATION: &str = "scim.kubescim.io/mapping-namespace";

pub const KIND_GROUP_ROLE_MAPPING: &str = "GroupRoleMapping";
pub const KIND_CLUSTER_GROUP_ROLE_MAPPING: &str = "ClusterGroupRoleMapping";

const BINDING_PREFIX: &str = "kube-scim";
const PART_SEPARATOR: &str = "-part-";
/// Longest readable component; keeps a full name (prefix, two components, hash, part
/// suffix) within the 253 characters of a DNS-1123 subdomain.
const MAX_COMPONENT: usize = 100;
const NAME_HASH_LEN: usize = 8;
const TOKEN_LEN: usize = 12;
const MAX_LABEL_VALUE: usize = 63;

/// First `len` hex characters of sha256 over `parts`, each length-prefixed so that
/// `["ab", "c"]` and `["a", "bc"]` differ.
pub fn short_hash(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let mut s = hex::encode(h.finalize());
    s.truncate(len);
    s
}

/// `Role` or `ClusterRole`.
pub fn role_kind_str(kind: RoleKind) -> &'static str {
    match kind {
        RoleKind::Role => "Role",
        RoleKind::ClusterRole => "ClusterRole",
    }
}

/// Lowercase `[a-z0-9-]`, no leading/trailing/double dash, at most `max` chars, never empty.
fn sanitize_component(raw: &str, max: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max));
    let mut after_dash = true; // true at the start so a leading separator is dropped
    for c in raw.chars() {
        if out.len() >= max {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            after_dash = false;
        } else if !after_dash {
            out.push('-');
            after_dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push('x');
    }
    out
}

/// Name of part 0 of the binding `kind` → `role` owned by `mapping`. Independent of the
/// namespace: a cluster mapping's RoleBindings share one name across namespaces.
pub fn binding_name(mapping: &MappingKey, kind: BindingKind, role: &RoleRef) -> String {
    let hash = short_hash(
        &[
            mapping.kind(),
            mapping.namespace().unwrap_or(""),
            mapping.name(),
            kind.as_str(),
            role_kind_str(role.kind),
            &role.name,
        ],
        NAME_HASH_LEN,
    );
    let scope = match mapping {
        MappingKey::Namespaced { .. } => "",
        MappingKey::Cluster { .. } => "c.",
    };
    format!(
        "{BINDING_PREFIX}.{scope}{}.{}-{hash}",
        sanitize_component(mapping.name(), MAX_COMPONENT),
        sanitize_component(&role.name, MAX_COMPONENT)
    )
}

/// Name of part `index` of a split binding: part 0 keeps the base name, so a binding
/// that never needs splitting (nearly all) has no suffix.
pub fn part_name(base: &str, index: usize) -> String {
    if index == 0 {
        base.to_owned()
    } else {
        format!("{base}{PART_SEPARATOR}{index}")
    }
}

/// Whether `s` is a valid label value: ≤ 63 chars of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
pub fn is_valid_label_value(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    s.is_empty()
        || (s.len() <= MAX_LABEL_VALUE
            && s.chars().all(ok_char)
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// `raw` itself when it is a valid label value, else a readable prefix plus a hash of `raw`.
pub fn label_value(raw: &str) -> String {
    if is_valid_label_value(raw) {
        return raw.to_owned();
    }
    let hash = short_hash(&[raw], NAME_HASH_LEN);
    let keep = MAX_LABEL_VALUE - NAME_HASH_LEN - 1;
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(keep)
        .collect();
    let prefix = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() {
        hash
    } else {
        format!("{prefix}-{hash}")
    }
}

/// Labels and annotations that tie a binding to its mapping (plus the managed-by label).
/// Annotations always carry the exact names; labels carry them when they fit.
pub fn mapping_metadata(key: &MappingKey) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    labels.insert(MAPPING_KIND_LABEL.to_owned(), key.kind().to_owned());
    labels.insert(MAPPING_NAME_LABEL.to_owned(), label_value(key.name()));
    annotations.insert(MAPPING_NAME_ANNOTATION.to_owned(), key.name().to_owned());
    if let Some(ns) = key.namespace() {
        labels.insert(MAPPING_NAMESPACE_LABEL.to_owned(), label_value(ns));
        annotations.insert(MAPPING_NAMESPACE_ANNOTATION.to_owned(), ns.to_owned());
    }
    (labels, annotations)
}

/// Prefix of every label and annotation key kube-scim writes on a binding, except
/// [`MANAGED_BY_LABEL`].
const OWN_KEY_PREFIX: &str = "scim.kubescim.io/";

/// Whether `key` is a label or annotation key kube-scim writes on its bindings
/// ([`mapping_metadata`]) and reads back ([`mapping_key_from_labels`]); the binding cache
/// keeps only these. By prefix, so a key added to [`mapping_metadata`] is kept without
/// a second list to update.
pub fn is_binding_metadata_key(key: &str) -> bool {
    key == MANAGED_BY_LABEL || key.starts_with(OWN_KEY_PREFIX)
}

/// The mapping owning a managed binding, read back from its labels and annotations.
/// `None` when the binding is not managed by kube-scim or its metadata is incomplete or
/// inconsistent (an annotation that doesn't hash to its label); such a binding is an
/// orphan and gets pruned.
pub fn mapping_key_from_labels(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<MappingKey> {
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY_VALUE) {
        return None;
    }
    let exact = |label: &str, annotation: &str| -> Option<String> {
        let in_label = labels.get(label)?;
        let value = match annotations.get(annotation) {
            Some(exact) if label_value(exact) == *in_label => exact.clone(),
            Some(_) => return None,
            // Annotation stripped: the label is all there is (exact unless it was hashed).
            None => in_label.clone(),
        };
        (!value.is_empty()).then_some(value)
    };
    let name = exact(MAPPING_NAME_LABEL, MAPPING_NAME_ANNOTATION)?;
    match labels.get(MAPPING_KIND_LABEL)?.as_str() {
        KIND_GROUP_ROLE_MAPPING => Some(MappingKey::Namespaced {
            namespace: exact(MAPPING_NAMESPACE_LABEL, MAPPING_NAMESPACE_ANNOTATION)?,
            name,
        }),
        KIND_CLUSTER_GROUP_ROLE_MAPPING => Some(MappingKey::Cluster { name }),
        _ => None,
    }
}

/// Token that confirms one specific held removal: a hash of the sorted removed subjects,
/// so a confirmation releases exactly that removal and a different one needs a new one.
pub fn confirm_token<'a>(removed_sorted: impl IntoIterator<Item = &'a Subject>) -> String {
    let mut h = Sha256::new();
    for s in removed_sorted {
        h.update(s.kind.as_str().as_bytes());
        h.update([0]);
        h.update((s.name.len() as u64).to_be_bytes());
        h.update(s.name.as_bytes());
    }
    let mut t = hex::encode(h.finalize());
    t.truncate(TOKEN_LEN);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_key(ns: &str, name: &str) -> MappingKey {
        MappingKey::Namespaced {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn cluster_role(name: &str) -> RoleRef {
        RoleRef {
            kind: RoleKind::ClusterRole,
            name: name.into(),
        }
    }

    fn is_dns1123_subdomain(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|seg| {
                !seg.is_empty()
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !seg.starts_with('-')
                    && !seg.ends_with('-')
            })
    }

    #[test]
    fn names_are_readable_valid_and_deterministic() {
        let n = binding_name(
            &ns_key("pay", "devs"),
            BindingKind::RoleBinding,
            &cluster_role("edit"),
        );
        assert!(n.starts_with("kube-scim.devs.edit-"), "{n}");
        assert_eq!(n.len(), "kube-scim.devs.edit-".len() + 8);
        assert_eq!(
            n,
            binding_name(
                &ns_key("pay", "devs"),
                BindingKind::RoleBinding,
                &cluster_role("edit")
            )
        );
        let c = binding_name(
            &MappingKey::Cluster {
                name: "Devs_Team".into(),
            },
            BindingKind::ClusterRoleBinding,
            &cluster_role("system:aggregate-to-edit"),
        );
        assert!(
            c.starts_with("kube-scim.c.devs-team.system-aggregate-to-edit-"),
            "{c}"
        );
        for name in [&n, &c] {
            assert!(is_dns1123_subdomain(name), "{name}");
        }
        assert_eq!(part_name(&n, 0), n);
        assert_eq!(part_name(&n, 2), format!("{n}-part-2"));
    }

    #[test]
    fn hostile_and_long_inputs_still_give_valid_names() {
        let long = "A".repeat(300);
        for (mapping, role) in [
            (long.as_str(), long.as_str()),
            ("---", ":::"),
            ("é", "ü"),
            ("a..b", "-x-"),
            ("", ""),
        ] {
            for key in [
                ns_key("n", mapping),
                MappingKey::Cluster {
                    name: mapping.into(),
                },
            ] {
                let name = binding_name(&key, BindingKind::RoleBinding, &cluster_role(role));
                let with_part = part_name(&name, 12345);
                assert!(is_dns1123_subdomain(&with_part), "{with_part}");
            }
        }
    }

    #[test]
    fn identities_that_sanitize_alike_still_differ() {
        let role = cluster_role("edit");
        let a = binding_name(&ns_key("n", "Devs"), BindingKind::RoleBinding, &role);
        let b = binding_name(&ns_key("n", "devs"), BindingKind::RoleBinding, &role);
        let c = binding_name(&ns_key("n", "dev:s"), BindingKind::RoleBinding, &role);
        let d = binding_name(&ns_key("n", "dev-s"), BindingKind::RoleBinding, &role);
        assert_ne!(a, b);
        assert_ne!(c, d);
        // Same mapping name, namespaced vs cluster, same namespace, same role.
        let ns = binding_name(&ns_key("n", "devs"), BindingKind::RoleBinding, &role);
        let cl = binding_name(
            &MappingKey::Cluster {
                name: "devs".into(),
            },
            BindingKind::RoleBinding,
            &role,
        );
        assert_ne!(ns, cl);
        // Role vs ClusterRole of the same name (roleRef is immutable, so the name must change).
        let as_role = RoleRef {
            kind: RoleKind::Role,
            name: "edit".into(),
        };
        assert_ne!(
            ns,
            binding_name(&ns_key("n", "devs"), BindingKind::RoleBinding, &as_role)
        );
        // Same mapping name in two namespaces.
        assert_ne!(
            ns,
            binding_name(&ns_key("m", "devs"), BindingKind::RoleBinding, &role)
        );
    }

    #[test]
    fn label_values_fit_and_metadata_round_trips() {
        assert_eq!(label_value("devs"), "devs");
        let long = format!("team.{}", "x".repeat(100));
        let v = label_value(&long);
        assert!(
            is_valid_label_value(&v) && v.len() <= 63 && v != long,
            "{v}"
        );
        assert!(is_valid_label_value(&label_value("-:-")));
        assert!(!is_valid_label_value("-a"));
        assert!(!is_valid_label_value("a:b"));

        for key in [
            ns_key("payments", "devs"),
            ns_key("payments", &long),
            MappingKey::Cluster { name: long.clone() },
            MappingKey::Cluster {
                name: "devs".into(),
            },
        ] {
            let (labels, annotations) = mapping_metadata(&key);
            assert!(
                labels.values().all(|v| is_valid_label_value(v)),
                "{labels:?}"
            );
            assert_eq!(
                mapping_key_from_labels(&labels, &annotations),
                Some(key.clone())
            );
            // The binding cache keeps every key written here (or drift checks would
            // never match and every pass would rewrite every binding).
            assert!(
                labels
                    .keys()
                    .chain(annotations.keys())
                    .all(|k| is_binding_metadata_key(k)),
                "{labels:?} {annotations:?}"
            );
        }
        assert!(!is_binding_metadata_key("argocd.argoproj.io/instance"));
        assert!(!is_binding_metadata_key(
            "kubectl.kubernetes.io/last-applied-configuration"
        ));
    }

    #[test]
    fn unparseable_metadata_is_none() {
        let key = ns_key("payments", "devs");
        let (labels, annotations) = mapping_metadata(&key);
        // Annotation stripped: the label still identifies a short name.
        assert_eq!(
            mapping_key_from_labels(&labels, &BTreeMap::new()),
            Some(key)
        );
        let mut not_ours = labels.clone();
        not_ours.insert(MANAGED_BY_LABEL.into(), "helm".into());
        assert_eq!(mapping_key_from_labels(&not_ours, &annotations), None);
        let mut bad_kind = labels.clone();
        bad_kind.insert(MAPPING_KIND_LABEL.into(), "Nope".into());
        assert_eq!(mapping_key_from_labels(&bad_kind, &annotations), None);
        let mut no_ns = labels.clone();
        no_ns.remove(MAPPING_NAMESPACE_LABEL);
        assert_eq!(mapping_key_from_labels(&no_ns, &annotations), None);
        let mut tampered = annotations.clone();
        tampered.insert(MAPPING_NAME_ANNOTATION.into(), "other".into());
        assert_eq!(mapping_key_from_labels(&labels, &tampered), None);
    }

    #[test]
    fn confirm_token_depends_on_the_exact_set() {
        let a = Subject::user("alice");
        let b = Subject::user("bob");
        let g = Subject::group("bob");
        let t1 = confirm_token([&a, &b]);
        assert_eq!(t1, confirm_token([&a, &b]));
        assert_eq!(t1.len(), 12);
        assert_ne!(t1, confirm_token([&a]));
        assert_ne!(t1, confirm_token([&a, &g]));
    }
}
