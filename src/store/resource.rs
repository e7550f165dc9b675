//! ScimUser / ScimGroup objects <-> SCIM JSON. The stored form of a resource is its
//! SCIM attributes without `id` and `meta` (those come from object metadata).
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Map, Value};

use super::{CREATED_ANNOTATION, LAST_MODIFIED_ANNOTATION, VERSION_ANNOTATION};
use crate::crd::membership::{scim_type, MemberKind};
use crate::crd::{Member, ScimGroup, ScimGroupSpec, ScimUser, ScimUserSpec};
use crate::scim::error::ScimError;
use crate::scim::schema::{GROUP_SCHEMA, USER_SCHEMA};

/// SCIM `meta` of a stored resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceMeta {
    pub created: String,
    pub last_modified: String,
    pub version: u64,
}

impl ResourceMeta {
    pub fn of(meta: &ObjectMeta) -> ResourceMeta {
        let ann = meta.annotations.as_ref();
        let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
        let fallback = meta
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let created = get(CREATED_ANNOTATION).unwrap_or_else(|| fallback.clone());
        ResourceMeta {
            last_modified: get(LAST_MODIFIED_ANNOTATION).unwrap_or_else(|| created.clone()),
            created,
            version: get(VERSION_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        }
    }

    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    pub fn to_json(&self, resource_type: &str, location: &str) -> Value {
        json!({
            "resourceType": resource_type,
            "created": self.created,
            "lastModified": self.last_modified,
            "location": location,
            "version": self.etag(),
        })
    }
}

/// Now, as SCIM timestamps are written (RFC 3339, milliseconds, UTC).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Set the SCIM meta annotations for a write that makes version `version`.
pub fn stamp(meta: &mut ObjectMeta, version: u64, created: Option<&str>) {
    let now = now_rfc3339();
    let ann = meta.annotations.get_or_insert_with(BTreeMap::new);
    if let Some(c) = created {
        ann.insert(CREATED_ANNOTATION.into(), c.to_string());
    } else if !ann.contains_key(CREATED_ANNOTATION) {
        ann.insert(CREATED_ANNOTATION.into(), now.clone());
    }
    ann.insert(LAST_MODIFIED_ANNOTATION.into(), now);
    ann.insert(VERSION_ANNOTATION.into(), version.to_string());
}

fn id_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn to_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The stored attributes of a user.
pub fn user_attributes(u: &ScimUser) -> Map<String, Value> {
    to_map(serde_json::to_value(&u.spec).unwrap_or(Value::Null))
}

/// A user spec from normalised attributes.
pub fn user_spec(attrs: Map<String, Value>) -> Result<ScimUserSpec, ScimError> {
    serde_json::from_value(Value::Object(attrs))
        .map_err(|e| ScimError::invalid_value(format!("invalid User: {e}")))
}

/// Make `schemas` list the core schema and every extension object present. Resources
/// written through SCIM already do (see `normalize_resource`); objects written with
/// kubectl or GitOps often have no `schemas` at all, and RFC 7643 §3 requires it (clients
/// such as scim2-tester tell Users from Groups by it). Only ever adds, so what a client
/// wrote reads back unchanged.
fn ensure_schemas(m: &mut Map<String, Value>, core: &str) {
    let extensions: Vec<String> = m
        .iter()
        .filter(|(k, v)| {
            v.is_object() && k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
        })
        .map(|(k, _)| k.clone())
        .collect();
    let key = m
        .keys()
        .find(|k| k.eq_ignore_ascii_case("schemas"))
        .cloned()
        .unwrap_or_else(|| "schemas".to_string());
    let mut list: Vec<Value> = match m.remove(&key) {
        Some(Value::Array(a)) => a.into_iter().filter(Value::is_string).collect(),
        _ => Vec::new(),
    };
    let listed = |list: &[Value], urn: &str| {
        list.iter()
            .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)))
    };
    if !listed(&list, core) {
        list.insert(0, json!(core));
    }
    for e in extensions {
        if !listed(&list, &e) {
            list.push(json!(e));
        }
    }
    m.insert(key, Value::Array(list));
}

/// The SCIM JSON of a user, as clients see it.
pub fn user_json(u: &ScimUser, base_url: &str) -> Value {
    let mut m = user_attributes(u);
    ensure_schemas(&mut m, USER_SCHEMA);
    let id = id_of(&u.metadata);
    m.insert("id".into(), json!(id));
    let location = format!("{base_url}/Users/{id}");
    m.insert(
        "meta".into(),
        ResourceMeta::of(&u.metadata).to_json("User", &location),
    );
    Value::Object(m)
}

/// The SCIM JSON of a user reduced to the top-level attributes for which `keep` holds
/// (given the attribute name as stored; `keep` should compare case-insensitively): the
/// same keys, values and order as in [`user_json`], without rendering the rest. Used to
/// evaluate a filter or read a sort key on every user cheaply. `schemas` is only ever
/// complete in the full document, so asking for it renders that.
pub fn user_json_fields(u: &ScimUser, base_url: &str, keep: impl Fn(&str) -> bool) -> Value {
    if keep("schemas") {
        let Value::Object(full) = user_json(u, base_url) else {
            return Value::Null;
        };
        return Value::Object(full.into_iter().filter(|(k, _)| keep(k)).collect());
    }
    let mut m = Map::new();
    let spec = &u.spec;
    // The typed fields as `ScimUserSpec` serialises them, then the flattened rest.
    if keep("userName") {
        m.insert("userName".into(), json!(spec.user_name));
    }
    if let Some(e) = spec.external_id.as_ref().filter(|_| keep("externalId")) {
        m.insert("externalId".into(), json!(e));
    }
    if let Some(d) = spec.display_name.as_ref().filter(|_| keep("displayName")) {
        m.insert("displayName".into(), json!(d));
    }
    if let Some(a) = spec.active.filter(|_| keep("active")) {
        m.insert("active".into(), json!(a));
    }
    for (k, v) in spec.attributes.iter().filter(|(k, _)| keep(k)) {
        m.insert(k.clone(), v.clone());
    }
    let id = id_of(&u.metadata);
    if keep("id") {
        m.insert("id".into(), json!(id));
    }
    if keep("meta") {
        let location = format!("{base_url}/Users/{id}");
        m.insert(
            "meta".into(),
            ResourceMeta::of(&u.metadata).to_json("User", &location),
        );
    }
    Value::Object(m)
}

/// [`group_json`] reduced to the top-level attributes for which `keep` holds (see
/// [`user_json_fields`]); `members` only when given and kept.
pub fn group_json_fields(
    g: &ScimGroup,
    members: Option<&Members>,
    base_url: &str,
    keep: impl Fn(&str) -> bool,
) -> Value {
    if keep("schemas") {
        let Value::Object(full) = group_json(g, members, base_url) else {
            return Value::Null;
        };
        return Value::Object(full.into_iter().filter(|(k, _)| keep(k)).collect());
    }
    let mut m = Map::new();
    let spec = &g.spec;
    if keep("displayName") {
        m.insert("displayName".into(), json!(spec.display_name));
    }
    if let Some(e) = spec.external_id.as_ref().filter(|_| keep("externalId")) {
        m.insert("externalId".into(), json!(e));
    }
    for (k, v) in spec
        .attributes
        .iter()
        .filter(|(k, _)| keep(k) && *k != "members" && *k != "sharded")
    {
        m.insert(k.clone(), v.clone());
    }
    let full = group_json_tail(g, members.filter(|_| keep("members")), base_url);
    for (k, v) in full.into_iter().filter(|(k, _)| keep(k)) {
        m.insert(k, v);
    }
    Value::Object(m)
}

/// What [`group_json`] adds to the stored attributes: id, members (when given), meta.
fn group_json_tail(g: &ScimGroup, members: Option<&Members>, base_url: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let id = id_of(&g.metadata);
    m.insert("id".into(), json!(id));
    if let Some(members) = members {
        let list: Vec<Value> = members
            .iter()
            .map(|(value, kind)| {
                let endpoint = match MemberKind::of(kind.as_deref()) {
                    MemberKind::Group => "Groups",
                    MemberKind::User | MemberKind::Other => "Users",
                };
                let kind = scim_type(kind.as_deref());
                json!({"value": value, "$ref": format!("{base_url}/{endpoint}/{value}"), "type": kind})
            })
            .collect();
        m.insert("members".into(), Value::Array(list));
    }
    let location = format!("{base_url}/Groups/{id}");
    m.insert(
        "meta".into(),
        ResourceMeta::of(&g.metadata).to_json("Group", &location),
    );
    m
}

/// The stored attributes of a group, without members.
pub fn group_attributes(g: &ScimGroup) -> Map<String, Value> {
    let mut m = to_map(serde_json::to_value(&g.spec).unwrap_or(Value::Null));
    m.remove("members");
    m.remove("sharded");
    m
}

/// A group spec from normalised attributes (without members) plus inline members.
pub fn group_spec(
    mut attrs: Map<String, Value>,
    members: Vec<Member>,
    sharded: bool,
) -> Result<ScimGroupSpec, ScimError> {
    attrs.remove("members");
    attrs.remove("sharded");
    let mut spec: ScimGroupSpec = serde_json::from_value(Value::Object(attrs))
        .map_err(|e| ScimError::invalid_value(format!("invalid Group: {e}")))?;
    spec.members = members;
    spec.sharded = sharded;
    Ok(spec)
}

/// Membership as the engine works on it: id -> type.
pub type Members = BTreeMap<String, Option<String>>;

pub fn members_to_vec(m: &Members) -> Vec<Member> {
    m.iter()
        .map(|(value, kind)| Member {
            value: value.clone(),
            kind: kind.clone(),
        })
        .collect()
}

pub fn members_from_slice(v: &[Member]) -> Members {
    v.iter()
        .map(|m| (m.value.clone(), m.kind.clone()))
        .collect()
}

/// The SCIM JSON of a group; `members` only when given (it can be 50,000 entries).
pub fn group_json(g: &ScimGroup, members: Option<&Members>, base_url: &str) -> Value {
    let mut m = group_attributes(g);
    ensure_schemas(&mut m, GROUP_SCHEMA);
    m.extend(group_json_tail(g, members, base_url));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_round_trips_unknown_attributes() {
        let attrs = to_map(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "a@b.c", "active": false,
            "name": {"givenName": "A"},
            "urn:example:custom": {"x": 1}
        }));
        let spec = user_spec(attrs.clone()).unwrap();
        assert_eq!(spec.user_name, "a@b.c");
        assert!(!spec.is_active());
        let u = ScimUser::new("id1", spec);
        let back = user_attributes(&u);
        assert_eq!(Value::Object(back), Value::Object(attrs));
        let j = user_json(&u, "http://h/scim/v2");
        assert_eq!(j["id"], "id1");
        assert_eq!(j["meta"]["location"], "http://h/scim/v2/Users/id1");
        assert_eq!(j["meta"]["version"], "W/\"1\"");
    }

    #[test]
    fn hand_written_objects_get_schemas() {
        // A ScimUser applied with kubectl: no `schemas`.
        let spec = user_spec(to_map(json!({
            "userName": "a",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "D"},
            "urn:not-an-extension": "scalar"
        })))
        .unwrap();
        let j = user_json(&ScimUser::new("u", spec), "b");
        assert_eq!(
            j["schemas"],
            json!([
                USER_SCHEMA,
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
            ])
        );
        let g = ScimGroup::new(
            "g",
            group_spec(to_map(json!({"displayName": "G"})), vec![], false).unwrap(),
        );
        assert_eq!(group_json(&g, None, "b")["schemas"], json!([GROUP_SCHEMA]));
        // What a SCIM client wrote is left as it is (order, extra URNs).
        let sent = json!([
            GROUP_SCHEMA,
            "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"
        ]);
        let g = ScimGroup::new(
            "g",
            group_spec(
                to_map(json!({"displayName": "G", "schemas": sent})),
                vec![],
                false,
            )
            .unwrap(),
        );
        assert_eq!(group_json(&g, None, "b")["schemas"], sent);
    }

    #[test]
    fn group_json_renders_members_only_when_asked() {
        let spec = group_spec(to_map(json!({"displayName": "G"})), vec![], false).unwrap();
        let g = ScimGroup::new("g1", spec);
        assert!(group_json(&g, None, "b").get("members").is_none());
        let mut m = Members::new();
        m.insert("u1".into(), None);
        assert_eq!(group_json(&g, Some(&m), "b")["members"][0]["value"], "u1");
        assert_eq!(
            group_json(&g, Some(&Members::new()), "b")["members"],
            json!([])
        );
    }
}
