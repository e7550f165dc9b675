//! What a response contains (`attributes` / `excludedAttributes`, RFC 7644 §3.4.2.5 and
//! §3.9) and the sort order of list results (RFC 7644 §3.4.2.3).
//!
//! Decisions: `id` (returned "always") and `schemas` are always output; `meta` is a
//! default attribute, so with `attributes=...` it is only output when asked for (as in
//! the RFC 7644 §3.9 example). Attributes with returned "never" (`password`) are never
//! output, even when asked for. Unparseable names in `attributes`/`excludedAttributes`
//! are ignored (they name nothing). If both lists are given, `attributes` selects first
//! and `excludedAttributes` then removes.
use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

use crate::scim::error::ScimError;
use crate::scim::filter::{self, AttrPath};
use crate::scim::schema::{self, get_ci, key_ci, AttrType, AttributeDef, ResourceKind, Returned};
use crate::scim::validate::strip_undeclared;

/// Splits a comma-separated `attributes` / `excludedAttributes` query value.
pub fn parse_attr_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// A requested name: a whole extension object, or an attribute path.
enum Selector {
    Extension(String),
    Attr(AttrPath),
}

fn selector(name: &str) -> Option<Selector> {
    match schema::split_urn(name) {
        (Some(urn), "") => Some(Selector::Extension(urn.to_string())),
        _ => filter::parse_attr_path_token(name).ok().map(Selector::Attr),
    }
}

/// Applies `attributes` and `excludedAttributes` to a resource's SCIM JSON.
pub fn project(
    resource: &Value,
    kind: ResourceKind,
    attributes: &[String],
    excluded: &[String],
) -> Value {
    let Some(src) = resource.as_object() else {
        return resource.clone();
    };
    let mut out = if attributes.is_empty() {
        let mut all = src.clone();
        drop_returned(&mut all, kind, Returned::Request);
        all
    } else {
        let mut sel = Map::new();
        for name in ["schemas", "id"] {
            if let Some((k, v)) = get_ci(src, name) {
                sel.insert(k.clone(), v.clone());
            }
        }
        let mut picks = Vec::new();
        let mut whole_exts = Vec::new();
        for a in attributes {
            match selector(a) {
                Some(Selector::Extension(urn)) => whole_exts.push(urn),
                Some(Selector::Attr(p)) => add_pick(&mut picks, p),
                None => {}
            }
        }
        for pick in &picks {
            copy_pick(src, &mut sel, pick);
        }
        // After the picks, so a whole extension wins over parts of it.
        for urn in whole_exts {
            if let Some((k, v)) = get_ci(src, &urn) {
                sel.insert(k.clone(), v.clone());
            }
        }
        sel
    };
    for e in excluded {
        match selector(e) {
            Some(Selector::Extension(urn)) => {
                if let Some(k) = key_ci(&out, &urn) {
                    out.remove(&k);
                }
            }
            Some(Selector::Attr(p)) => {
                let always = schema::resolve_parts(kind, p.schema_urn.as_deref(), &p.attr, None)
                    .is_some_and(|r| r.attr.returned == Returned::Always);
                let is_schemas = p.schema_urn.is_none() && p.attr.eq_ignore_ascii_case("schemas");
                if !(always || is_schemas) {
                    remove_path(&mut out, &p);
                }
            }
            None => {}
        }
    }
    drop_returned(&mut out, kind, Returned::Never);
    // Whatever was stored before attributes were checked (or written with kubectl) is
    // not shown: a strict client must be able to parse every response.
    strip_undeclared(&mut out, kind);
    Value::Object(out)
}

/// The object holding `p`'s attribute (the resource, or its extension object).
fn container<'a>(m: &'a Map<String, Value>, p: &AttrPath) -> Option<&'a Map<String, Value>> {
    match &p.schema_urn {
        None => Some(m),
        Some(u) => get_ci(m, u)?.1.as_object(),
    }
}

fn container_mut<'a>(
    m: &'a mut Map<String, Value>,
    p: &AttrPath,
) -> Option<&'a mut Map<String, Value>> {
    match &p.schema_urn {
        None => Some(m),
        Some(u) => {
            let k = key_ci(m, u)?;
            m.get_mut(&k)?.as_object_mut()
        }
    }
}

/// One attribute to output: the whole value (`subs == None`) or some sub-attributes.
struct Pick {
    urn: Option<String>,
    attr: String,
    subs: Option<Vec<String>>,
}

fn add_pick(picks: &mut Vec<Pick>, p: AttrPath) {
    let same = |x: &Pick| {
        x.attr.eq_ignore_ascii_case(&p.attr)
            && match (&x.urn, &p.schema_urn) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
    };
    match picks.iter_mut().find(|x| same(x)) {
        Some(existing) => match (&mut existing.subs, p.sub_attr) {
            (Some(subs), Some(s)) => subs.push(s),
            (subs, None) => *subs = None,
            (None, Some(_)) => {}
        },
        None => picks.push(Pick {
            urn: p.schema_urn,
            attr: p.attr,
            subs: p.sub_attr.map(|s| vec![s]),
        }),
    }
}

/// Keeps only the `subs` members of a complex value (case-insensitive).
fn keep_subs(v: &Value, subs: &[String]) -> Option<Value> {
    let o = v.as_object()?;
    let m: Map<String, Value> = o
        .iter()
        .filter(|(k, _)| subs.iter().any(|s| s.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!m.is_empty()).then_some(Value::Object(m))
}

fn copy_pick(src: &Map<String, Value>, dst: &mut Map<String, Value>, pick: &Pick) {
    let c = match &pick.urn {
        None => Some(src),
        Some(u) => get_ci(src, u).and_then(|(_, v)| v.as_object()),
    };
    let Some((key, v)) = c.and_then(|c| get_ci(c, &pick.attr)) else {
        return;
    };
    let picked = match &pick.subs {
        None => v.clone(),
        Some(subs) => match v {
            Value::Array(items) => {
                let vals: Vec<Value> = items.iter().filter_map(|e| keep_subs(e, subs)).collect();
                if vals.is_empty() {
                    return;
                }
                Value::Array(vals)
            }
            other => match keep_subs(other, subs) {
                Some(v) => v,
                None => return,
            },
        },
    };
    let target = match &pick.urn {
        None => dst,
        Some(u) => {
            let ek = get_ci(src, u).map_or_else(|| u.clone(), |(k, _)| k.clone());
            match dst
                .entry(ek)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
            {
                Some(m) => m,
                None => return,
            }
        }
    };
    target.insert(key.clone(), picked);
}

fn remove_path(out: &mut Map<String, Value>, p: &AttrPath) {
    let Some(c) = container_mut(out, p) else {
        return;
    };
    let Some(key) = key_ci(c, &p.attr) else {
        return;
    };
    match &p.sub_attr {
        None => {
            c.remove(&key);
        }
        Some(sub) => {
            let strip = |e: &mut Value| {
                if let Value::Object(o) = e {
                    if let Some(k) = key_ci(o, sub) {
                        o.remove(&k);
                    }
                }
            };
            match c.get_mut(&key) {
                Some(Value::Array(items)) => items.iter_mut().for_each(strip),
                Some(v) => strip(v),
                None => {}
            }
        }
    }
    if let Some(urn) = &p.schema_urn {
        if let Some(k) = key_ci(out, urn) {
            if out
                .get(&k)
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                out.remove(&k);
            }
        }
    }
}

/// Removes attributes (and sub-attributes) whose `returned` is `which`.
fn drop_returned(m: &mut Map<String, Value>, kind: ResourceKind, which: Returned) {
    let schema = kind.schema();
    strip_defs(m, &schema.core.attributes, which);
    for (urn, _) in schema.extensions {
        if let (Some(k), Some(ext)) = (key_ci(m, urn), schema::schema_def(urn)) {
            if let Some(Value::Object(o)) = m.get_mut(&k) {
                strip_defs(o, &ext.attributes, which);
            }
        }
    }
}

fn strip_defs(m: &mut Map<String, Value>, defs: &[AttributeDef], which: Returned) {
    for d in defs {
        let Some(k) = key_ci(m, d.name) else { continue };
        if d.returned == which {
            m.remove(&k);
            continue;
        }
        if d.sub_attributes.iter().any(|s| s.returned == which) {
            match m.get_mut(&k) {
                Some(Value::Object(o)) => strip_defs(o, &d.sub_attributes, which),
                Some(Value::Array(items)) => {
                    for e in items.iter_mut() {
                        if let Value::Object(o) = e {
                            strip_defs(o, &d.sub_attributes, which);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sorting
// ---------------------------------------------------------------------------------------

/// A comparable sort value. Strings of caseExact=false attributes are lower-cased.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Bool(bool),
    Num(f64),
    Date(DateTime<FixedOffset>),
    Str(String),
}

impl SortKey {
    fn rank(&self) -> u8 {
        match self {
            SortKey::Bool(_) => 0,
            SortKey::Num(_) => 1,
            SortKey::Date(_) => 2,
            SortKey::Str(_) => 3,
        }
    }

    fn cmp_same(&self, other: &SortKey) -> Ordering {
        match (self, other) {
            (SortKey::Bool(a), SortKey::Bool(b)) => a.cmp(b),
            (SortKey::Num(a), SortKey::Num(b)) => a.total_cmp(b),
            (SortKey::Date(a), SortKey::Date(b)) => a.cmp(b),
            (SortKey::Str(a), SortKey::Str(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Checks a `sortBy` value: valid attribute notation, not a never-returned attribute,
/// not a single-valued complex attribute without sub-attribute, and a known attribute
/// unless it is qualified with an extension URN we do not model. Errors: `invalidValue`.
pub fn validate_sort_by(kind: ResourceKind, sort_by: &str) -> Result<(), ScimError> {
    let p = filter::parse_attr_path_token(sort_by.trim())
        .map_err(|m| ScimError::invalid_value(format!("invalid sortBy: {m}")))?;
    let resolved = schema::resolve_parts(
        kind,
        p.schema_urn.as_deref(),
        &p.attr,
        p.sub_attr.as_deref(),
    );
    match resolved {
        None if p
            .schema_urn
            .as_deref()
            .is_some_and(|u| kind.extension(u).is_none()) =>
        {
            Ok(())
        }
        None => Err(ScimError::invalid_value(format!(
            "sortBy: unknown attribute '{sort_by}'"
        ))),
        Some(r) => {
            let leaf = r.leaf();
            if r.attr.returned == Returned::Never || leaf.returned == Returned::Never {
                return Err(ScimError::invalid_value(format!(
                    "cannot sort by '{sort_by}'"
                )));
            }
            if leaf.is_complex() && !(leaf.multi_valued && leaf.sub_attribute("value").is_some()) {
                return Err(ScimError::invalid_value(format!(
                    "sortBy '{sort_by}' is complex; name a sub-attribute"
                )));
            }
            Ok(())
        }
    }
}

/// The value `resource` sorts by (`None` if missing). Multi-valued attributes use the
/// primary value, else the first (RFC 7644 §3.4.2.3).
pub fn sort_key(resource: &Value, kind: ResourceKind, sort_by: &str) -> Option<SortKey> {
    let p = filter::parse_attr_path_token(sort_by.trim()).ok()?;
    let def = schema::resolve_parts(
        kind,
        p.schema_urn.as_deref(),
        &p.attr,
        p.sub_attr.as_deref(),
    );
    let mut leaf = def.map(|r| r.leaf());
    let c = container(resource.as_object()?, &p)?;
    let v = get_ci(c, &p.attr)?.1;
    let chosen = match v {
        Value::Array(items) => {
            let prim = items.iter().find(|e| {
                e.as_object()
                    .and_then(|o| get_ci(o, "primary"))
                    .is_some_and(|(_, p)| *p == true)
            });
            prim.or_else(|| items.first())?
        }
        other => other,
    };
    let scalar = match (&p.sub_attr, chosen) {
        (Some(sub), Value::Object(o)) => get_ci(o, sub)?.1,
        (None, Value::Object(o)) => {
            leaf = leaf.and_then(|d| d.sub_attribute("value"));
            get_ci(o, "value")?.1
        }
        (Some(_), _) => return None,
        (None, other) => other,
    };
    to_key(scalar, leaf)
}

fn to_key(v: &Value, def: Option<&AttributeDef>) -> Option<SortKey> {
    match v {
        Value::Bool(b) => Some(SortKey::Bool(*b)),
        Value::Number(n) => n.as_f64().map(SortKey::Num),
        Value::String(s) => {
            if def.is_some_and(|d| d.ty == AttrType::DateTime) {
                if let Some(d) = filter::parse_datetime(s) {
                    return Some(SortKey::Date(d));
                }
            }
            if def.is_some_and(|d| d.case_exact) {
                Some(SortKey::Str(s.clone()))
            } else {
                Some(SortKey::Str(s.to_lowercase()))
            }
        }
        _ => None,
    }
}

/// Orders two sort keys. Missing values come last when ascending and first when
/// descending (the order is simply reversed).
pub fn compare_sort_keys(a: Option<&SortKey>, b: Option<&SortKey>, descending: bool) -> Ordering {
    let ord = match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp_same(y),
    };
    if descending {
        ord.reverse()
    } else {
        ord
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use serde_json::json;

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
    const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

    fn user() -> Value {
        json!({
            "schemas": [USER, ENT],
            "id": "u1",
            "externalId": "e1",
            "userName": "bjensen",
            "password": "leaked?",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [
                {"value": "b@work", "type": "work", "primary": true},
                {"value": "b@home", "type": "home"}
            ],
            "meta": {"resourceType": "User", "version": "W/\"1\""},
            ENT: {"employeeNumber": "42", "department": "R&D", "manager": {"value": "m1"}},
            "urn:acme:ext:1.0:User": {"badge": "7"}
        })
    }

    fn proj(attrs: &str, excl: &str) -> Value {
        project(
            &user(),
            ResourceKind::User,
            &parse_attr_list(attrs),
            &parse_attr_list(excl),
        )
    }

    #[test]
    fn attr_list_parsing() {
        assert_eq!(
            parse_attr_list("userName, name.givenName ,,emails"),
            vec!["userName", "name.givenName", "emails"]
        );
        assert!(parse_attr_list("").is_empty());
        assert!(parse_attr_list(" , ").is_empty());
    }

    #[test]
    fn default_projection_hides_password_only() {
        let mut want = user();
        want.as_object_mut().unwrap().remove("password");
        // An unserved extension stored before attributes were checked is not shown.
        want.as_object_mut()
            .unwrap()
            .remove("urn:acme:ext:1.0:User");
        assert_eq!(proj("", ""), want);
        // Never returned even when asked for.
        assert!(proj("password", "").get("password").is_none());
        // Non-object input is returned as is.
        assert_eq!(
            project(&json!("x"), ResourceKind::User, &[], &[]),
            json!("x")
        );
    }

    #[test]
    fn attributes_selects_plus_id_and_schemas() {
        assert_eq!(
            proj("userName", ""),
            json!({"schemas": [USER, ENT], "id": "u1", "userName": "bjensen"})
        );
        assert_eq!(proj("USERNAME", "")["userName"], "bjensen");
        assert_eq!(
            proj("name.givenName,emails.value", ""),
            json!({"schemas": [USER, ENT], "id": "u1", "name": {"givenName": "Barbara"},
                   "emails": [{"value": "b@work"}, {"value": "b@home"}]})
        );
        assert_eq!(
            proj("emails.value,emails.type", "")["emails"],
            json!([{"value": "b@work", "type": "work"}, {"value": "b@home", "type": "home"}])
        );
        assert_eq!(proj("name.givenName,name", "")["name"], user()["name"]);
        assert_eq!(proj("meta", "")["meta"], user()["meta"]);
        assert!(proj("userName", "").get("meta").is_none());
        assert_eq!(
            proj("nonexistent,1bad,", ""),
            json!({"schemas": [USER, ENT], "id": "u1"})
        );
    }

    #[test]
    fn attributes_with_urns() {
        assert_eq!(
            proj(&format!("{ENT}:employeeNumber"), "")[ENT],
            json!({"employeeNumber": "42"})
        );
        assert_eq!(
            proj(&format!("{ENT}:manager.value"), "")[ENT],
            json!({"manager": {"value": "m1"}})
        );
        assert_eq!(proj(ENT, "")[ENT], user()[ENT]);
        assert_eq!(
            proj(&format!("{ENT},{ENT}:employeeNumber"), "")[ENT],
            user()[ENT]
        );
        assert_eq!(proj(&ENT.to_uppercase(), "")[ENT], user()[ENT]);
        assert_eq!(
            proj("urn:ietf:params:scim:schemas:core:2.0:User:userName", "")["userName"],
            "bjensen"
        );
        assert!(proj("urn:acme:ext:1.0:User:badge", "")
            .get("urn:acme:ext:1.0:User")
            .is_none());
        assert!(proj(&format!("{ENT}:costCenter"), "").get(ENT).is_none());
    }

    #[test]
    fn junk_stored_earlier_is_never_shown() {
        let stored = json!({
            "schemas": [USER, "urn:acme:ext:1.0:User", ENT, "urn:x", 5],
            "id": "u1",
            "userName": "b",
            "favouriteColour": "blue",
            "name": {"givenName": "B", "nickname": "bb"},
            "emails": [{"value": "b@x", "label": "l"}, {"value": "c@x"}],
            "urn:acme:ext:1.0:User": {"badge": "7"},
            ENT: {"department": "D", "shoeSize": 44, "manager": {"value": "m", "x": 1}},
            "meta": {"resourceType": "User"}
        });
        let want = json!({
            "schemas": [USER, ENT],
            "id": "u1",
            "userName": "b",
            "name": {"givenName": "B"},
            "emails": [{"value": "b@x"}, {"value": "c@x"}],
            ENT: {"department": "D", "manager": {"value": "m"}},
            "meta": {"resourceType": "User"}
        });
        assert_eq!(project(&stored, ResourceKind::User, &[], &[]), want);
        let picked = project(
            &stored,
            ResourceKind::User,
            &parse_attr_list("favouriteColour,name.nickname,urn:acme:ext:1.0:User"),
            &[],
        );
        assert_eq!(picked, json!({"schemas": [USER, ENT], "id": "u1"}));
        // Groups: user attributes and the enterprise extension are junk there.
        let group = json!({"schemas": [GROUP, USER], "id": "g", "displayName": "G",
                           "emails": [{"value": "x"}], ENT: {"department": "D"},
                           "members": [{"value": "u1", "type": "User", "$ref": "r", "extra": 1}]});
        assert_eq!(
            project(&group, ResourceKind::Group, &[], &[]),
            json!({"schemas": [GROUP], "id": "g", "displayName": "G",
                   "members": [{"value": "u1", "type": "User", "$ref": "r"}]})
        );
    }

    #[test]
    fn served_extensions_are_shown() {
        let custom = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";
        let _served =
            crate::scim::extensions::serve_in_this_thread(&[&format!("{custom}:costCode")]);
        let stored = json!({"schemas": [USER, custom], "id": "u1", "userName": "b",
                            custom: {"costCode": "C1", "other": "junk"}});
        assert_eq!(
            project(&stored, ResourceKind::User, &[], &[]),
            json!({"schemas": [USER, custom], "id": "u1", "userName": "b",
                   custom: {"costCode": "C1"}})
        );
    }

    #[test]
    fn excluded_attributes() {
        let v = proj("", "emails,name.familyName,meta");
        assert!(v.get("emails").is_none() && v.get("meta").is_none());
        assert_eq!(v["name"], json!({"givenName": "Barbara"}));
        assert_eq!(v["userName"], "bjensen");
        // id and schemas can't be excluded.
        let v = proj("", "id,schemas,userName");
        assert_eq!(v["id"], "u1");
        assert!(v.get("schemas").is_some());
        assert!(v.get("userName").is_none());
        let v = proj("", ENT);
        assert!(v.get(ENT).is_none());
        let v = proj("", &format!("{ENT}:employeeNumber"));
        assert_eq!(
            v[ENT],
            json!({"department": "R&D", "manager": {"value": "m1"}})
        );
        let v = proj(
            "",
            &format!("{ENT}:employeeNumber,{ENT}:department,{ENT}:manager"),
        );
        assert!(v.get(ENT).is_none(), "empty extension object dropped");
        let v = proj("", "emails.type");
        assert_eq!(
            v["emails"],
            json!([{"value": "b@work", "primary": true}, {"value": "b@home"}])
        );
        let v = proj("userName,emails", "emails");
        assert!(v.get("emails").is_none());
        assert_eq!(v["userName"], "bjensen");
    }

    #[test]
    fn group_projection_keeps_members_by_default() {
        let g = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g", "displayName": "G",
                       "members": [{"value": "u1"}]});
        assert_eq!(project(&g, ResourceKind::Group, &[], &[]), g);
        let v = project(&g, ResourceKind::Group, &[], &["members".into()]);
        assert!(v.get("members").is_none());
        let v = project(&g, ResourceKind::Group, &["displayName".into()], &[]);
        assert!(v.get("members").is_none());
    }

    fn key(r: &Value, by: &str) -> Option<SortKey> {
        sort_key(r, ResourceKind::User, by)
    }

    #[test]
    fn sort_keys() {
        let u = user();
        assert_eq!(key(&u, "userName"), Some(SortKey::Str("bjensen".into())));
        assert_eq!(
            key(&u, "name.givenName"),
            Some(SortKey::Str("barbara".into()))
        );
        assert_eq!(key(&u, "externalId"), Some(SortKey::Str("e1".into())));
        assert_eq!(key(&u, "emails"), Some(SortKey::Str("b@work".into())));
        assert_eq!(key(&u, "emails.type"), Some(SortKey::Str("work".into())));
        assert_eq!(
            key(&u, &format!("{ENT}:employeeNumber")),
            Some(SortKey::Str("42".into()))
        );
        assert_eq!(key(&u, "title"), None);
        assert_eq!(key(&u, "bad path!"), None);
        let mixed = json!({"userName": "ZED", "emails": [{"value": "a@x"}, {"value": "z@x", "primary": true}],
                           "active": false, "meta": {"created": "2020-01-01T00:00:00+02:00"}, "n": 3});
        assert_eq!(key(&mixed, "userName"), Some(SortKey::Str("zed".into())));
        assert_eq!(
            key(&mixed, "emails.value"),
            Some(SortKey::Str("z@x".into()))
        );
        assert_eq!(key(&mixed, "active"), Some(SortKey::Bool(false)));
        assert_eq!(key(&mixed, "n"), Some(SortKey::Num(3.0)));
        assert!(matches!(
            key(&mixed, "meta.created"),
            Some(SortKey::Date(_))
        ));
        let first = json!({"emails": [{"value": "M@x"}, {"value": "b@x"}]});
        assert_eq!(key(&first, "emails"), Some(SortKey::Str("m@x".into())));
    }

    #[test]
    fn sort_order_and_missing_values() {
        let rs = [
            json!({"userName": "b"}),
            json!({"userName": "A"}),
            json!({}),
            json!({"userName": "c"}),
        ];
        let mut asc: Vec<&Value> = rs.iter().collect();
        asc.sort_by(|a, b| {
            compare_sort_keys(
                key(a, "userName").as_ref(),
                key(b, "userName").as_ref(),
                false,
            )
        });
        let names: Vec<_> = asc.iter().map(|r| r.get("userName").cloned()).collect();
        assert_eq!(
            names,
            vec![Some(json!("A")), Some(json!("b")), Some(json!("c")), None]
        );
        let mut desc: Vec<&Value> = rs.iter().collect();
        desc.sort_by(|a, b| {
            compare_sort_keys(
                key(a, "userName").as_ref(),
                key(b, "userName").as_ref(),
                true,
            )
        });
        let names: Vec<_> = desc.iter().map(|r| r.get("userName").cloned()).collect();
        assert_eq!(
            names,
            vec![None, Some(json!("c")), Some(json!("b")), Some(json!("A"))]
        );
        // caseExact attributes sort case-sensitively ("B" < "a").
        let x = key(&json!({"externalId": "a"}), "externalId");
        let y = key(&json!({"externalId": "B"}), "externalId");
        assert_eq!(
            compare_sort_keys(y.as_ref(), x.as_ref(), false),
            Ordering::Less
        );
        // Booleans: false before true. Dates as instants.
        assert_eq!(
            compare_sort_keys(
                Some(&SortKey::Bool(false)),
                Some(&SortKey::Bool(true)),
                false
            ),
            Ordering::Less
        );
        let d1 = key(
            &json!({"meta": {"created": "2020-01-01T01:00:00+02:00"}}),
            "meta.created",
        );
        let d2 = key(
            &json!({"meta": {"created": "2020-01-01T00:00:00Z"}}),
            "meta.created",
        );
        assert_eq!(
            compare_sort_keys(d1.as_ref(), d2.as_ref(), false),
            Ordering::Less
        );
        assert_eq!(compare_sort_keys(None, None, true), Ordering::Equal);
    }

    #[test]
    fn sort_by_validation() {
        for ok in [
            "userName",
            "name.givenName",
            "emails",
            "emails.value",
            "meta.lastModified",
            "id",
            &format!("{ENT}:employeeNumber"),
            &format!("{}:EMPLOYEENUMBER", ENT.to_uppercase()),
            "urn:acme:ext:1.0:User:badge",
            "active",
        ] {
            validate_sort_by(ResourceKind::User, ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for bad in [
            "password",
            "bogus",
            "1bad",
            "name",
            "",
            "emails[type eq \"work\"]",
            &format!("{ENT}:nope"),
        ] {
            let e = validate_sort_by(ResourceKind::User, bad).expect_err(bad);
            assert_eq!(e.scim_type(), Some(ScimType::InvalidValue), "{bad}");
        }
        validate_sort_by(ResourceKind::Group, "displayName").unwrap();
        assert!(validate_sort_by(ResourceKind::Group, "userName").is_err());
    }
}
