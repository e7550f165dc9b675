//! Mapping files for `kube-scim plan -f`: multi-document YAML (or JSON) holding
//! GroupRoleMappings and ClusterGroupRoleMappings (also inside a `kind: List`), checked
//! the way the API server would check them where that is cheap: the CRD types
//! deserialize them (required fields, enums, RFC 3339 times), names are DNS subdomains,
//! and fields the types do not know are refused (as `kubectl apply` does with
//! server-side field validation) instead of being silently dropped.
use serde::Deserialize;
use serde_json::Value;

use crate::controller::plan::{MappingKey, MappingSpec};
use crate::crd::{ClusterGroupRoleMapping, GroupRoleMapping, CONFIRM_REMOVAL_ANNOTATION};
use crate::explain::diff::Edit;

const API_VERSION: &str = "scim.kubescim.io/v1alpha1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{source_name}, document {document}: {message}")]
pub struct FileError {
    pub source_name: String,
    /// 1-based.
    pub document: usize,
    pub message: String,
}

/// A mapping read from a file, with where it came from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct FileMapping {
    /// `FILE, document N`.
    pub origin: String,
    pub edit: Edit,
}

/// The mappings in `text` (read from `source_name`); a GroupRoleMapping without a
/// namespace goes to `default_namespace`, as kubectl does.
pub fn parse(
    source_name: &str,
    text: &str,
    default_namespace: &str,
) -> Result<Vec<FileMapping>, FileError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let err = |message: String| FileError {
            source_name: source_name.to_owned(),
            document: i + 1,
            message,
        };
        let value = Value::deserialize(doc).map_err(|e| err(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let items = if value.get("kind").and_then(Value::as_str) == Some("List") {
            value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| err("a List without items".into()))?
        } else {
            vec![value]
        };
        for item in items {
            let edit = mapping(&item, default_namespace).map_err(&err)?;
            out.push(FileMapping {
                origin: format!("{source_name}, document {}", i + 1),
                edit,
            });
        }
    }
    Ok(out)
}

fn mapping(v: &Value, default_namespace: &str) -> Result<Edit, String> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version != API_VERSION || !matches!(kind, "GroupRoleMapping" | "ClusterGroupRoleMapping")
    {
        return Err(format!(
            "{kind:?} of {api_version:?} is not a mapping: plan takes GroupRoleMapping and ClusterGroupRoleMapping of {API_VERSION}"
        ));
    }
    let what = |e: serde_json::Error| format!("invalid {kind}: {e}");
    let meta = v.get("metadata").cloned().unwrap_or(Value::Null);
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{kind} without metadata.name"))?;
    check_name(name).map_err(|e| format!("metadata.name {name:?} {e}"))?;
    let confirm_annotation = meta
        .get("annotations")
        .and_then(|a| a.get(CONFIRM_REMOVAL_ANNOTATION))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (key, spec, known) = if kind == "GroupRoleMapping" {
        let m: GroupRoleMapping = serde_json::from_value(v.clone()).map_err(what)?;
        let namespace = m
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| default_namespace.to_owned());
        check_name(&namespace).map_err(|e| format!("metadata.namespace {namespace:?} {e}"))?;
        let known = serde_json::to_value(&m.spec).map_err(what)?;
        (
            MappingKey::Namespaced {
                namespace,
                name: name.to_owned(),
            },
            MappingSpec::Namespaced(m.spec),
            known,
        )
    } else {
        let m: ClusterGroupRoleMapping = serde_json::from_value(v.clone()).map_err(what)?;
        let known = serde_json::to_value(&m.spec).map_err(what)?;
        (
            MappingKey::Cluster {
                name: name.to_owned(),
            },
            MappingSpec::Cluster(m.spec),
            known,
        )
    };
    let mut unknown = Vec::new();
    unknown_fields(
        v.get("spec").unwrap_or(&Value::Null),
        &known,
        "spec",
        &mut unknown,
    );
    if !unknown.is_empty() {
        return Err(format!(
            "unknown field(s) {} in {kind} {name} (kubectl explain {}.spec lists the fields)",
            unknown.join(", "),
            kind.to_lowercase()
        ));
    }
    Ok(Edit {
        key,
        spec,
        confirm_annotation,
    })
}

/// Paths of `given` that deserializing dropped: present, not empty, and absent from
/// what the typed value serializes back to.
fn unknown_fields(given: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (given, known) {
        (Value::Object(g), Value::Object(k)) => {
            for (key, gv) in g {
                let here = format!("{path}.{key}");
                match k.get(key) {
                    Some(kv) => unknown_fields(gv, kv, &here, out),
                    None if is_empty(gv) => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(g), Value::Array(k)) => {
            for (i, (gv, kv)) in g.iter().zip(k).enumerate() {
                unknown_fields(gv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Values a type leaves out when it serializes (defaults): not a typo's sign.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// A DNS-1123 subdomain, as object and namespace names must be.
fn check_name(name: &str) -> Result<(), &'static str> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("is not a valid name: lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_defaults() {
        let text = r#"
apiVersion: scim.kubescim.io/v1alpha1
kind: GroupRoleMapping
metadata:
  name: devs
  annotations:
    scim.kubescim.io/confirm-removal: abc123
spec:
  groups: [{displayName: devs}]
  roleRef: {kind: ClusterRole, name: edit}
  expiresAt: "2030-01-01T00:00:00Z"
---
---
apiVersion: v1
kind: List
items:
- apiVersion: scim.kubescim.io/v1alpha1
  kind: ClusterGroupRoleMapping
  metadata: {name: viewers}
  spec:
    groups: [{externalId: "1234"}]
    clusterRoles: [view]
    namespaceRoles:
    - clusterRole: edit
      namespaceSelector: {matchLabels: {team: a}}
"#;
        let got = parse("m.yaml", text, "payments").expect("parse");
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].edit.key,
            MappingKey::Namespaced {
                namespace: "payments".into(),
                name: "devs".into()
            }
        );
        assert_eq!(got[0].edit.confirm_annotation.as_deref(), Some("abc123"));
        assert!(got[0].edit.spec.expires_at().is_some());
        assert_eq!(got[0].origin, "m.yaml, document 1");
        assert_eq!(
            got[1].edit.key,
            MappingKey::Cluster {
                name: "viewers".into()
            }
        );
        assert_eq!(got[1].origin, "m.yaml, document 3");
    }

    #[test]
    fn what_the_api_server_would_refuse_is_an_error() {
        let doc = |body: &str| parse("f", body, "default").unwrap_err();
        let e = doc("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
        assert!(e.message.contains("not a mapping"), "{e}");
        let e = doc("apiVersion: scim.kubescim.io/v1alpha1\nkind: GroupRoleMapping\nmetadata: {name: x}\nspec: {groups: []}\n");
        assert!(e.message.contains("roleRef"), "{e}");
        let e = doc("apiVersion: scim.kubescim.io/v1alpha1\nkind: GroupRoleMapping\nmetadata: {name: x}\nspec: {groups: [{displayName: a}], roleRef: {kind: Cluster, name: edit}}\n");
        assert!(e.message.contains("unknown variant"), "{e}");
        let e = doc("apiVersion: scim.kubescim.io/v1alpha1\nkind: GroupRoleMapping\nmetadata: {name: Bad_Name}\nspec: {groups: [{displayName: a}], roleRef: {kind: Role, name: r}}\n");
        assert!(e.message.contains("not a valid name"), "{e}");
        let e = doc("apiVersion: scim.kubescim.io/v1alpha1\nkind: ClusterGroupRoleMapping\nmetadata: {name: x}\nspec: {groups: [{displayName: a}], clusterRoles: [view], namespaceRole: [{clusterRole: edit}]}\n");
        assert!(e.message.contains("spec.namespaceRole"), "{e}");
        assert_eq!(e.document, 1);
        let e = doc("apiVersion: scim.kubescim.io/v1alpha1\nkind: GroupRoleMapping\nmetadata: {name: x}\nspec: {groups: [{displayName: a}], roleRef: {kind: Role, name: r}, expiresAt: tomorrow}\n");
        assert!(e.message.contains("invalid GroupRoleMapping"), "{e}");
        let e = doc("a: [\n");
        assert_eq!(e.source_name, "f");
    }

    #[test]
    fn defaulted_fields_are_not_unknown() {
        let ok = parse(
            "f",
            "apiVersion: scim.kubescim.io/v1alpha1\nkind: ClusterGroupRoleMapping\nmetadata: {name: x}\nspec: {groups: [{displayName: a}], clusterRoles: [view], namespaceRoles: [], allowProtectedRoles: false}\n",
            "default",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
