//! The rules every stored resource satisfies, checked after a POST/PUT body is
//! normalised and after a PATCH is applied: the required name attribute, and no value
//! that could become an unsafe RBAC subject name (see [`check_subject_name`]).
use serde_json::{Map, Value};

use crate::crd::subject_name::{check_subject_name, UnsafeName};
use crate::scim::error::ScimError;
use crate::scim::schema::{self, get_ci, key_ci, AttributeDef, ResourceKind};

/// Most bytes of a stored resource's attributes (group members live elsewhere): Entra's
/// users are a few kB. Past it the client gets a clear 400 instead of the API server's
/// object-size error (which used to surface as a retryable 503).
pub const MAX_RESOURCE_BYTES: usize = 64 * 1024;

/// `Ok` when `map` (a normalised resource) may be stored.
pub fn check_resource(map: &Map<String, Value>, kind: ResourceKind) -> Result<(), ScimError> {
    check_change(None, map, kind)
}

/// Like [`check_resource`] for a PATCH from `before` to `after`: unsafe values already
/// stored (written before this check existed, or around the SCIM layer) don't block an
/// unrelated change, least of all a deactivation; the controller never binds them.
pub fn check_change(
    before: Option<&Map<String, Value>>,
    map: &Map<String, Value>,
    kind: ResourceKind,
) -> Result<(), ScimError> {
    let name = kind.required_name_attr();
    match get_ci(map, name) {
        Some((_, Value::String(s))) if !s.trim().is_empty() => {}
        _ => {
            return Err(ScimError::invalid_value(format!(
                "'{name}' is required and must be a non-empty string"
            )))
        }
    }
    let known_junk = before.map(|b| undeclared(b, kind)).unwrap_or_default();
    if let Some(u) = undeclared(map, kind)
        .into_iter()
        .find(|u| !known_junk.contains(u))
    {
        return Err(not_served(&u, kind));
    }
    let size: usize = map
        .iter()
        .filter(|(k, _)| !(kind == ResourceKind::Group && k.eq_ignore_ascii_case("members")))
        .map(|(k, v)| k.len() + serde_json::to_vec(v).map_or(0, |b| b.len()))
        .sum();
    if size > MAX_RESOURCE_BYTES {
        return Err(ScimError::invalid_value(format!(
            "the {} is {size} bytes of attributes; at most {MAX_RESOURCE_BYTES} are stored",
            kind.name()
        )));
    }
    for (attr, value) in subject_sources(map, kind) {
        // Empty optional values are treated as absent by the controller.
        if value.is_empty() && attr != name {
            continue;
        }
        if before.is_some_and(|b| subject_sources(b, kind).contains(&(attr, value))) {
            continue;
        }
        if let Err(why) = check_subject_name(value) {
            return Err(refused(attr, value, why));
        }
    }
    Ok(())
}

/// Something in a resource that no schema served for its type declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undeclared {
    /// A top-level key: an unknown attribute, or an extension (URN) that is not served.
    Top(String),
    /// A key inside a served extension's object.
    InExtension { ext: String, key: String },
    /// A sub-attribute of a complex attribute (of any of its values, if multi-valued).
    Sub {
        ext: Option<String>,
        attr: String,
        sub: String,
    },
}

impl Undeclared {
    /// The attribute path, as a client would write it.
    pub fn path(&self) -> String {
        match self {
            Undeclared::Top(k) => k.clone(),
            Undeclared::InExtension { ext, key } => format!("{ext}:{key}"),
            Undeclared::Sub {
                ext: Some(e),
                attr,
                sub,
            } => format!("{e}:{attr}.{sub}"),
            Undeclared::Sub {
                ext: None,
                attr,
                sub,
            } => format!("{attr}.{sub}"),
        }
    }
}

/// What in `map` (a resource's SCIM JSON: stored attributes or a rendered document) no
/// served schema of `kind` declares. `schemas`, `id` and `meta` are declared; `schemas`
/// entries are checked by [`served_schemas_only`].
pub fn undeclared(map: &Map<String, Value>, kind: ResourceKind) -> Vec<Undeclared> {
    let mut out = Vec::new();
    for (k, v) in map {
        if k.eq_ignore_ascii_case("schemas") {
            continue;
        }
        let served_ext = match schema::split_urn(k) {
            (Some(u), "") => kind.extension(u),
            _ => None,
        };
        if let Some(ext) = served_ext {
            if let Value::Object(o) = v {
                for (ak, av) in o {
                    match ext.attribute(ak) {
                        None => out.push(Undeclared::InExtension {
                            ext: k.clone(),
                            key: ak.clone(),
                        }),
                        Some(d) => undeclared_subs(d, av, Some(k), ak, &mut out),
                    }
                }
            }
            continue;
        }
        match kind
            .schema()
            .core
            .attribute(k)
            .or_else(|| schema::common_attribute(k))
        {
            None => out.push(Undeclared::Top(k.clone())),
            Some(d) => undeclared_subs(d, v, None, k, &mut out),
        }
    }
    out
}

fn undeclared_subs(
    def: &AttributeDef,
    v: &Value,
    ext: Option<&String>,
    attr: &str,
    out: &mut Vec<Undeclared>,
) {
    if !def.is_complex() {
        return;
    }
    let values: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(items) => Box::new(items.iter()),
        other => Box::new(std::iter::once(other)),
    };
    for value in values {
        let Value::Object(o) = value else { continue };
        for sk in o.keys() {
            if def.sub_attribute(sk).is_none() {
                let u = Undeclared::Sub {
                    ext: ext.cloned(),
                    attr: attr.to_string(),
                    sub: sk.clone(),
                };
                if !out.contains(&u) {
                    out.push(u);
                }
            }
        }
    }
}

/// Removes what [`undeclared`] finds, and `schemas` entries naming no served schema:
/// junk written before this check existed (or around the SCIM layer, with kubectl) is
/// never shown to a client, so it cannot break a strict client's parsing of a list.
pub fn strip_undeclared(map: &mut Map<String, Value>, kind: ResourceKind) {
    for u in undeclared(map, kind) {
        match u {
            Undeclared::Top(k) => {
                map.remove(&k);
            }
            Undeclared::InExtension { ext, key } => {
                if let Some(Value::Object(o)) = map.get_mut(&ext) {
                    o.remove(&key);
                }
                remove_if_empty(map, &ext);
            }
            Undeclared::Sub { ext, attr, sub } => {
                let container = match &ext {
                    None => Some(&mut *map),
                    Some(e) => map.get_mut(e).and_then(Value::as_object_mut),
                };
                let Some(c) = container else { continue };
                let strip = |v: &mut Value| {
                    if let Value::Object(o) = v {
                        o.remove(&sub);
                    }
                };
                match c.get_mut(&attr) {
                    Some(Value::Array(items)) => {
                        items.iter_mut().for_each(strip);
                        items.retain(|v| !v.as_object().is_some_and(Map::is_empty));
                    }
                    Some(v) => strip(v),
                    None => {}
                }
                remove_if_empty(c, &attr);
                if let Some(e) = &ext {
                    remove_if_empty(map, e);
                }
            }
        }
    }
    if let Some(k) = key_ci(map, "schemas") {
        if let Some(Value::Array(list)) = map.get_mut(&k) {
            served_schemas_only(list, kind);
        }
    }
}

fn remove_if_empty(m: &mut Map<String, Value>, key: &str) {
    let empty = match m.get(key) {
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    if empty {
        m.remove(key);
    }
}

/// Keeps the `schemas` entries that name a schema served for `kind` (and the marker URN
/// Entra puts on groups).
pub fn served_schemas_only(list: &mut Vec<Value>, kind: ResourceKind) {
    list.retain(|s| {
        s.as_str()
            .is_some_and(|urn| schema::is_served_schema(kind, urn))
    });
}

fn not_served(u: &Undeclared, kind: ResourceKind) -> ScimError {
    not_served_path(&u.path(), kind)
}

/// The refusal of an attribute path (as the client wrote it) that no schema served for
/// `kind` declares: 400 invalidSyntax naming it.
pub fn not_served_path(path: &str, kind: ResourceKind) -> ScimError {
    let shown: String = path.chars().take(200).collect();
    let ellipsis = if shown.len() < path.len() { "…" } else { "" };
    let served: Vec<&str> = std::iter::once(kind.core_urn())
        .chain(kind.schema().extensions.iter().map(|(u, _)| *u))
        .collect();
    ScimError::invalid_syntax(format!(
        "'{shown}'{ellipsis} is not an attribute of any schema served for {}s ({}); \
         see /Schemas (extension attributes are served when the operator is configured with them)",
        kind.name(),
        served.join(", ")
    ))
}

/// Every value the controller may turn into a subject name: userName, externalId and
/// email addresses of a User; displayName and externalId of a Group.
fn subject_sources(map: &Map<String, Value>, kind: ResourceKind) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    let single: &[&'static str] = match kind {
        ResourceKind::User => &["userName", "externalId"],
        ResourceKind::Group => &["displayName", "externalId"],
    };
    for attr in single {
        if let Some((_, Value::String(s))) = get_ci(map, attr) {
            out.push((*attr, s.as_str()));
        }
    }
    if kind == ResourceKind::User {
        if let Some((_, Value::Array(emails))) = get_ci(map, "emails") {
            for e in emails {
                if let Some(Value::String(v)) = e
                    .as_object()
                    .and_then(|o| get_ci(o, "value"))
                    .map(|(_, v)| v)
                {
                    out.push(("emails.value", v.as_str()));
                }
            }
        }
    }
    out
}

fn refused(attr: &str, value: &str, why: UnsafeName) -> ScimError {
    let shown: String = value.chars().take(64).collect();
    let ellipsis = if shown.len() < value.len() { "…" } else { "" };
    let hint = match why {
        UnsafeName::Reserved => {
            ": names starting with \"system:\" are Kubernetes' own identities and are never provisioned"
        }
        _ => ": such a value can never become a Kubernetes user or group name",
    };
    ScimError::invalid_value(format!("'{attr}' {shown:?}{ellipsis} {why}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use serde_json::json;

    fn check(kind: ResourceKind, doc: Value) -> Result<(), ScimError> {
        check_resource(doc.as_object().unwrap(), kind)
    }

    fn detail(e: ScimError) -> String {
        assert_eq!(e.scim_type(), Some(ScimType::InvalidValue));
        e.to_string()
    }

    #[test]
    fn ordinary_resources_pass() {
        check(
            ResourceKind::User,
            json!({"userName": "alice@contoso.com", "externalId": "", "emails": [{"value": "a@b.c"}, {"type": "work"}]}),
        )
        .unwrap();
        check(
            ResourceKind::Group,
            json!({"displayName": "Admins", "externalId": "0b6e"}),
        )
        .unwrap();
    }

    #[test]
    fn required_name_is_checked() {
        for doc in [json!({}), json!({"userName": " "}), json!({"userName": 3})] {
            assert!(detail(check(ResourceKind::User, doc).unwrap_err())
                .contains("'userName' is required"));
        }
        assert!(check(ResourceKind::Group, json!({"displayName": ""})).is_err());
    }

    #[test]
    fn reserved_names_are_refused_from_every_source() {
        let cases = [
            (
                ResourceKind::User,
                json!({"userName": "system:anonymous"}),
                "'userName'",
            ),
            (
                ResourceKind::User,
                json!({"USERNAME": "System:Masters"}),
                "'userName'",
            ),
            (
                ResourceKind::User,
                json!({"userName": "a", "externalId": "system:masters"}),
                "'externalId'",
            ),
            (
                ResourceKind::User,
                json!({"userName": "a", "emails": [{"value": "ok@x"}, {"Value": "system:authenticated"}]}),
                "'emails.value'",
            ),
            (
                ResourceKind::Group,
                json!({"displayName": "system:authenticated"}),
                "'displayName'",
            ),
            (
                ResourceKind::Group,
                json!({"displayName": "g", "externalId": "system:serviceaccounts"}),
                "'externalId'",
            ),
        ];
        for (kind, doc, attr) in cases {
            let d = detail(check(kind, doc.clone()).unwrap_err());
            assert!(d.contains(attr) && d.contains("system:"), "{doc}: {d}");
        }
    }

    #[test]
    fn oversize_resources_are_a_clear_400() {
        let big = "x".repeat(MAX_RESOURCE_BYTES);
        let d =
            detail(check(ResourceKind::User, json!({"userName": "a", "title": big})).unwrap_err());
        assert!(d.contains("at most 65536"), "{d}");
        // Members don't count: they are stored in shards.
        let members: Vec<Value> = (0..5_000)
            .map(|i| json!({"value": format!("member-{i:08}")}))
            .collect();
        check(
            ResourceKind::Group,
            json!({"displayName": "g", "members": members}),
        )
        .unwrap();
    }

    #[test]
    fn a_patch_is_refused_only_for_unsafe_values_it_brings() {
        let stored = json!({"userName": "system:anonymous", "active": true});
        let stored = stored.as_object().unwrap();
        let deactivated = json!({"userName": "system:anonymous", "active": false});
        check_change(
            Some(stored),
            deactivated.as_object().unwrap(),
            ResourceKind::User,
        )
        .unwrap();
        let renamed = json!({"userName": "alice", "externalId": "system:masters"});
        let d = detail(
            check_change(
                Some(stored),
                renamed.as_object().unwrap(),
                ResourceKind::User,
            )
            .unwrap_err(),
        );
        assert!(d.contains("'externalId'"), "{d}");
    }

    #[test]
    fn long_and_unprintable_names_are_refused_and_shown_short() {
        let long = "x".repeat(1000);
        let d = detail(check(ResourceKind::User, json!({"userName": long})).unwrap_err());
        assert!(d.contains("longer than 320") && d.len() < 300, "{d}");
        let d = detail(check(ResourceKind::Group, json!({"displayName": "a\u{0}b"})).unwrap_err());
        assert!(d.contains("control characters"), "{d}");
    }
}
