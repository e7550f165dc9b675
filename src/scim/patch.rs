//! PATCH (RFC 7644 §3.5.2) as Entra ID and Okta really send it, plus normalisation of
//! POST/PUT bodies. Pure functions on SCIM JSON.
//!
//! Decisions where the RFC is silent or clients deviate:
//! * `schemas` must list the PatchOp URN and `Operations` must be a non-empty array
//!   (both RFC MUSTs; Entra and Okta comply) → otherwise `invalidSyntax`. Member names
//!   (`Operations`, `op`, `path`, `value`) and `op` values are case-insensitive; an empty
//!   `path` is the same as none.
//! * `value: null` on add/replace, and null attributes inside a written object, unassign
//!   (RFC 7643 §2.5: null and unassigned are the same state).
//! * Read-only attributes (`id`, `meta`, `groups`, `manager.displayName`…) named by an
//!   explicit `path` fail with `mutability`; inside a path-less value (and in POST/PUT
//!   bodies) they are ignored, as RFC 7644 §3.3 prescribes for POST. `schemas` keys in a
//!   path-less value are ignored (we maintain `schemas` ourselves).
//! * `password` is accepted and dropped: the server neither stores nor checks passwords
//!   (ServiceProviderConfig says changePassword is unsupported).
//! * A filtered add/replace that matches no element creates one when the filter is a
//!   conjunction of `sub eq literal` (Entra's `emails[type eq "work"].value` on a user
//!   without a work email); otherwise it fails with `noTarget` as the RFC says.
//! * Remove of something absent succeeds (idempotent retries).
//! * replace on a single-valued complex attribute merges sub-attributes (RFC 7644
//!   §3.5.2.3), except when the new value carries `value` (e.g. `manager`): then the
//!   whole object is replaced, since `$ref`/`displayName` belong to the old value.
//! * Canonical values (`emails.type` etc.) are not enforced: Entra maps custom values.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::crd::membership::scim_type;
use crate::scim::error::ScimError;
use crate::scim::filter::{self, AttrPath, CompValue, CompareOp, Filter};
use crate::scim::path::{self, PatchPath};
use crate::scim::schema::{
    self, get_ci, key_ci, AttrType, AttributeDef, Mutability, ResourceKind, PATCH_OP_SCHEMA,
};
use crate::scim::validate::{check_change, check_resource, not_served_path};

/// Most operations in one PATCH: Entra and Okta send one per attribute and put many
/// members in one operation's value, so more is no client's, only an attacker's.
pub const MAX_OPERATIONS: usize = 1_000;

/// Most comparisons in a PATCH path's value filter (`emails[type eq "work"]` has one),
/// except a `members[value eq … or …]` list, which is looked up rather than evaluated.
pub const MAX_PATH_FILTER_COMPARISONS: usize = 100;

/// The comparisons (and presence tests) in a filter.
fn comparisons(f: &Filter) -> usize {
    match f {
        Filter::Compare { .. } | Filter::Present(_) => 1,
        Filter::And(v) | Filter::Or(v) => v.iter().map(comparisons).sum(),
        Filter::Not(f) => comparisons(f),
        Filter::ValuePath { filter, .. } => comparisons(filter),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOpKind {
    Add,
    Remove,
    Replace,
}

/// What an operation's `path` designates.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchTarget {
    /// No `path`: the value is an object of attributes.
    Resource,
    /// The path is exactly a modelled extension schema URN: the whole extension object.
    Extension(&'static str),
    Path(PatchPath),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchOperation {
    pub op: PatchOpKind,
    pub target: PatchTarget,
    /// `None` when the member is absent, `Some(Value::Null)` when explicitly null.
    pub value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchRequest {
    pub operations: Vec<PatchOperation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub value: String,
    /// The member's `type` (`User` / `Group`) if the client sent it.
    pub kind: Option<String>,
}

/// A change to a group's membership, to be applied in order by the caller (members are
/// stored outside the group resource).
#[derive(Debug, Clone, PartialEq)]
pub enum MemberOp {
    Add(Vec<MemberValue>),
    Remove(Vec<String>),
    /// `remove members[filter]` where the filter is not a plain `value eq`; evaluate it on
    /// `{"value": id, "type": type}` (see [`apply_member_ops`]).
    RemoveWhere(Filter),
    RemoveAll,
    ReplaceAll(Vec<MemberValue>),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatchOutcome {
    /// Whether the attributes other than `members` changed (callers may skip the write).
    pub changed: bool,
    pub members: Vec<MemberOp>,
}

fn syntax(msg: impl Into<String>) -> ScimError {
    ScimError::invalid_syntax(msg)
}

impl PatchRequest {
    /// Parses and checks a PATCH body.
    pub fn from_json(body: &Value) -> Result<Self, ScimError> {
        let obj = body
            .as_object()
            .ok_or_else(|| syntax("PATCH body must be a JSON object"))?;
        let schemas = get_ci(obj, "schemas").map(|(_, v)| v);
        let has_schema = schemas.and_then(Value::as_array).is_some_and(|a| {
            a.iter().any(|s| {
                s.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(PATCH_OP_SCHEMA))
            })
        });
        if !has_schema {
            return Err(syntax(format!(
                "'schemas' must contain \"{PATCH_OP_SCHEMA}\""
            )));
        }
        let ops = match get_ci(obj, "Operations") {
            Some((_, Value::Array(ops))) => ops,
            Some(_) => return Err(syntax("'Operations' must be an array")),
            None => return Err(syntax("'Operations' is required")),
        };
        if ops.is_empty() {
            return Err(syntax("'Operations' must contain at least one operation"));
        }
        if ops.len() > MAX_OPERATIONS {
            return Err(ScimError::invalid_value(format!(
                "a PATCH may carry at most {MAX_OPERATIONS} operations, this one has {}",
                ops.len()
            )));
        }
        let operations = ops
            .iter()
            .enumerate()
            .map(|(i, op)| parse_operation(i, op))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PatchRequest { operations })
    }
}

fn parse_operation(i: usize, op: &Value) -> Result<PatchOperation, ScimError> {
    let obj = op
        .as_object()
        .ok_or_else(|| syntax(format!("operation {i} must be an object")))?;
    let kind = match get_ci(obj, "op").map(|(_, v)| v) {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("add") => PatchOpKind::Add,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("remove") => PatchOpKind::Remove,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("replace") => PatchOpKind::Replace,
        Some(Value::String(s)) => {
            return Err(syntax(format!("operation {i}: unknown op '{s}'")));
        }
        Some(_) => return Err(syntax(format!("operation {i}: 'op' must be a string"))),
        None => return Err(syntax(format!("operation {i}: 'op' is required"))),
    };
    let target = match get_ci(obj, "path").map(|(_, v)| v) {
        None | Some(Value::Null) => PatchTarget::Resource,
        Some(Value::String(p)) if p.trim().is_empty() => PatchTarget::Resource,
        Some(Value::String(p)) => match path::whole_extension(p) {
            Some(urn) => PatchTarget::Extension(urn),
            None => PatchTarget::Path(path::parse_patch_path(p)?),
        },
        Some(_) => {
            return Err(ScimError::invalid_path(format!(
                "operation {i}: 'path' must be a string"
            )))
        }
    };
    if let PatchTarget::Path(PatchPath {
        schema_urn,
        attr,
        filter: Some(f),
        ..
    }) = &target
    {
        // Evaluated on every value (every member): its size must be bounded. Only
        // `members[value eq "a" or value eq "b" …]` (Entra's batch removal) may be long:
        // it is looked up, not evaluated.
        let member_ids = schema_urn.is_none()
            && attr.eq_ignore_ascii_case("members")
            && member_ids_of(f).is_some();
        let n = comparisons(f);
        if !member_ids && n > MAX_PATH_FILTER_COMPARISONS {
            return Err(ScimError::invalid_path(format!(
                "operation {i}: the path's filter has {n} comparisons; at most {MAX_PATH_FILTER_COMPARISONS}"
            )));
        }
    }
    let value = get_ci(obj, "value").map(|(_, v)| v.clone());
    if kind != PatchOpKind::Remove && value.is_none() {
        return Err(syntax(format!(
            "operation {i}: 'value' is required for add and replace"
        )));
    }
    if kind == PatchOpKind::Remove && target == PatchTarget::Resource {
        return Err(ScimError::no_target(format!(
            "operation {i}: remove requires a 'path'"
        )));
    }
    Ok(PatchOperation {
        op: kind,
        target,
        value,
    })
}

// ---------------------------------------------------------------------------------------
// Applying
// ---------------------------------------------------------------------------------------

/// Applies all operations to `resource` (stored SCIM JSON without `id`/`meta`; for groups
/// without `members`). All or nothing: on error `resource` is unchanged.
pub fn apply_patch(
    resource: &mut Map<String, Value>,
    kind: ResourceKind,
    req: &PatchRequest,
) -> Result<PatchOutcome, ScimError> {
    let mut work = resource.clone();
    let mut members = Vec::new();
    for op in &req.operations {
        let mut ctx = Ctx {
            kind,
            members: &mut members,
        };
        match &op.target {
            PatchTarget::Resource => ctx.apply_pathless(&mut work, op.op, op.value.as_ref())?,
            PatchTarget::Extension(urn) => {
                ctx.apply_extension(&mut work, op.op, urn, op.value.as_ref(), false)?
            }
            PatchTarget::Path(p) => {
                ctx.apply_path(&mut work, op.op, p, op.value.as_ref(), false)?
            }
        }
    }
    let changed = work != *resource;
    if changed {
        check_change(Some(&*resource), &work, kind)?;
        *resource = work;
    }
    Ok(PatchOutcome { changed, members })
}

struct Ctx<'a> {
    kind: ResourceKind,
    members: &'a mut Vec<MemberOp>,
}

fn is_null(v: Option<&Value>) -> bool {
    v.is_none_or(Value::is_null)
}

impl Ctx<'_> {
    fn apply_pathless(
        &mut self,
        work: &mut Map<String, Value>,
        op: PatchOpKind,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let obj = match value {
            Some(Value::Object(o)) => o,
            _ => {
                return Err(ScimError::invalid_value(
                    "an operation without 'path' needs an object 'value'",
                ))
            }
        };
        for (key, v) in obj {
            if ["schemas", "id", "meta"]
                .iter()
                .any(|k| key.eq_ignore_ascii_case(k))
            {
                continue;
            }
            if key.trim().is_empty() {
                return Err(ScimError::invalid_path("empty attribute name in 'value'"));
            }
            if let Some(urn) = path::whole_extension(key) {
                self.apply_extension(work, op, urn, Some(v), true)?;
                continue;
            }
            let (urn, rest) = schema::split_urn(key);
            if let (Some(u), "", Value::Object(_)) = (urn, rest, v) {
                if schema::is_core_urn(u) {
                    // `{"urn:…:core:2.0:User": {"title": "x"}}`: core attributes.
                    self.apply_pathless(work, op, Some(v))?;
                    continue;
                }
            }
            if let (Some(u), true) = (urn, v.is_object()) {
                // An extension this server doesn't serve (`"urn:acme:2.0:User": {...}`).
                if schema::schema_def(u).is_none() {
                    return Err(not_served_path(key, self.kind));
                }
            }
            let p = path::parse_patch_path(key)?;
            self.apply_path(work, op, &p, Some(v), true)?;
        }
        Ok(())
    }

    /// Whole-extension add/replace/remove (path is the extension URN, or a URN key in a
    /// path-less value): add/replace set each attribute in it.
    fn apply_extension(
        &mut self,
        work: &mut Map<String, Value>,
        op: PatchOpKind,
        urn: &'static str,
        value: Option<&Value>,
        pathless: bool,
    ) -> Result<(), ScimError> {
        if op == PatchOpKind::Remove || is_null(value) {
            if let Some(k) = key_ci(work, urn) {
                work.remove(&k);
                remove_schema(work, urn);
            }
            return Ok(());
        }
        let Some(Value::Object(obj)) = value else {
            return Err(ScimError::invalid_value(format!(
                "'{urn}' must be an object"
            )));
        };
        for (k, v) in obj {
            // scim2-models sends an extension object with its own `schemas`: harmless.
            if k.eq_ignore_ascii_case("schemas") {
                continue;
            }
            let token = filter::parse_attr_path_token(k).map_err(ScimError::invalid_path)?;
            if token.schema_urn.is_some() {
                return Err(ScimError::invalid_path(format!(
                    "unexpected schema URN in '{k}'"
                )));
            }
            let p = PatchPath {
                schema_urn: Some(urn.to_string()),
                attr: token.attr,
                filter: None,
                sub_attr: token.sub_attr,
            };
            self.apply_path(work, op, &p, Some(v), pathless)?;
        }
        Ok(())
    }

    fn apply_path(
        &mut self,
        work: &mut Map<String, Value>,
        op: PatchOpKind,
        p: &PatchPath,
        value: Option<&Value>,
        pathless: bool,
    ) -> Result<(), ScimError> {
        let label = p.to_string();
        let (ext, def): (Option<String>, Option<&'static AttributeDef>) = match &p.schema_urn {
            None => {
                if self.kind == ResourceKind::Group && p.attr.eq_ignore_ascii_case("members") {
                    return self.member_op(op, p, value);
                }
                if p.attr.eq_ignore_ascii_case("schemas") {
                    return if pathless {
                        Ok(())
                    } else {
                        Err(ScimError::mutability(
                            "'schemas' is maintained by the server",
                        ))
                    };
                }
                let def = self.kind.schema().core.attribute(&p.attr);
                (None, def.or_else(|| schema::common_attribute(&p.attr)))
            }
            Some(u) => match self.kind.extension(u) {
                Some(ext) => (Some(ext.id.to_string()), ext.attribute(&p.attr)),
                None => (Some(u.clone()), None),
            },
        };
        let sub_def = match (&p.sub_attr, def) {
            (Some(s), Some(d)) => {
                if !d.is_complex() {
                    return Err(ScimError::invalid_path(format!(
                        "'{}' has no sub-attributes",
                        d.name
                    )));
                }
                d.sub_attribute(s)
            }
            _ => None,
        };
        if op != PatchOpKind::Remove {
            // Refused before any work (a path-less value may carry thousands of keys).
            // A remove stores nothing: harmless, and how junk stored earlier goes away.
            let prefix = ext.as_deref().map(|u| format!("{u}:")).unwrap_or_default();
            match (def, &p.sub_attr) {
                (None, _) if ext.is_some() && self.kind.extension(&ext_urn(&ext)).is_none() => {
                    return Err(not_served_path(&ext_urn(&ext), self.kind))
                }
                (None, _) => {
                    return Err(not_served_path(&format!("{prefix}{}", p.attr), self.kind))
                }
                (Some(d), Some(sub)) if sub_def.is_none() => {
                    return Err(not_served_path(
                        &format!("{prefix}{}.{sub}", d.name),
                        self.kind,
                    ))
                }
                _ => {}
            }
        }
        let read_only =
            def.is_some_and(|d| d.is_read_only()) || sub_def.is_some_and(|d| d.is_read_only());
        if read_only {
            return if pathless {
                Ok(())
            } else {
                Err(ScimError::mutability(format!("'{label}' is read-only")))
            };
        }
        if def.is_some_and(|d| d.mutability == Mutability::WriteOnly) {
            // Passwords are not stored (see module docs).
            return Ok(());
        }

        let Some(ext_key) = ext else {
            return attr_op(work, op, p, def, sub_def, value, &label);
        };
        let existing_key = key_ci(work, &ext_key);
        let creating = existing_key.is_none();
        if creating && (op == PatchOpKind::Remove || is_null(value)) {
            return Ok(());
        }
        let key = existing_key.unwrap_or_else(|| ext_key.clone());
        let slot = work
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(container) = slot else {
            return Err(ScimError::invalid_value(format!(
                "'{key}' is not an object"
            )));
        };
        attr_op(container, op, p, def, sub_def, value, &label)?;
        if container.is_empty() {
            work.remove(&key);
            remove_schema(work, &ext_key);
        } else {
            ensure_schema(work, self.kind, &ext_key);
        }
        Ok(())
    }

    fn member_op(
        &mut self,
        op: PatchOpKind,
        p: &PatchPath,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let mop =
            match (op, &p.filter, &p.sub_attr) {
                (PatchOpKind::Add, None, None) => {
                    let vals = if is_null(value) {
                        Vec::new()
                    } else {
                        member_values(value)?
                    };
                    if vals.is_empty() {
                        return Ok(());
                    }
                    MemberOp::Add(vals)
                }
                (PatchOpKind::Replace, None, None) => {
                    if is_null(value) {
                        MemberOp::RemoveAll
                    } else {
                        MemberOp::ReplaceAll(member_values(value)?)
                    }
                }
                (PatchOpKind::Remove, None, None) => {
                    if is_null(value) {
                        MemberOp::RemoveAll
                    } else {
                        // Entra: remove only the listed members.
                        let ids: Vec<String> =
                            member_values(value)?.into_iter().map(|m| m.value).collect();
                        if ids.is_empty() {
                            return Ok(());
                        }
                        MemberOp::Remove(ids)
                    }
                }
                (PatchOpKind::Remove, Some(f), _) => match member_ids_of(f) {
                    Some(ids) => MemberOp::Remove(ids),
                    None => {
                        let def = schema::resolve(ResourceKind::Group, "members").map(|r| r.attr);
                        filter::validate_value_filter(f, def)
                            .map_err(|e| ScimError::invalid_path(e.to_string()))?;
                        MemberOp::RemoveWhere(f.clone())
                    }
                },
                (PatchOpKind::Remove, None, Some(_)) => {
                    return Err(ScimError::invalid_path(
                        "remove 'members.<sub>' is not supported; remove members by value",
                    ))
                }
                (_, _, _) => return Err(ScimError::mutability(
                    "group members are immutable values: add or remove them, do not modify them",
                )),
            };
        self.members.push(mop);
        Ok(())
    }
}

fn ext_urn(ext: &Option<String>) -> String {
    ext.clone().unwrap_or_default()
}

/// `value eq "x"` or an `or` of those → the ids (fast path, no scan of members).
fn member_ids_of(f: &Filter) -> Option<Vec<String>> {
    match f {
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value: CompValue::String(v),
        } if path.schema_urn.is_none()
            && path.sub_attr.is_none()
            && path.attr.eq_ignore_ascii_case("value") =>
        {
            Some(vec![v.clone()])
        }
        Filter::Or(items) => {
            let mut out = Vec::new();
            for i in items {
                out.extend(member_ids_of(i)?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Parses `[{"value": id, "type": t}, ...]`, a single such object, or a bare id string.
fn member_values(value: Option<&Value>) -> Result<Vec<MemberValue>, ScimError> {
    let items: Vec<&Value> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::Null => {}
            Value::String(s) if !s.trim().is_empty() => out.push(MemberValue {
                value: s.clone(),
                kind: None,
            }),
            Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| {
                    !["value", "$ref", "display", "type"]
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(k))
                }) {
                    return Err(ScimError::invalid_syntax(format!(
                        "'members.{k}' is not an attribute of any schema served for Groups; \
                         a member is {{\"value\", \"type\", \"$ref\", \"display\"}}"
                    )));
                }
                let id = match get_ci(o, "value").map(|(_, v)| v) {
                    Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                    _ => {
                        return Err(ScimError::invalid_value(
                            "each member needs a non-empty string 'value'",
                        ))
                    }
                };
                let kind = match get_ci(o, "type").map(|(_, v)| v) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(t)) => Some(t.clone()),
                    Some(_) => {
                        return Err(ScimError::invalid_value("member 'type' must be a string"))
                    }
                };
                out.push(MemberValue { value: id, kind });
            }
            _ => {
                return Err(ScimError::invalid_value(
                    "members must be objects with a 'value' (member id)",
                ))
            }
        }
    }
    Ok(out)
}

/// Applies member operations to an in-memory membership (`id -> type`).
pub fn apply_member_ops(
    current: &mut BTreeMap<String, Option<String>>,
    ops: &[MemberOp],
) -> Result<(), ScimError> {
    let members_def = schema::resolve(ResourceKind::Group, "members").map(|r| r.attr);
    for op in ops {
        match op {
            MemberOp::Add(vals) => {
                for m in vals {
                    let entry = current.entry(m.value.clone()).or_insert(None);
                    if m.kind.is_some() {
                        entry.clone_from(&m.kind);
                    }
                }
            }
            MemberOp::Remove(ids) => {
                for id in ids {
                    current.remove(id);
                }
            }
            MemberOp::RemoveWhere(f) => current.retain(|id, t| {
                // The filter sees the member as GET shows it: a member stored without a
                // type is a User (`crd::membership`).
                let mut elem = Map::new();
                elem.insert("value".into(), Value::String(id.clone()));
                elem.insert("type".into(), Value::String(scim_type(t.as_deref()).into()));
                !filter::matches_element(f, &Value::Object(elem), members_def)
            }),
            MemberOp::RemoveAll => current.clear(),
            MemberOp::ReplaceAll(vals) => {
                current.clear();
                for m in vals {
                    current.insert(m.value.clone(), m.kind.clone());
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Attribute-level operations inside one container (the resource or an extension object)
// ---------------------------------------------------------------------------------------

fn attr_op(
    c: &mut Map<String, Value>,
    op: PatchOpKind,
    p: &PatchPath,
    def: Option<&'static AttributeDef>,
    sub_def: Option<&'static AttributeDef>,
    value: Option<&Value>,
    label: &str,
) -> Result<(), ScimError> {
    let key = key_ci(c, &p.attr).unwrap_or_else(|| def.map_or(p.attr.clone(), |d| d.name.into()));
    match (&p.filter, &p.sub_attr) {
        (None, None) => whole_attr_op(c, &key, op, def, value, label),
        (None, Some(sub)) => sub_attr_op(c, &key, op, def, sub, sub_def, value, label),
        (Some(f), sub) => {
            if def.is_some_and(|d| !(d.is_complex() && d.multi_valued)) {
                return Err(ScimError::invalid_path(format!(
                    "'{}' is not a multi-valued complex attribute; it cannot take a filter",
                    p.attr
                )));
            }
            filtered_op(c, &key, op, def, f, sub.as_deref(), sub_def, value, label)
        }
    }
}

fn whole_attr_op(
    c: &mut Map<String, Value>,
    key: &str,
    op: PatchOpKind,
    def: Option<&'static AttributeDef>,
    value: Option<&Value>,
    label: &str,
) -> Result<(), ScimError> {
    let existing_is_array = c.get(key).is_some_and(Value::is_array);
    if op == PatchOpKind::Remove {
        match (c.get_mut(key), value) {
            (None, _) => {}
            (Some(Value::Array(items)), Some(v)) if !v.is_null() => {
                // Remove only the listed values (Entra's remove with a value list).
                let listed = coerce_multi(def, v, label)?;
                let listed = ElementIndex::of(&listed, def);
                items.retain(|e| listed.first_match(e, def).is_none());
                if items.is_empty() {
                    c.remove(key);
                }
            }
            (Some(_), _) => {
                c.remove(key);
            }
        }
        return Ok(());
    }
    let Some(v) = value.filter(|v| !v.is_null()) else {
        c.remove(key);
        return Ok(());
    };
    let multi = match def {
        Some(d) => d.multi_valued,
        None => existing_is_array || v.is_array(),
    };
    if multi {
        let items = coerce_multi(def, v, label)?;
        if op == PatchOpKind::Replace || !existing_is_array {
            let mut arr = Vec::new();
            let mut ix = ElementIndex::default();
            let mut written = Vec::new();
            for item in items {
                push_unique(&mut arr, &mut ix, item, def, &mut written);
            }
            set_or_remove_array(c, key, arr, &written);
        } else if let Some(Value::Array(arr)) = c.get_mut(key) {
            let mut ix = ElementIndex::of(arr, def);
            let mut written = Vec::new();
            for item in items {
                push_unique(arr, &mut ix, item, def, &mut written);
            }
            fix_primary(arr, &written);
        }
        return Ok(());
    }
    match def {
        Some(d) if d.is_complex() => write_single_complex(c, key, d, v, label),
        None if op == PatchOpKind::Add && v.is_object() => {
            // Unknown complex attribute: add merges (like a known complex one).
            let Some(Value::Object(inc)) = strip_nulls(v.clone()) else {
                return Ok(());
            };
            match c.get_mut(key) {
                Some(Value::Object(existing)) => {
                    for (k, iv) in inc {
                        let ek = key_ci(existing, &k).unwrap_or(k);
                        existing.insert(ek, iv);
                    }
                }
                _ => {
                    c.insert(key.to_string(), Value::Object(inc));
                }
            }
            Ok(())
        }
        _ => {
            match coerce_scalar(def, v, label)? {
                Some(sv) => c.insert(key.to_string(), sv),
                None => c.remove(key),
            };
            Ok(())
        }
    }
}

/// add/replace of a single-valued complex attribute (`name`, `manager`).
fn write_single_complex(
    c: &mut Map<String, Value>,
    key: &str,
    def: &'static AttributeDef,
    v: &Value,
    label: &str,
) -> Result<(), ScimError> {
    let has_value_sub = def.sub_attribute("value").is_some();
    let obj: Map<String, Value> = match v {
        Value::Object(o) => o.clone(),
        // Entra sends the manager as a bare id.
        Value::String(s) if has_value_sub => {
            let mut m = Map::new();
            m.insert("value".into(), Value::String(s.clone()));
            m
        }
        // ...or as a one-element array `[{"$ref": null, "value": id}]`.
        Value::Array(a) => match a.iter().filter(|x| !x.is_null()).collect::<Vec<_>>()[..] {
            [] => {
                c.remove(key);
                return Ok(());
            }
            [Value::Object(o)] => o.clone(),
            [Value::String(s)] if has_value_sub => {
                let mut m = Map::new();
                m.insert("value".into(), Value::String(s.clone()));
                m
            }
            _ => {
                return Err(ScimError::invalid_value(format!(
                    "'{label}' is single-valued; expected one object"
                )))
            }
        },
        _ => {
            return Err(ScimError::invalid_value(format!(
                "'{label}' must be an object"
            )))
        }
    };
    let replaces_identity =
        has_value_sub && get_ci(&obj, "value").is_some_and(|(_, v)| !v.is_null());
    if replaces_identity || !c.get(key).is_some_and(Value::is_object) {
        match coerce_complex(def, &obj, label)? {
            Some(new) => c.insert(key.to_string(), new),
            None => c.remove(key),
        };
        return Ok(());
    }
    if let Some(Value::Object(existing)) = c.get_mut(key) {
        merge_into_element(existing, Some(def), &obj, label)?;
        if existing.is_empty() {
            c.remove(key);
        }
    }
    Ok(())
}

/// Sets/removes sub-attributes of one complex value from `incoming` (null removes).
fn merge_into_element(
    existing: &mut Map<String, Value>,
    def: Option<&'static AttributeDef>,
    incoming: &Map<String, Value>,
    label: &str,
) -> Result<(), ScimError> {
    for (k, v) in incoming {
        let sd = def.and_then(|d| d.sub_attribute(k));
        if def.is_some() && sd.is_none() {
            return Err(undeclared_sub(label, k));
        }
        if sd.is_some_and(|d| d.is_read_only()) {
            continue;
        }
        let ek = key_ci(existing, k).unwrap_or_else(|| sd.map_or(k.clone(), |d| d.name.into()));
        match coerce_scalar(sd, v, &format!("{label}.{k}"))? {
            Some(sv) => existing.insert(ek, sv),
            None => existing.remove(&ek),
        };
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn sub_attr_op(
    c: &mut Map<String, Value>,
    key: &str,
    op: PatchOpKind,
    def: Option<&'static AttributeDef>,
    sub: &str,
    sub_def: Option<&'static AttributeDef>,
    value: Option<&Value>,
    label: &str,
) -> Result<(), ScimError> {
    let sub_key_for = |m: &Map<String, Value>| {
        key_ci(m, sub).unwrap_or_else(|| sub_def.map_or(sub.to_string(), |d| d.name.into()))
    };
    let new_val = if op == PatchOpKind::Remove || is_null(value) {
        None
    } else {
        match value {
            Some(v) => coerce_scalar(sub_def, v, label)?,
            None => None,
        }
    };
    let multi = def.map_or_else(
        || c.get(key).is_some_and(Value::is_array),
        |d| d.multi_valued,
    );
    if multi {
        match (c.get_mut(key), new_val) {
            (Some(Value::Array(items)), None) => {
                for e in items.iter_mut() {
                    if let Value::Object(o) = e {
                        let k = sub_key_for(o);
                        o.remove(&k);
                    }
                }
                items.retain(|e| !e.as_object().is_some_and(Map::is_empty));
                if items.is_empty() {
                    c.remove(key);
                }
            }
            (Some(Value::Array(items)), Some(nv)) if !items.is_empty() => {
                for e in items.iter_mut() {
                    if let Value::Object(o) = e {
                        let k = sub_key_for(o);
                        o.insert(k, nv.clone());
                    }
                }
                let all: Vec<usize> = (0..items.len()).collect();
                if sub.eq_ignore_ascii_case("primary") {
                    // Setting primary on every element cannot leave several primaries.
                    fix_primary(items, &all[..all.len().min(1)]);
                }
            }
            (_, Some(nv)) => {
                let mut o = Map::new();
                o.insert(sub_key_for(&Map::new()), nv);
                c.insert(key.to_string(), Value::Array(vec![Value::Object(o)]));
            }
            (_, None) => {}
        }
        return Ok(());
    }
    match (c.get_mut(key), new_val) {
        (Some(Value::Object(o)), None) => {
            let k = sub_key_for(o);
            o.remove(&k);
            if o.is_empty() {
                c.remove(key);
            }
        }
        (None, None) => {}
        (Some(Value::Object(o)), Some(nv)) => {
            let k = sub_key_for(o);
            o.insert(k, nv);
        }
        (None, Some(nv)) => {
            let mut o = Map::new();
            o.insert(sub_key_for(&Map::new()), nv);
            c.insert(key.to_string(), Value::Object(o));
        }
        (Some(_), _) => {
            return Err(ScimError::invalid_path(format!(
                "'{key}' is not a complex value; cannot address '{label}'"
            )))
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn filtered_op(
    c: &mut Map<String, Value>,
    key: &str,
    op: PatchOpKind,
    def: Option<&'static AttributeDef>,
    f: &Filter,
    sub: Option<&str>,
    sub_def: Option<&'static AttributeDef>,
    value: Option<&Value>,
    label: &str,
) -> Result<(), ScimError> {
    filter::validate_value_filter(f, def).map_err(|e| ScimError::invalid_path(e.to_string()))?;
    let mut items: Vec<Value> = match c.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(ScimError::invalid_path(format!(
                "'{key}' is not multi-valued"
            )));
        }
    };
    let matched: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, e)| filter::matches_element(f, e, def))
        .map(|(i, _)| i)
        .collect();
    let removing = op == PatchOpKind::Remove || is_null(value);
    let mut written = Vec::new();
    match (removing, sub) {
        (true, None) => {
            let mut remove = vec![false; items.len()];
            for &i in &matched {
                remove[i] = true;
            }
            let mut i = 0;
            items.retain(|_| {
                let keep = !remove[i];
                i += 1;
                keep
            });
        }
        (true, Some(s)) => {
            for &i in &matched {
                if let Some(Value::Object(o)) = items.get_mut(i) {
                    if let Some(k) = key_ci(o, s) {
                        o.remove(&k);
                    }
                }
            }
            items.retain(|e| !e.as_object().is_some_and(Map::is_empty));
        }
        (false, None) => {
            let Some(Value::Object(obj)) = value else {
                return Err(ScimError::invalid_value(format!(
                    "'{label}' selects complex values; 'value' must be an object"
                )));
            };
            if matched.is_empty() {
                let mut elem = new_element_from_filter(f, def, label)?;
                merge_into_element(&mut elem, def, obj, label)?;
                items.push(Value::Object(elem));
                written.push(items.len() - 1);
            }
            for &i in &matched {
                if let Some(Value::Object(o)) = items.get_mut(i) {
                    merge_into_element(o, def, obj, label)?;
                    written.push(i);
                }
            }
        }
        (false, Some(s)) => {
            let Some(nv) = value
                .map(|v| coerce_scalar(sub_def, v, label))
                .transpose()?
                .flatten()
            else {
                return Ok(());
            };
            let sk = |o: &Map<String, Value>| {
                key_ci(o, s).unwrap_or_else(|| sub_def.map_or(s.to_string(), |d| d.name.into()))
            };
            if matched.is_empty() {
                let mut elem = new_element_from_filter(f, def, label)?;
                let k = sk(&elem);
                elem.insert(k, nv.clone());
                items.push(Value::Object(elem));
                written.push(items.len() - 1);
            }
            for &i in &matched {
                if let Some(Value::Object(o)) = items.get_mut(i) {
                    let k = sk(o);
                    o.insert(k, nv.clone());
                    written.push(i);
                }
            }
        }
    }
    fix_primary(&mut items, &written);
    set_or_remove_array(c, key, items, &[]);
    Ok(())
}

/// For a filter that is `a eq lit [and b eq lit ...]`, the element it describes; else
/// `noTarget` (RFC 7644 §3.5.2.3: a filter that matches nothing is an error).
fn new_element_from_filter(
    f: &Filter,
    def: Option<&'static AttributeDef>,
    label: &str,
) -> Result<Map<String, Value>, ScimError> {
    fn collect(f: &Filter, out: &mut Vec<(AttrPath, CompValue)>) -> bool {
        match f {
            Filter::Compare {
                path,
                op: CompareOp::Eq,
                value,
            } if path.sub_attr.is_none() && *value != CompValue::Null => {
                out.push((path.clone(), value.clone()));
                true
            }
            Filter::And(items) => items.iter().all(|i| collect(i, out)),
            _ => false,
        }
    }
    let mut eqs = Vec::new();
    if !collect(f, &mut eqs) {
        return Err(ScimError::no_target(format!("no value matches '{label}'")));
    }
    let mut elem = Map::new();
    for (p, v) in eqs {
        let sd = def.and_then(|d| d.sub_attribute(&p.attr));
        let k = sd.map_or(p.attr.clone(), |d| d.name.to_string());
        if let Some(sv) = coerce_scalar(sd, &v.to_json(), label)? {
            elem.insert(k, sv);
        }
    }
    Ok(elem)
}

fn set_or_remove_array(
    c: &mut Map<String, Value>,
    key: &str,
    mut arr: Vec<Value>,
    written: &[usize],
) {
    if arr.is_empty() {
        c.remove(key);
    } else {
        fix_primary(&mut arr, written);
        c.insert(key.to_string(), Value::Array(arr));
    }
}

fn is_primary(v: &Value) -> bool {
    v.as_object()
        .and_then(|o| get_ci(o, "primary"))
        .is_some_and(|(_, p)| p == &Value::Bool(true))
}

/// RFC 7643 §2.4: at most one value may be primary; the one just written wins.
fn fix_primary(items: &mut [Value], written: &[usize]) {
    let Some(&winner) = written
        .iter()
        .rev()
        .find(|&&i| items.get(i).is_some_and(is_primary))
    else {
        return;
    };
    for (i, e) in items.iter_mut().enumerate() {
        if i != winner && is_primary(e) {
            if let Value::Object(o) = e {
                if let Some(k) = key_ci(o, "primary") {
                    o.insert(k, Value::Bool(false));
                }
            }
        }
    }
}

/// Appends `item` unless an equal value is present (then merges it into that one).
/// `ix` indexes `arr` and is kept up to date: O(log n) per value.
fn push_unique(
    arr: &mut Vec<Value>,
    ix: &mut ElementIndex,
    item: Value,
    def: Option<&'static AttributeDef>,
    written: &mut Vec<usize>,
) {
    match ix.first_match(&item, def) {
        Some(i) => {
            debug_assert!(arr.get(i).is_some_and(|e| same_element(e, &item, def)));
            if let (Some(Value::Object(existing)), Value::Object(inc)) = (arr.get_mut(i), &item) {
                let before = Value::Object(existing.clone());
                for (k, v) in inc {
                    let ek = key_ci(existing, k).unwrap_or_else(|| k.clone());
                    existing.insert(ek, v.clone());
                }
                // The merge may have typed an untyped value.
                ix.remove(i, &before, def);
                ix.insert(i, &arr[i], def);
            }
            written.push(i);
        }
        None => {
            arr.push(item);
            let i = arr.len() - 1;
            ix.insert(i, &arr[i], def);
            written.push(i);
        }
    }
}

/// What identifies a value of a multi-valued attribute for [`same_element`]: the
/// normalised `value` of a complex value, or the whole value otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ElemKey {
    /// A complex value with `value`: compared with its `type`, see [`Bucket`].
    Value(String),
    /// Anything else: only equal values are the same.
    Whole(String),
}

/// The key and the (ASCII-lower-cased) `type` of `v`, such that `same_element(a, b)`
/// implies equal keys, and for `ElemKey::Value` keys also compatible types.
fn elem_key(v: &Value, def: Option<&AttributeDef>) -> (ElemKey, Option<String>) {
    match v {
        Value::Object(o) => match get_ci(o, "value").map(|(_, v)| v) {
            Some(val) => {
                let value_exact = def
                    .and_then(|d| d.sub_attribute("value"))
                    .is_some_and(|d| d.case_exact);
                let key = match val {
                    Value::String(s) if value_exact => format!("s{s}"),
                    Value::String(s) => format!("s{}", s.to_lowercase()),
                    other => format!("j{other}"),
                };
                let ty = get_ci(o, "type")
                    .and_then(|(_, t)| t.as_str())
                    .map(str::to_ascii_lowercase);
                (ElemKey::Value(key), ty)
            }
            // serde_json's Map is ordered: equal objects serialise equally.
            None => (ElemKey::Whole(format!("o{v}")), None),
        },
        Value::String(s) if def.is_some_and(|d| d.case_exact) => {
            (ElemKey::Whole(format!("s{s}")), None)
        }
        Value::String(s) => (ElemKey::Whole(format!("s{}", s.to_lowercase())), None),
        other => (ElemKey::Whole(format!("j{other}")), None),
    }
}

/// The positions of the elements with one key.
#[derive(Debug, Default)]
struct Bucket {
    all: BTreeSet<usize>,
    untyped: BTreeSet<usize>,
    typed: HashMap<String, BTreeSet<usize>>,
}

impl Bucket {
    /// The first element the same as a value of type `ty` (a value without type matches
    /// any; a typed one the same type or none).
    fn first_match(&self, key: &ElemKey, ty: Option<&str>) -> Option<usize> {
        match (key, ty) {
            (ElemKey::Whole(_), _) | (ElemKey::Value(_), None) => self.all.first().copied(),
            (ElemKey::Value(_), Some(t)) => {
                let same_type = self.typed.get(t).and_then(|s| s.first().copied());
                let untyped = self.untyped.first().copied();
                match (same_type, untyped) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }
}

/// An index of the elements of a multi-valued attribute, so that finding the element a
/// value is the same as costs O(log n) instead of a scan (adding n values was O(n²)).
#[derive(Debug, Default)]
struct ElementIndex {
    buckets: HashMap<ElemKey, Bucket>,
}

impl ElementIndex {
    fn of(items: &[Value], def: Option<&AttributeDef>) -> ElementIndex {
        let mut ix = ElementIndex::default();
        for (i, v) in items.iter().enumerate() {
            ix.insert(i, v, def);
        }
        ix
    }

    fn insert(&mut self, i: usize, v: &Value, def: Option<&AttributeDef>) {
        let (key, ty) = elem_key(v, def);
        let b = self.buckets.entry(key).or_default();
        b.all.insert(i);
        match ty {
            Some(t) => {
                b.typed.entry(t).or_default().insert(i);
            }
            None => {
                b.untyped.insert(i);
            }
        }
    }

    fn remove(&mut self, i: usize, v: &Value, def: Option<&AttributeDef>) {
        let (key, ty) = elem_key(v, def);
        if let Some(b) = self.buckets.get_mut(&key) {
            b.all.remove(&i);
            match ty {
                Some(t) => {
                    if let Some(s) = b.typed.get_mut(&t) {
                        s.remove(&i);
                    }
                }
                None => {
                    b.untyped.remove(&i);
                }
            }
        }
    }

    /// The first indexed element [`same_element`] considers the same as `v`.
    fn first_match(&self, v: &Value, def: Option<&AttributeDef>) -> Option<usize> {
        let (key, ty) = elem_key(v, def);
        self.buckets.get(&key)?.first_match(&key, ty.as_deref())
    }
}

/// Two values of a multi-valued attribute are the same if equal, or (complex) if their
/// `value` and `type` sub-attributes agree (respecting caseExact of `value`).
fn same_element(a: &Value, b: &Value, def: Option<&AttributeDef>) -> bool {
    #[cfg(test)]
    tests::SAME_ELEMENT_CALLS.with(|c| c.set(c.get() + 1));
    if a == b {
        return true;
    }
    let value_exact = def
        .and_then(|d| d.sub_attribute("value"))
        .is_some_and(|d| d.case_exact);
    let str_eq = |x: &str, y: &str, exact: bool| {
        if exact {
            x == y
        } else {
            x.to_lowercase() == y.to_lowercase()
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let xv = get_ci(x, "value").map(|(_, v)| v);
            let yv = get_ci(y, "value").map(|(_, v)| v);
            let values_equal = match (xv, yv) {
                (Some(Value::String(p)), Some(Value::String(q))) => str_eq(p, q, value_exact),
                (Some(p), Some(q)) => p == q,
                _ => return false,
            };
            let xt = get_ci(x, "type").and_then(|(_, v)| v.as_str());
            let yt = get_ci(y, "type").and_then(|(_, v)| v.as_str());
            let types_equal = match (xt, yt) {
                (Some(p), Some(q)) => p.eq_ignore_ascii_case(q),
                (None, None) => true,
                // A removal listing only `value` matches whatever the type.
                _ => xt.is_none() || yt.is_none(),
            };
            values_equal && types_equal
        }
        (Value::String(x), Value::String(y)) => str_eq(x, y, def.is_some_and(|d| d.case_exact)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// Value coercion and type checks
// ---------------------------------------------------------------------------------------

/// Recursively drops nulls (object members and array elements); `None` if nothing is left
/// of an object/array or the value itself is null.
fn strip_nulls(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(o) => {
            let m: Map<String, Value> = o
                .into_iter()
                .filter_map(|(k, v)| strip_nulls(v).map(|v| (k, v)))
                .collect();
            Some(Value::Object(m))
        }
        Value::Array(a) => Some(Value::Array(
            a.into_iter().filter_map(strip_nulls).collect(),
        )),
        other => Some(other),
    }
}

/// A sub-attribute `sub` of the attribute at `label` (`emails`, `emails[…]`, `urn:…:manager`)
/// that its definition doesn't have. (The resource type is not needed for the message.)
fn undeclared_sub(label: &str, sub: &str) -> ScimError {
    let attr = label.replace("[…]", "");
    let shown: String = sub.chars().take(100).collect();
    ScimError::invalid_syntax(format!(
        "'{attr}.{shown}' is not an attribute of any served schema; see /Schemas"
    ))
}

fn type_err(label: &str, expected: &str, got: &Value) -> ScimError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ScimError::invalid_value(format!("'{label}' must be {expected}, got {got}"))
}

/// Checks/coerces one non-multi value against its definition. `None` for null.
fn coerce_scalar(
    def: Option<&AttributeDef>,
    v: &Value,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    if v.is_null() {
        return Ok(None);
    }
    let Some(d) = def else {
        return Ok(strip_nulls(v.clone()));
    };
    let ok = |v: &Value| Ok(Some(v.clone()));
    match (d.ty, v) {
        (AttrType::String | AttrType::Reference, Value::String(_)) => ok(v),
        (AttrType::Binary, Value::String(s)) => {
            if is_base64(s) {
                ok(v)
            } else {
                Err(ScimError::invalid_value(format!(
                    "'{label}' must be base64-encoded"
                )))
            }
        }
        (AttrType::DateTime, Value::String(s)) => {
            if filter::parse_datetime(s).is_some() {
                ok(v)
            } else {
                Err(ScimError::invalid_value(format!(
                    "'{label}' must be an xsd:dateTime"
                )))
            }
        }
        (AttrType::Boolean, Value::Bool(_)) => ok(v),
        // Entra sends booleans as "True"/"False".
        (AttrType::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("true") => {
            Ok(Some(Value::Bool(true)))
        }
        (AttrType::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("false") => {
            Ok(Some(Value::Bool(false)))
        }
        (AttrType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => ok(v),
        (AttrType::Decimal, Value::Number(_)) => ok(v),
        (AttrType::Complex, Value::Object(o)) => coerce_complex(d, o, label),
        (ty, _) => {
            let expected = match ty {
                AttrType::String | AttrType::Reference | AttrType::Binary | AttrType::DateTime => {
                    "a string"
                }
                AttrType::Boolean => "a boolean",
                AttrType::Integer => "an integer",
                AttrType::Decimal => "a number",
                AttrType::Complex => "an object",
            };
            Err(type_err(label, expected, v))
        }
    }
}

fn is_base64(s: &str) -> bool {
    let t: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body_len = t.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let pad = t.len() - body_len;
    pad <= 2
        && t[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

/// A complex value with canonical sub-attribute names, nulls and read-only sub-attributes
/// dropped, and sub-attributes type-checked. `None` if nothing is left.
fn coerce_complex(
    def: &AttributeDef,
    o: &Map<String, Value>,
    label: &str,
) -> Result<Option<Value>, ScimError> {
    let mut out = Map::new();
    for (k, v) in o {
        let sd = def.sub_attribute(k);
        if sd.is_none() {
            return Err(undeclared_sub(label, k));
        }
        if sd.is_some_and(|d| d.is_read_only()) {
            continue;
        }
        let name = sd.map_or(k.clone(), |d| d.name.to_string());
        if let Some(cv) = coerce_scalar(sd, v, &format!("{label}.{k}"))? {
            out.insert(name, cv);
        }
    }
    Ok(if out.is_empty() {
        None
    } else {
        Some(Value::Object(out))
    })
}

/// Values for a multi-valued attribute: an array, or a single value wrapped.
fn coerce_multi(
    def: Option<&AttributeDef>,
    v: &Value,
    label: &str,
) -> Result<Vec<Value>, ScimError> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for item in items {
        let coerced = match def {
            Some(d) if d.is_complex() => match item {
                Value::Object(o) => coerce_complex(d, o, label)?,
                Value::Null => None,
                other => return Err(type_err(label, "an array of objects", other)),
            },
            Some(d) => {
                let mut scalar = d.clone();
                scalar.multi_valued = false;
                coerce_scalar(Some(&scalar), item, label)?
            }
            None => strip_nulls(item.clone()),
        };
        if let Some(c) = coerced {
            out.push(c);
        }
    }
    Ok(out)
}

fn ensure_schema(work: &mut Map<String, Value>, kind: ResourceKind, urn: &str) {
    let key = key_ci(work, "schemas").unwrap_or_else(|| "schemas".to_string());
    let entry = work
        .entry(key)
        .or_insert_with(|| Value::Array(vec![Value::String(kind.core_urn().to_string())]));
    if !entry.is_array() {
        *entry = Value::Array(vec![Value::String(kind.core_urn().to_string())]);
    }
    if let Value::Array(a) = entry {
        if !a
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)))
        {
            a.push(Value::String(urn.to_string()));
        }
    }
}

fn remove_schema(work: &mut Map<String, Value>, urn: &str) {
    if let Some(k) = key_ci(work, "schemas") {
        if let Some(Value::Array(a)) = work.get_mut(&k) {
            a.retain(|s| !s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)));
        }
    }
}

// ---------------------------------------------------------------------------------------
// POST / PUT bodies
// ---------------------------------------------------------------------------------------

/// Normalises a POST/PUT body into the stored form: drops `id`/`meta`, nulls and read-only
/// attributes, canonicalises known attribute names, coerces `"True"`/`"False"` booleans,
/// type-checks known attributes, keeps unknown attributes and extensions, makes `schemas`
/// list the core URN and every extension present, and requires `userName` (User) /
/// `displayName` (Group). Group `members` stay in the map; see [`split_members`].
pub fn normalize_resource(
    doc: &Value,
    kind: ResourceKind,
) -> Result<Map<String, Value>, ScimError> {
    let obj = doc
        .as_object()
        .ok_or_else(|| syntax("resource must be a JSON object"))?;
    let mut out = Map::new();
    let mut schemas: Vec<String> = Vec::new();
    let mut listed = std::collections::HashSet::new();
    let mut extensions: Vec<String> = Vec::new();
    for (key, v) in obj {
        if key.eq_ignore_ascii_case("id") || key.eq_ignore_ascii_case("meta") || v.is_null() {
            continue;
        }
        if key.eq_ignore_ascii_case("schemas") {
            let arr = v
                .as_array()
                .ok_or_else(|| syntax("'schemas' must be an array of URIs"))?;
            for s in arr {
                let s = s
                    .as_str()
                    .ok_or_else(|| syntax("'schemas' must be an array of URIs"))?;
                // Only served schemas are kept (a harmless `schemas` entry is no reason to
                // refuse a request); a set keeps a long list linear.
                if schema::is_served_schema(kind, s) && listed.insert(s.to_ascii_lowercase()) {
                    schemas.push(s.to_string());
                }
            }
            continue;
        }
        if kind == ResourceKind::Group && key.eq_ignore_ascii_case("members") {
            let members = member_values(Some(v))?;
            let arr = members.into_iter().map(member_json).collect();
            out.insert("members".into(), Value::Array(arr));
            continue;
        }
        let (urn, rest) = schema::split_urn(key);
        let ext_def = urn.and_then(|u| kind.extension(u));
        match (urn, ext_def, rest.is_empty()) {
            (Some(_), Some(ext), true) => {
                let Value::Object(eo) = v else {
                    return Err(type_err(ext.id, "an object", v));
                };
                for (k, av) in eo
                    .iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("schemas"))
                {
                    normalize_attr(
                        &mut out,
                        kind,
                        Some(ext.id),
                        ext.attribute(k),
                        k,
                        av,
                        &mut extensions,
                    )?;
                }
            }
            (Some(_), Some(ext), false) => {
                // `"urn:…:enterprise:2.0:User:employeeNumber": "1"` at the top level.
                normalize_attr(
                    &mut out,
                    kind,
                    Some(ext.id),
                    ext.attribute(rest),
                    rest,
                    v,
                    &mut extensions,
                )?;
            }
            (Some(u), None, true) if u.eq_ignore_ascii_case(kind.core_urn()) => {
                // `{"urn:…:core:2.0:User": {...}}`: core attributes nested under the URN.
                let Value::Object(co) = v else {
                    return Err(type_err(u, "an object", v));
                };
                for (k, av) in co {
                    if ["id", "meta", "schemas"]
                        .iter()
                        .any(|x| k.eq_ignore_ascii_case(x))
                    {
                        continue;
                    }
                    let def = kind
                        .schema()
                        .core
                        .attribute(k)
                        .or_else(|| schema::common_attribute(k));
                    normalize_attr(&mut out, kind, None, def, k, av, &mut extensions)?;
                }
            }
            (Some(u), None, false) if u.eq_ignore_ascii_case(kind.core_urn()) => {
                let def = kind
                    .schema()
                    .core
                    .attribute(rest)
                    .or_else(|| schema::common_attribute(rest));
                normalize_attr(&mut out, kind, None, def, rest, v, &mut extensions)?;
            }
            (Some(_), None, _) => {
                // An extension (or an attribute of one) this server doesn't serve.
                return Err(not_served_path(key, kind));
            }
            (None, _, _) => {
                let def = kind
                    .schema()
                    .core
                    .attribute(key)
                    .or_else(|| schema::common_attribute(key));
                normalize_attr(&mut out, kind, None, def, key, v, &mut extensions)?;
            }
        }
    }
    if !schemas
        .iter()
        .any(|s| s.eq_ignore_ascii_case(kind.core_urn()))
    {
        schemas.insert(0, kind.core_urn().to_string());
    }
    for e in extensions {
        if !schemas.iter().any(|s| s.eq_ignore_ascii_case(&e)) {
            schemas.push(e);
        }
    }
    out.insert(
        "schemas".into(),
        Value::Array(schemas.into_iter().map(Value::String).collect()),
    );
    check_resource(&out, kind)?;
    Ok(out)
}

fn member_json(m: MemberValue) -> Value {
    let mut o = Map::new();
    o.insert("value".into(), Value::String(m.value));
    if let Some(t) = m.kind {
        o.insert("type".into(), Value::String(t));
    }
    Value::Object(o)
}

fn normalize_attr(
    out: &mut Map<String, Value>,
    kind: ResourceKind,
    ext: Option<&'static str>,
    def: Option<&'static AttributeDef>,
    name: &str,
    v: &Value,
    extensions: &mut Vec<String>,
) -> Result<(), ScimError> {
    let Some(d) = def else {
        if v.is_null() {
            // Nothing to store: harmless.
            return Ok(());
        }
        let path = match ext {
            Some(u) => format!("{u}:{name}"),
            None => name.to_string(),
        };
        return Err(not_served_path(&path, kind));
    };
    if d.is_read_only() || d.mutability == Mutability::WriteOnly {
        return Ok(());
    }
    let key = def.map_or(name.to_string(), |d| d.name.to_string());
    let label = match ext {
        Some(u) => format!("{u}:{key}"),
        None => key.clone(),
    };
    let value = match def {
        Some(d) if d.multi_valued => {
            let items = coerce_multi(Some(d), v, &label)?;
            if items.is_empty() {
                None
            } else {
                Some(Value::Array(items))
            }
        }
        Some(d) if d.is_complex() => {
            let mut tmp = Map::new();
            write_single_complex(&mut tmp, &key, d, v, &label)?;
            tmp.remove(&key)
        }
        _ => coerce_scalar(def, v, &label)?,
    };
    let Some(value) = value else { return Ok(()) };
    let target = match ext {
        None => out,
        Some(u) => {
            if !extensions.iter().any(|e| e == u) {
                extensions.push(u.to_string());
            }
            let slot = out
                .entry(u.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(m) => m,
                _ => return Err(ScimError::invalid_value(format!("'{u}' must be an object"))),
            }
        }
    };
    target.insert(key, value);
    Ok(())
}

/// A group's attributes without `members`, and its members if given.
pub type SplitGroup = (Map<String, Value>, Option<Vec<MemberValue>>);

/// Takes `members` out of a normalised group: `(rest, members)`; `None` if absent.
pub fn split_members(mut map: Map<String, Value>) -> Result<SplitGroup, ScimError> {
    let members = match key_ci(&map, "members") {
        Some(k) => match map.remove(&k) {
            Some(Value::Null) | None => None,
            Some(v @ (Value::Array(_) | Value::Object(_))) => Some(member_values(Some(&v))?),
            Some(_) => return Err(ScimError::invalid_value("'members' must be an array")),
        },
        None => None,
    };
    Ok((map, members))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use serde_json::json;

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
    const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

    fn body(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops})
    }

    fn user() -> Map<String, Value> {
        json!({
            "schemas": [USER],
            "userName": "bjensen",
            "externalId": "bj",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ]
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn group() -> Map<String, Value> {
        json!({"schemas": [GROUP], "displayName": "Admins"})
            .as_object()
            .unwrap()
            .clone()
    }

    fn patch_on(
        mut r: Map<String, Value>,
        kind: ResourceKind,
        ops: Value,
    ) -> Result<(Map<String, Value>, PatchOutcome), ScimError> {
        let req = PatchRequest::from_json(&body(ops))?;
        let before = r.clone();
        match apply_patch(&mut r, kind, &req) {
            Ok(out) => Ok((r, out)),
            Err(e) => {
                assert_eq!(r, before, "failed patch must leave the resource unchanged");
                Err(e)
            }
        }
    }

    fn patch_user(ops: Value) -> Map<String, Value> {
        patch_on(user(), ResourceKind::User, ops)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .0
    }

    fn user_err(ops: Value) -> ScimType {
        patch_on(user(), ResourceKind::User, ops)
            .expect_err("should fail")
            .scim_type()
            .unwrap()
    }

    fn members_of(ops: Value) -> Vec<MemberOp> {
        let (g, out) = patch_on(group(), ResourceKind::Group, ops).unwrap();
        assert!(g.get("members").is_none(), "members never land in the map");
        out.members
    }

    // ---- request parsing -------------------------------------------------------------

    #[test]
    fn request_parsing_is_lenient_on_case() {
        let r = PatchRequest::from_json(&json!({
            "schemas": [PATCH_OP_SCHEMA],
            "operations": [{"OP": "Replace", "Path": "active", "Value": false}, {"op": "ADD", "value": {}},
                           {"op": "remove", "path": "title"}]
        }))
        .unwrap();
        assert_eq!(r.operations.len(), 3);
        assert_eq!(r.operations[0].op, PatchOpKind::Replace);
        assert_eq!(r.operations[1].op, PatchOpKind::Add);
        assert_eq!(r.operations[1].target, PatchTarget::Resource);
        assert_eq!(r.operations[2].op, PatchOpKind::Remove);
        assert!(r.operations[2].value.is_none());
        let r =
            PatchRequest::from_json(&body(json!([{"op": "replace", "path": ENT, "value": {}}])))
                .unwrap();
        assert_eq!(r.operations[0].target, PatchTarget::Extension(ENT));
        let r = PatchRequest::from_json(&body(json!([{"op": "replace", "path": "", "value": {}}])))
            .unwrap();
        assert_eq!(r.operations[0].target, PatchTarget::Resource);
        let r = PatchRequest::from_json(&body(
            json!([{"op": "add", "path": "title", "value": null}]),
        ))
        .unwrap();
        assert_eq!(r.operations[0].value, Some(Value::Null));
    }

    #[test]
    fn request_parsing_errors() {
        let e = |v: Value| {
            PatchRequest::from_json(&v)
                .unwrap_err()
                .scim_type()
                .unwrap()
        };
        assert_eq!(e(json!([])), ScimType::InvalidSyntax);
        assert_eq!(e(json!("x")), ScimType::InvalidSyntax);
        assert_eq!(
            e(json!({"Operations": [{"op": "add", "value": {}}]})),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(json!({"schemas": ["urn:wrong"], "Operations": [{"op": "add", "value": {}}]})),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(json!({"schemas": PATCH_OP_SCHEMA, "Operations": []})),
            ScimType::InvalidSyntax
        );
        assert_eq!(e(body(json!([]))), ScimType::InvalidSyntax);
        assert_eq!(
            e(json!({"schemas": [PATCH_OP_SCHEMA]})),
            ScimType::InvalidSyntax
        );
        assert_eq!(e(body(json!({"op": "add"}))), ScimType::InvalidSyntax);
        assert_eq!(e(body(json!(["add"]))), ScimType::InvalidSyntax);
        assert_eq!(
            e(body(json!([{"op": "move", "path": "a", "value": 1}]))),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(body(json!([{"op": 1, "path": "a", "value": 1}]))),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(body(json!([{"path": "a", "value": 1}]))),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(body(json!([{"op": "add", "path": "a"}]))),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(body(json!([{"op": "replace", "path": 5, "value": 1}]))),
            ScimType::InvalidPath
        );
        assert_eq!(
            e(body(
                json!([{"op": "replace", "path": "a[b eq", "value": 1}])
            )),
            ScimType::InvalidPath
        );
        assert_eq!(
            e(body(json!([{"op": "replace", "path": "1a", "value": 1}]))),
            ScimType::InvalidPath
        );
        assert_eq!(e(body(json!([{"op": "remove"}]))), ScimType::NoTarget);
        assert_eq!(
            e(body(json!([{"op": "remove", "path": ""}]))),
            ScimType::NoTarget
        );
    }

    // ---- add ---------------------------------------------------------------------------

    #[test]
    fn add_pathless_merges() {
        let u = patch_user(json!([{"op": "add", "value": {
            "title": "Boss",
            "name": {"middleName": "J"},
            "emails": [{"value": "new@x.org", "type": "other"}, {"value": "BABS@jensen.org", "type": "home"}],
            "nickName": null
        }}]));
        assert_eq!(u["title"], "Boss");
        assert_eq!(
            u["name"],
            json!({"givenName": "Barbara", "familyName": "Jensen", "middleName": "J"})
        );
        let emails = u["emails"].as_array().unwrap();
        assert_eq!(
            emails.len(),
            3,
            "existing value (case-insensitive) not duplicated: {emails:?}"
        );
        assert_eq!(emails[2]["value"], "new@x.org");
        assert!(u.get("nickName").is_none());
    }

    #[test]
    fn add_with_path_to_multi_valued_appends() {
        let u = patch_user(
            json!([{"op": "add", "path": "emails", "value": {"value": "x@y.z", "type": "other"}}]),
        );
        assert_eq!(u["emails"].as_array().unwrap().len(), 3);
        let u = patch_user(
            json!([{"op": "add", "path": "phoneNumbers", "value": [{"value": "555", "type": "work"}]}]),
        );
        assert_eq!(u["phoneNumbers"], json!([{"value": "555", "type": "work"}]));
        // Adding a primary value demotes the old primary.
        let u = patch_user(
            json!([{"op": "add", "path": "emails", "value": [{"value": "p@x", "primary": true}]}]),
        );
        let emails = u["emails"].as_array().unwrap();
        assert_eq!(emails[0]["primary"], false);
        assert_eq!(emails[2]["primary"], true);
    }

    #[test]
    fn add_sub_attribute_creates_parent() {
        let mut r = user();
        r.remove("name");
        let req = PatchRequest::from_json(&body(
            json!([{"op": "add", "path": "name.givenName", "value": "B"}]),
        ))
        .unwrap();
        apply_patch(&mut r, ResourceKind::User, &req).unwrap();
        assert_eq!(r["name"], json!({"givenName": "B"}));
        let u = patch_user(json!([{"op": "add", "path": "name.givenName", "value": "Babs"}]));
        assert_eq!(u["name"]["givenName"], "Babs");
        assert_eq!(u["name"]["familyName"], "Jensen");
    }

    #[test]
    fn add_simple_sets_and_canonicalises_key() {
        let u = patch_user(json!([{"op": "add", "path": "TITLE", "value": "Boss"}]));
        assert_eq!(u["title"], "Boss");
        let u = patch_user(json!([{"op": "Add", "path": "externalId", "value": "new"}]));
        assert_eq!(u["externalId"], "new");
        // Existing key spelling is kept.
        let mut r = user();
        r.insert("DisplayName".into(), json!("old"));
        let (r, _) = patch_on(
            r,
            ResourceKind::User,
            json!([{"op": "replace", "path": "displayname", "value": "new"}]),
        )
        .unwrap();
        assert_eq!(r["DisplayName"], "new");
        assert!(r.get("displayName").is_none());
        let u = patch_user(json!([{"op": "replace", "path": "USERNAME", "value": "bj2"}]));
        assert_eq!(u["userName"], "bj2");
    }

    /// The message of a refusal, which must be `invalidSyntax` and name `attr`.
    fn refused_naming(e: ScimError, attr: &str) {
        assert_eq!(e.scim_type(), Some(ScimType::InvalidSyntax), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("'{attr}'")), "{attr}: {msg}");
    }

    #[test]
    fn undeclared_attributes_are_refused() {
        let on_user = |ops: Value| patch_on(user(), ResourceKind::User, ops).unwrap_err();
        let cases = [
            (
                json!([{"op": "add", "value": {"favouriteColour": "blue"}}]),
                "favouriteColour",
            ),
            (
                json!([{"op": "add", "path": "tags", "value": ["a"]}]),
                "tags",
            ),
            (
                json!([{"op": "replace", "path": "name.nickname", "value": "b"}]),
                "name.nickname",
            ),
            (
                json!([{"op": "add", "path": "emails", "value": [{"value": "x@y", "label": "l"}]}]),
                "emails.label",
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq \"work\"].label", "value": "l"}]),
                "emails.label",
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq \"work\"]", "value": {"label": "l"}}]),
                "emails.label",
            ),
            (
                json!([{"op": "replace", "value": {"name": {"givenName": "B", "nick": "b"}}}]),
                "name.nick",
            ),
            (
                json!([{"op": "add", "value": {"urn:acme:2.0:User": {"badge": "7"}}}]),
                "urn:acme:2.0:User",
            ),
            (
                json!([{"op": "add", "path": "urn:acme:2.0:User:badge", "value": "7"}]),
                "urn:acme:2.0:User",
            ),
            (
                json!([{"op": "add", "value": {"urn:acme:2.0:User:badge": "7"}}]),
                "urn:acme:2.0:User",
            ),
            (
                json!([{"op": "add", "path": format!("{ENT}:shoeSize"), "value": "44"}]),
                &format!("{ENT}:shoeSize"),
            ),
            (
                json!([{"op": "add", "path": ENT, "value": {"department": "D", "shoeSize": 44}}]),
                &format!("{ENT}:shoeSize"),
            ),
            (
                json!([{"op": "add", "path": format!("{ENT}:manager"), "value": {"value": "m", "x": 1}}]),
                &format!("{ENT}:manager.x"),
            ),
            (
                json!([{"op": "add", "path": "members", "value": [{"value": "x"}]}]),
                "members",
            ),
        ];
        for (ops, attr) in cases {
            refused_naming(on_user(ops), attr);
        }
        let on_group = |ops: Value| patch_on(group(), ResourceKind::Group, ops).unwrap_err();
        refused_naming(
            on_group(json!([{"op": "add", "path": "emails", "value": [{"value": "a@b"}]}])),
            "emails",
        );
        refused_naming(
            on_group(json!([{"op": "add", "value": {ENT: {"department": "D"}}}])),
            ENT,
        );
        refused_naming(
            on_group(
                json!([{"op": "add", "path": "members", "value": [{"value": "u1", "nested": true}]}]),
            ),
            "members.nested",
        );
        // An extension object carrying its own `schemas` (scim2-models does) is fine.
        let u = patch_user(
            json!([{"op": "add", "path": ENT, "value": {"schemas": [ENT], "department": "D"}}]),
        );
        assert_eq!(u[ENT], json!({"department": "D"}));
        let m = normalize_resource(
            &json!({"userName": "a", ENT: {"schemas": [ENT], "division": "V"}}),
            ResourceKind::User,
        )
        .unwrap();
        assert_eq!(m[ENT], json!({"division": "V"}));
        // id, meta and schemas in a path-less value are harmless and ignored.
        let u = patch_user(json!([{"op": "replace", "value": {
            "id": "x", "meta": {"version": "1"}, "schemas": ["urn:x"], "title": "t"}}]));
        assert_eq!(u["title"], "t");
        assert_eq!(u["schemas"], json!([USER]));
        // Removing something undeclared stores nothing: harmless, and how junk stored
        // before this check is cleaned up.
        let u = patch_user(json!([{"op": "remove", "path": "favouriteColour"}]));
        assert_eq!(u, user());
        let mut junk = user();
        junk.insert("favouriteColour".into(), json!("blue"));
        let (cleaned, _) = patch_on(
            junk.clone(),
            ResourceKind::User,
            json!([{"op": "remove", "path": "FAVOURITECOLOUR"}]),
        )
        .unwrap();
        assert_eq!(cleaned, user());
        // Junk already stored doesn't block an unrelated change (a deactivation).
        let (r, _) = patch_on(
            junk,
            ResourceKind::User,
            json!([{"op": "replace", "path": "active", "value": "False"}]),
        )
        .unwrap();
        assert_eq!(r["active"], false);
        assert_eq!(r["favouriteColour"], "blue");
    }

    // ---- replace -----------------------------------------------------------------------

    #[test]
    fn replace_pathless_okta_active() {
        let u = patch_user(json!([{"op": "replace", "value": {"active": false}}]));
        assert_eq!(u["active"], false);
    }

    #[test]
    fn replace_pathless_entra_dotted_and_urn_keys() {
        let u = patch_user(json!([{"op": "replace", "value": {
            "displayName": "x",
            "name.givenName": "y",
            "name.familyName": "z",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "1",
            "active": "False"
        }}]));
        assert_eq!(u["displayName"], "x");
        assert_eq!(u["name"], json!({"givenName": "y", "familyName": "z"}));
        assert_eq!(u[ENT], json!({"employeeNumber": "1"}));
        assert_eq!(u["schemas"], json!([USER, ENT]));
        assert_eq!(u["active"], false);
    }

    #[test]
    fn replace_pathless_extension_object_merges() {
        let mut r = user();
        r.insert(ENT.into(), json!({"department": "old", "costCenter": "cc"}));
        let (r, _) = patch_on(
            r,
            ResourceKind::User,
            json!([{"op": "replace", "value": {ENT: {"department": "new"}}}]),
        )
        .unwrap();
        assert_eq!(r[ENT], json!({"department": "new", "costCenter": "cc"}));
        assert_eq!(r["schemas"], json!([USER, ENT]));
        // URN key in a different case merges into the existing object.
        let (r, _) = patch_on(
            r,
            ResourceKind::User,
            json!([{"op": "replace", "value": {ENT.to_uppercase(): {"division": "d"}}}]),
        )
        .unwrap();
        assert_eq!(r[ENT]["division"], "d");
        assert_eq!(r.len(), user().len() + 1);
    }

    #[test]
    fn served_custom_extension_attributes() {
        let urn = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";
        let _served = crate::scim::extensions::serve_in_this_thread(&[
            &format!("{urn}:badge"),
            &format!("{urn}:level=integer"),
            &format!("{urn}:tags=string[]"),
        ]);
        let u = patch_user(json!([{"op": "add", "value": {urn: {"badge": "7", "level": null}}}]));
        assert_eq!(u[urn], json!({"badge": "7"}));
        assert!(u["schemas"].as_array().unwrap().contains(&json!(urn)));
        let u = patch_user(
            json!([{"op": "replace", "path": format!("{urn}:BADGE"), "value": "8"},
                                  {"op": "add", "path": format!("{urn}:tags"), "value": ["a", "b"]},
                                  {"op": "add", "path": format!("{urn}:tags"), "value": "c"}]),
        );
        assert_eq!(u[urn], json!({"badge": "8", "tags": ["a", "b", "c"]}));
        let u = patch_user(json!([{"op": "replace", "value": {format!("{urn}:level"): 3}}]));
        assert_eq!(u[urn], json!({"level": 3}));
        // Typed, and nothing else in the extension.
        assert_eq!(
            user_err(json!([{"op": "add", "path": format!("{urn}:level"), "value": "x"}])),
            ScimType::InvalidValue
        );
        refused_naming(
            patch_on(
                user(),
                ResourceKind::User,
                json!([{"op": "add", "path": format!("{urn}:other"), "value": "x"}]),
            )
            .unwrap_err(),
            &format!("{urn}:other"),
        );
        // Removing the whole extension drops it from `schemas`.
        let mut r = user();
        r.insert(urn.into(), json!({"badge": "1"}));
        r.insert("schemas".into(), json!([USER, urn]));
        let (r, _) = patch_on(
            r,
            ResourceKind::User,
            json!([{"op": "remove", "path": urn}]),
        )
        .unwrap();
        assert_eq!(r, user());
    }

    #[test]
    fn replace_with_path() {
        let u = patch_user(json!([{"op": "replace", "path": "name.givenName", "value": "Babs"}]));
        assert_eq!(u["name"]["givenName"], "Babs");
        assert_eq!(u["name"]["familyName"], "Jensen");
        // replace on a complex attribute merges sub-attributes (RFC 7644 §3.5.2.3).
        let u = patch_user(
            json!([{"op": "replace", "path": "name", "value": {"givenName": "B", "familyName": null}}]),
        );
        assert_eq!(u["name"], json!({"givenName": "B"}));
        // replace on a multi-valued attribute without filter replaces the whole array.
        let u = patch_user(
            json!([{"op": "replace", "path": "emails", "value": [{"value": "only@x", "type": "work"}]}]),
        );
        assert_eq!(u["emails"], json!([{"value": "only@x", "type": "work"}]));
        let u = patch_user(
            json!([{"op": "replace", "path": "emails", "value": {"value": "single@x"}}]),
        );
        assert_eq!(u["emails"], json!([{"value": "single@x"}]));
        let u = patch_user(json!([{"op": "replace", "path": "emails", "value": []}]));
        assert!(u.get("emails").is_none());
    }

    #[test]
    fn replace_filtered_sub_attribute() {
        let u = patch_user(
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "new@example.com"}]),
        );
        assert_eq!(
            u["emails"][0],
            json!({"value": "new@example.com", "type": "work", "primary": true})
        );
        assert_eq!(u["emails"][1]["value"], "babs@jensen.org");
        // Type filter values are case-insensitive ("Work").
        let u = patch_user(
            json!([{"op": "replace", "path": "emails[type eq \"Work\"].value", "value": "n@x"}]),
        );
        assert_eq!(u["emails"][0]["value"], "n@x");
    }

    #[test]
    fn replace_filtered_creates_missing_element_for_entra() {
        let mut r = user();
        r.remove("emails");
        let (r, _) = patch_on(r, ResourceKind::User, json!([
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "w@x.org"},
            {"op": "Replace", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "555"},
            {"op": "Replace", "path": "addresses[type eq \"work\"].streetAddress", "value": "1 Main"},
            {"op": "Replace", "path": "addresses[type eq \"work\"].locality", "value": "Town"}
        ])).unwrap();
        assert_eq!(r["emails"], json!([{"type": "work", "value": "w@x.org"}]));
        assert_eq!(
            r["phoneNumbers"],
            json!([{"type": "mobile", "value": "555"}])
        );
        assert_eq!(
            r["addresses"],
            json!([{"type": "work", "streetAddress": "1 Main", "locality": "Town"}])
        );
        // `and` of equalities too, with coercion of the literal for booleans.
        let u = patch_user(
            json!([{"op": "replace", "path": "emails[type eq \"other\" and primary eq \"false\"].display", "value": "D"}]),
        );
        assert_eq!(
            u["emails"][2],
            json!({"type": "other", "primary": false, "display": "D"})
        );
        // Filtered replace without sub-attribute and no match creates the element too.
        let u = patch_user(
            json!([{"op": "replace", "path": "ims[type eq \"xmpp\"]", "value": {"value": "me@jabber"}}]),
        );
        assert_eq!(u["ims"], json!([{"type": "xmpp", "value": "me@jabber"}]));
    }

    #[test]
    fn filtered_no_match_with_complex_filter_is_no_target() {
        assert_eq!(
            user_err(
                json!([{"op": "replace", "path": "emails[value co \"nomatch\"].type", "value": "work"}])
            ),
            ScimType::NoTarget
        );
        assert_eq!(
            user_err(
                json!([{"op": "replace", "path": "emails[type eq \"a\" or type eq \"b\"].value", "value": "v"}])
            ),
            ScimType::NoTarget
        );
    }

    #[test]
    fn replace_filtered_element_with_object_merges() {
        let u = patch_user(
            json!([{"op": "replace", "path": "emails[type eq \"home\"]", "value": {"value": "h@x", "primary": "True"}}]),
        );
        assert_eq!(
            u["emails"][1],
            json!({"value": "h@x", "type": "home", "primary": true})
        );
        assert_eq!(u["emails"][0]["primary"], false, "single primary kept");
        assert_eq!(
            user_err(
                json!([{"op": "replace", "path": "emails[type eq \"home\"]", "value": "str"}])
            ),
            ScimType::InvalidValue
        );
    }

    #[test]
    fn filter_on_non_multi_valued_attribute_is_invalid_path() {
        assert_eq!(
            user_err(
                json!([{"op": "replace", "path": "name[givenName eq \"x\"].familyName", "value": "y"}])
            ),
            ScimType::InvalidPath
        );
        assert_eq!(
            user_err(json!([{"op": "remove", "path": "userName[value eq \"x\"]"}])),
            ScimType::InvalidPath
        );
        assert_eq!(
            user_err(json!([{"op": "remove", "path": "emails[primary gt true]"}])),
            ScimType::InvalidPath
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "userName.x", "value": "y"}])),
            ScimType::InvalidPath
        );
    }

    // ---- booleans ------------------------------------------------------------------------

    #[test]
    fn entra_string_booleans_are_coerced() {
        for (v, want) in [
            ("False", false),
            ("true", true),
            ("TRUE", true),
            ("false", false),
        ] {
            let u = patch_user(json!([{"op": "Replace", "path": "active", "value": v}]));
            assert_eq!(u["active"], want);
            let u = patch_user(json!([{"op": "Add", "path": "active", "value": v}]));
            assert_eq!(u["active"], want);
        }
        let u = patch_user(
            json!([{"op": "replace", "path": "emails[type eq \"home\"].primary", "value": "True"}]),
        );
        assert_eq!(u["emails"][1]["primary"], true);
        assert_eq!(u["emails"][0]["primary"], false);
        let u = patch_user(json!([{"op": "Add", "path": "roles", "value": [
            {"primary": "True", "type": "WindowsAzureActiveDirectoryRole", "value": "Admin"}]}]));
        assert_eq!(u["roles"][0]["primary"], true);
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "active", "value": "yes"}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "active", "value": 1}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "value": {"active": "nope"}}])),
            ScimType::InvalidValue
        );
    }

    // ---- type checks -----------------------------------------------------------------------

    #[test]
    fn type_checks_on_known_attributes() {
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "title", "value": 5}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "userName", "value": {"a": 1}}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "name", "value": "Barbara"}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "add", "path": "emails", "value": ["a@b"]}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "add", "path": "emails", "value": [{"value": 7}]}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "name.givenName", "value": true}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(
                json!([{"op": "add", "path": "x509Certificates", "value": [{"value": "!!!not base64"}]}])
            ),
            ScimType::InvalidValue
        );
        let u = patch_user(
            json!([{"op": "add", "path": "x509Certificates", "value": [{"value": "TUlJREJ6Q0NBZStn"}]}]),
        );
        assert_eq!(u["x509Certificates"][0]["value"], "TUlJREJ6Q0NBZStn");
        assert_eq!(
            user_err(
                json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": 3}])
            ),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "value": "notAnObject"}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "value": null}])),
            ScimType::InvalidValue
        );
    }

    // ---- remove ----------------------------------------------------------------------------

    #[test]
    fn remove_attribute_sub_attribute_and_elements() {
        let u = patch_user(json!([{"op": "remove", "path": "name.givenName"}]));
        assert_eq!(u["name"], json!({"familyName": "Jensen"}));
        let u = patch_user(
            json!([{"op": "remove", "path": "name.givenName"}, {"op": "remove", "path": "name.familyName"}]),
        );
        assert!(
            u.get("name").is_none(),
            "empty complex attribute is unassigned"
        );
        let u = patch_user(json!([{"op": "remove", "path": "emails[type eq \"work\"]"}]));
        assert_eq!(
            u["emails"],
            json!([{"value": "babs@jensen.org", "type": "home"}])
        );
        let u = patch_user(json!([{"op": "remove", "path": "emails[type eq \"work\"].primary"}]));
        assert!(u["emails"][0].get("primary").is_none());
        let u = patch_user(json!([{"op": "remove", "path": "emails"}]));
        assert!(u.get("emails").is_none());
        let u = patch_user(json!([{"op": "remove", "path": "emails[value pr]"}]));
        assert!(u.get("emails").is_none());
        let u = patch_user(json!([{"op": "remove", "path": "EXTERNALID"}]));
        assert!(u.get("externalId").is_none());
        let u = patch_user(json!([{"op": "remove", "path": "emails.type"}]));
        assert!(u["emails"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("type").is_none()));
    }

    #[test]
    fn remove_with_value_list_removes_only_listed() {
        let u = patch_user(
            json!([{"op": "remove", "path": "emails", "value": [{"value": "BABS@jensen.org"}]}]),
        );
        assert_eq!(u["emails"].as_array().unwrap().len(), 1);
        assert_eq!(u["emails"][0]["value"], "bjensen@example.com");
    }

    #[test]
    fn remove_missing_is_idempotent_noop() {
        for path in [
            "title",
            "name.middleName",
            "phoneNumbers[type eq \"work\"]",
            "favouriteColour",
            &format!("{ENT}:manager"),
            &format!("{ENT}:employeeNumber"),
            ENT,
            "emails[type eq \"other\"].value",
        ] {
            let (r, out) = patch_on(
                user(),
                ResourceKind::User,
                json!([{"op": "remove", "path": path}]),
            )
            .unwrap();
            assert_eq!(r, user(), "{path}");
            assert!(!out.changed, "{path}");
        }
    }

    #[test]
    fn required_attribute_cannot_be_removed() {
        assert_eq!(
            user_err(json!([{"op": "remove", "path": "userName"}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "userName", "value": ""}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": "userName", "value": null}])),
            ScimType::InvalidValue
        );
        let e = patch_on(
            group(),
            ResourceKind::Group,
            json!([{"op": "remove", "path": "displayName"}]),
        )
        .unwrap_err();
        assert_eq!(e.scim_type(), Some(ScimType::InvalidValue));
    }

    // ---- null handling -------------------------------------------------------------------

    #[test]
    fn null_value_unassigns() {
        let u = patch_user(json!([{"op": "replace", "path": "externalId", "value": null}]));
        assert!(u.get("externalId").is_none());
        let u = patch_user(json!([{"op": "add", "path": "name.givenName", "value": null}]));
        assert_eq!(u["name"], json!({"familyName": "Jensen"}));
        let u = patch_user(json!([{"op": "replace", "value": {"externalId": null, "title": "T"}}]));
        assert!(u.get("externalId").is_none());
        assert_eq!(u["title"], "T");
        let u = patch_user(
            json!([{"op": "add", "path": "emails", "value": [null, {"value": "n@x", "display": null}]}]),
        );
        assert_eq!(u["emails"][2], json!({"value": "n@x"}));
    }

    // ---- read-only -------------------------------------------------------------------------

    #[test]
    fn read_only_attributes() {
        for p in [
            "id",
            "meta",
            "meta.created",
            "groups",
            &format!("{ENT}:manager.displayName"),
            "schemas",
        ] {
            assert_eq!(
                user_err(json!([{"op": "replace", "path": p, "value": "x"}])),
                ScimType::Mutability,
                "{p}"
            );
        }
        assert_eq!(
            user_err(json!([{"op": "remove", "path": "id"}])),
            ScimType::Mutability
        );
        // Path-less values silently ignore server-owned keys (Okta sends `id`).
        let (u, out) = patch_on(user(), ResourceKind::User, json!([{"op": "replace", "value": {
            "id": "other", "meta": {"version": "x"}, "schemas": ["urn:x"], "groups": [{"value": "g"}]}}])).unwrap();
        assert_eq!(u, user());
        assert!(!out.changed);
    }

    #[test]
    fn password_is_accepted_and_not_stored() {
        let (u, out) = patch_on(
            user(),
            ResourceKind::User,
            json!([{"op": "replace", "path": "password", "value": "s3cret"}]),
        )
        .unwrap();
        assert!(u.get("password").is_none());
        assert!(!out.changed);
        let u =
            patch_user(json!([{"op": "replace", "value": {"password": "s3cret", "title": "t"}}]));
        assert!(u.get("password").is_none());
    }

    // ---- manager ---------------------------------------------------------------------------

    #[test]
    fn manager_shapes_are_normalised() {
        let path = format!("{ENT}:manager");
        for v in [
            json!("m1"),
            json!([{"$ref": null, "value": "m1"}]),
            json!({"value": "m1"}),
            json!({"value": "m1", "displayName": "ignored (readOnly)"}),
        ] {
            let u = patch_user(json!([{"op": "Replace", "path": path, "value": v}]));
            assert_eq!(u[ENT], json!({"manager": {"value": "m1"}}), "{v}");
            assert!(u["schemas"].as_array().unwrap().contains(&json!(ENT)));
            let u = patch_user(json!([{"op": "Add", "path": path, "value": v}]));
            assert_eq!(u[ENT], json!({"manager": {"value": "m1"}}), "{v}");
        }
        let u = patch_user(
            json!([{"op": "replace", "path": path, "value": {"value": "m1", "$ref": "../Users/m1"}}]),
        );
        assert_eq!(
            u[ENT]["manager"],
            json!({"value": "m1", "$ref": "../Users/m1"})
        );
        let u =
            patch_user(json!([{"op": "replace", "path": format!("{path}.value"), "value": "m2"}]));
        assert_eq!(u[ENT]["manager"], json!({"value": "m2"}));
        // Changing the manager replaces the whole object (stale $ref dropped).
        let mut r = user();
        r.insert(
            ENT.into(),
            json!({"manager": {"value": "m1", "$ref": "../Users/m1"}, "department": "D"}),
        );
        r["schemas"].as_array_mut().unwrap().push(json!(ENT));
        let (r2, _) = patch_on(
            r.clone(),
            ResourceKind::User,
            json!([{"op": "replace", "path": path, "value": "m9"}]),
        )
        .unwrap();
        assert_eq!(
            r2[ENT],
            json!({"manager": {"value": "m9"}, "department": "D"})
        );
        // Removal, with and without the Entra value list.
        for op in [
            json!({"op": "Remove", "path": path, "value": [{"value": "m1"}]}),
            json!({"op": "remove", "path": path}),
            json!({"op": "replace", "path": path, "value": null}),
            json!({"op": "replace", "path": path, "value": []}),
        ] {
            let (r3, out) = patch_on(r.clone(), ResourceKind::User, json!([op])).unwrap();
            assert_eq!(r3[ENT], json!({"department": "D"}), "{op}");
            assert!(out.changed);
        }
        // Removing the last extension attribute drops the object and its schema URN.
        let u = patch_user(
            json!([{"op": "add", "path": path, "value": "m1"}, {"op": "remove", "path": path}]),
        );
        assert_eq!(u, user());
        assert_eq!(
            user_err(
                json!([{"op": "replace", "path": path, "value": [{"value": "a"}, {"value": "b"}]}])
            ),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": path, "value": 42}])),
            ScimType::InvalidValue
        );
    }

    #[test]
    fn whole_extension_path() {
        let u = patch_user(
            json!([{"op": "add", "path": ENT, "value": {"department": "D", "employeeNumber": "7"}}]),
        );
        assert_eq!(u[ENT], json!({"department": "D", "employeeNumber": "7"}));
        let u2 = {
            let (r, _) = patch_on(
                u.clone(),
                ResourceKind::User,
                json!([{"op": "remove", "path": ENT}]),
            )
            .unwrap();
            r
        };
        assert_eq!(u2, user());
        assert_eq!(
            user_err(json!([{"op": "add", "path": ENT, "value": "x"}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            user_err(json!([{"op": "add", "path": ENT, "value": {"employeeNumber": 5}}])),
            ScimType::InvalidValue
        );
    }

    #[test]
    fn core_urn_object_in_pathless_value() {
        let u = patch_user(
            json!([{"op": "replace", "value": {USER: {"title": "T", "active": "false"}}}]),
        );
        assert_eq!(u["title"], "T");
        assert_eq!(u["active"], false);
        assert!(u.get(USER).is_none());
        let m = normalize_resource(&json!({USER: {"userName": "a"}}), ResourceKind::User).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"schemas": [USER], "userName": "a"})
        );
        assert_eq!(
            user_err(json!([{"op": "replace", "path": USER, "value": {}}])),
            ScimType::InvalidPath
        );
    }

    #[test]
    fn microsoft_group_schema_is_tolerated() {
        let ms = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";
        let mut g = group();
        g.insert("schemas".into(), json!([GROUP, ms]));
        let (g2, out) = patch_on(g, ResourceKind::Group, json!([
            {"op": "Replace", "path": "displayName", "value": "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"}
        ])).unwrap();
        assert_eq!(g2["schemas"], json!([GROUP, ms]));
        assert!(out.changed);
    }

    #[test]
    fn core_urn_prefixed_path_is_core() {
        let u = patch_user(
            json!([{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:userName", "value": "x"}]),
        );
        assert_eq!(u["userName"], "x");
        let u = patch_user(
            json!([{"op": "replace", "value": {"urn:ietf:params:scim:schemas:core:2.0:User:title": "T"}}]),
        );
        assert_eq!(u["title"], "T");
    }

    // ---- atomicity / outcome ------------------------------------------------------------

    #[test]
    fn failing_operation_rolls_back_everything() {
        let e = patch_on(
            user(),
            ResourceKind::User,
            json!([
                {"op": "replace", "path": "title", "value": "T"},
                {"op": "replace", "path": "active", "value": "maybe"}
            ]),
        )
        .unwrap_err();
        assert_eq!(e.scim_type(), Some(ScimType::InvalidValue));
    }

    #[test]
    fn changed_flag() {
        let (_, out) = patch_on(
            user(),
            ResourceKind::User,
            json!([{"op": "replace", "path": "active", "value": true}]),
        )
        .unwrap();
        assert!(!out.changed);
        let (_, out) = patch_on(
            user(),
            ResourceKind::User,
            json!([{"op": "replace", "path": "active", "value": "False"}]),
        )
        .unwrap();
        assert!(out.changed);
        let (_, out) = patch_on(user(), ResourceKind::User, json!([{"op": "add", "path": "emails", "value": {"value": "bjensen@example.com", "type": "work", "primary": true}}])).unwrap();
        assert!(!out.changed, "re-adding an existing value is a no-op");
    }

    // ---- group members ---------------------------------------------------------------------

    fn mv(v: &str) -> MemberValue {
        MemberValue {
            value: v.into(),
            kind: None,
        }
    }

    #[test]
    fn entra_member_ops() {
        assert_eq!(
            members_of(
                json!([{"op": "Add", "path": "members", "value": [{"value": "u1"}, {"value": "u2", "type": "User"}]}])
            ),
            vec![MemberOp::Add(vec![
                mv("u1"),
                MemberValue {
                    value: "u2".into(),
                    kind: Some("User".into())
                }
            ])]
        );
        assert_eq!(
            members_of(json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}]}])),
            vec![MemberOp::Remove(vec!["u1".into()])]
        );
        assert_eq!(
            members_of(json!([{"op": "Remove", "path": "members"}])),
            vec![MemberOp::RemoveAll]
        );
        assert_eq!(
            members_of(json!([{"op": "Remove", "path": "members", "value": null}])),
            vec![MemberOp::RemoveAll]
        );
        assert_eq!(
            members_of(json!([{"op": "remove", "path": "members", "value": []}])),
            vec![]
        );
    }

    #[test]
    fn okta_member_ops() {
        assert_eq!(
            members_of(json!([{"op": "remove", "path": "members[value eq \"u1\"]"}])),
            vec![MemberOp::Remove(vec!["u1".into()])]
        );
        assert_eq!(
            members_of(
                json!([{"op": "remove", "path": "members[value eq \"u1\" or value eq \"u2\"]"}])
            ),
            vec![MemberOp::Remove(vec!["u1".into(), "u2".into()])]
        );
        assert_eq!(
            members_of(
                json!([{"op": "replace", "path": "members", "value": [{"value": "u3", "display": "x"}]}])
            ),
            vec![MemberOp::ReplaceAll(vec![mv("u3")])]
        );
        assert_eq!(
            members_of(json!([{"op": "add", "path": "members", "value": {"value": "u4"}}])),
            vec![MemberOp::Add(vec![mv("u4")])]
        );
        let ops = members_of(json!([{"op": "remove", "path": "members[type eq \"Group\"]"}]));
        assert!(matches!(ops[..], [MemberOp::RemoveWhere(_)]));
        // Okta rename: `id` ignored, members untouched.
        let (g, out) = patch_on(
            group(),
            ResourceKind::Group,
            json!([{"op": "replace", "value": {"id": "abc", "displayName": "New"}}]),
        )
        .unwrap();
        assert_eq!(g["displayName"], "New");
        assert!(out.changed && out.members.is_empty());
    }

    #[test]
    fn pathless_members_and_ordering() {
        let (g, out) = patch_on(
            group(),
            ResourceKind::Group,
            json!([
                {"op": "add", "value": {"members": [{"value": "u1"}], "displayName": "X"}},
                {"op": "replace", "value": {"Members": [{"value": "u2"}]}},
                {"op": "remove", "path": "members[value eq \"u2\"]"},
                {"op": "replace", "path": "members", "value": null}
            ]),
        )
        .unwrap();
        assert_eq!(g["displayName"], "X");
        assert_eq!(
            out.members,
            vec![
                MemberOp::Add(vec![mv("u1")]),
                MemberOp::ReplaceAll(vec![mv("u2")]),
                MemberOp::Remove(vec!["u2".into()]),
                MemberOp::RemoveAll,
            ]
        );
        let (_, out) = patch_on(
            group(),
            ResourceKind::Group,
            json!([{"op": "add", "path": "members", "value": null}]),
        )
        .unwrap();
        assert!(out.members.is_empty() && !out.changed);
    }

    #[test]
    fn member_errors() {
        let e = |ops: Value| {
            patch_on(group(), ResourceKind::Group, ops)
                .unwrap_err()
                .scim_type()
                .unwrap()
        };
        assert_eq!(
            e(json!([{"op": "add", "path": "members", "value": [{"display": "no value"}]}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!([{"op": "add", "path": "members", "value": [{"value": 5}]}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!([{"op": "add", "path": "members", "value": [{"value": ""}]}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!([{"op": "add", "path": "members", "value": [7]}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!([{"op": "add", "path": "members", "value": [{"value": "a", "type": 1}]}])),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!([{"op": "replace", "path": "members[value eq \"a\"].type", "value": "Group"}])),
            ScimType::Mutability
        );
        assert_eq!(
            e(json!([{"op": "remove", "path": "members.value"}])),
            ScimType::InvalidPath
        );
        assert_eq!(
            e(json!([{"op": "remove", "path": "members[value eq]"}])),
            ScimType::InvalidPath
        );
        // Error in a later op discards earlier member ops too (whole request fails).
        assert_eq!(
            e(
                json!([{"op": "add", "path": "members", "value": [{"value": "a"}]}, {"op": "replace", "path": "displayName", "value": 1}])
            ),
            ScimType::InvalidValue
        );
    }

    #[test]
    fn member_ops_on_a_map() {
        let mut m: BTreeMap<String, Option<String>> = BTreeMap::new();
        apply_member_ops(
            &mut m,
            &[
                MemberOp::Add(vec![
                    mv("u1"),
                    MemberValue {
                        value: "g1".into(),
                        kind: Some("Group".into()),
                    },
                    mv("u2"),
                ]),
                MemberOp::Add(vec![mv("u1")]),
            ],
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["g1"], Some("Group".into()));
        let where_group = filter::parse_filter("type eq \"group\"").unwrap();
        apply_member_ops(&mut m, &[MemberOp::RemoveWhere(where_group)]).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["u1", "u2"]);
        let where_value = filter::parse_filter("value sw \"u1\" or not (value pr)").unwrap();
        apply_member_ops(&mut m, &[MemberOp::RemoveWhere(where_value)]).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["u2"]);
        apply_member_ops(
            &mut m,
            &[MemberOp::Remove(vec!["u2".into(), "nope".into()])],
        )
        .unwrap();
        assert!(m.is_empty());
        apply_member_ops(
            &mut m,
            &[
                MemberOp::Add(vec![mv("a")]),
                MemberOp::ReplaceAll(vec![mv("b")]),
            ],
        )
        .unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["b"]);
        apply_member_ops(&mut m, &[MemberOp::RemoveAll]).unwrap();
        assert!(m.is_empty());
    }

    // ---- cost -------------------------------------------------------------------------

    thread_local! {
        pub(super) static SAME_ELEMENT_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn comparisons(f: impl FnOnce()) -> u64 {
        SAME_ELEMENT_CALLS.with(|c| c.set(0));
        f();
        SAME_ELEMENT_CALLS.with(std::cell::Cell::get)
    }

    /// Adding or removing n values of a multi-valued attribute compares a bounded number
    /// of elements per value (through an index), not each value with every element:
    /// O(n log n), where a scan made it O(n²).
    #[test]
    fn path_filters_are_bounded_except_member_id_lists() {
        let or_list = |attr: &str, n: usize| {
            (0..n)
                .map(|i| format!("{attr} eq \"v{i}\""))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let ok = |path: String| {
            PatchRequest::from_json(&body(json!([{"op": "remove", "path": path}]))).map(|_| ())
        };
        ok(format!("emails[{}]", or_list("value", 100))).unwrap();
        let e = ok(format!("emails[{}]", or_list("value", 101))).unwrap_err();
        assert_eq!(e.scim_type(), Some(ScimType::InvalidPath));
        ok(format!("members[{}]", or_list("value", 5_000))).unwrap();
        assert!(ok(format!("members[{}]", or_list("display", 101))).is_err());
        assert!(ok(format!(
            "members[type eq \"User\" and ({})]",
            or_list("value", 100)
        ))
        .is_err());
    }

    #[test]
    fn multi_valued_adds_and_removes_are_not_quadratic() {
        let n = 1_000;
        let roles = |from: usize| -> Vec<Value> {
            (from..from + n)
                .map(|i| json!({"value": format!("Role-{i}"), "type": if i % 2 == 0 { "a" } else { "b" }}))
                .collect()
        };
        let mut r = user();
        r.insert("roles".into(), Value::Array(roles(0)));
        // Half of them already there (in another case), half new; then remove them all.
        let again: Vec<Value> = roles(n / 2)
            .into_iter()
            .map(|mut v| {
                v["value"] = json!(v["value"].as_str().unwrap().to_uppercase());
                v
            })
            .collect();
        let add = PatchRequest::from_json(&body(
            json!([{"op": "add", "path": "roles", "value": again}]),
        ))
        .unwrap();
        let mut added = r.clone();
        let calls = comparisons(|| {
            apply_patch(&mut added, ResourceKind::User, &add).unwrap();
        });
        assert_eq!(added["roles"].as_array().unwrap().len(), n + n / 2);
        assert!(
            calls <= 4 * n as u64,
            "{calls} comparisons to add {n} values"
        );
        let remove_list: Vec<Value> = roles(0)
            .into_iter()
            .chain(roles(n))
            .map(|v| json!({"value": v["value"]}))
            .collect();
        let remove = PatchRequest::from_json(&body(
            json!([{"op": "remove", "path": "roles", "value": remove_list}]),
        ))
        .unwrap();
        let calls = comparisons(|| {
            apply_patch(&mut added, ResourceKind::User, &remove).unwrap();
        });
        assert_eq!(added.get("roles"), None);
        assert!(
            calls <= 4 * n as u64,
            "{calls} comparisons to remove {} values",
            2 * n
        );
    }

    /// `cargo test --release --lib -- --ignored --nocapture bench_patch_adds`: one PATCH
    /// adding 20,000 values to a multi-valued attribute, and one adding 20,000 members.
    #[test]
    #[ignore]
    fn bench_patch_adds() {
        use std::time::Instant;
        let n = 20_000;
        let roles: Vec<Value> = (0..n)
            .map(|i| json!({"value": format!("role-{i}"), "type": "t"}))
            .collect();
        let req = PatchRequest::from_json(&body(
            json!([{"op": "add", "path": "roles", "value": roles}]),
        ))
        .unwrap();
        let t = Instant::now();
        let mut u = user();
        // Refused at the end (over MAX_RESOURCE_BYTES): the work before is what counts.
        let _ = apply_patch(&mut u, ResourceKind::User, &req);
        println!("add {n} roles in one PATCH: {:?}", t.elapsed());
        let members: Vec<Value> = (0..n)
            .map(|i| json!({"value": format!("{i:08x}-0000-4000-8000-000000000000")}))
            .collect();
        let req = PatchRequest::from_json(&body(
            json!([{"op": "add", "path": "members", "value": members}]),
        ))
        .unwrap();
        let t = Instant::now();
        let mut g = group();
        let out = apply_patch(&mut g, ResourceKind::Group, &req).unwrap();
        let mut current = BTreeMap::new();
        apply_member_ops(&mut current, &out.members).unwrap();
        println!(
            "add {n} members in one PATCH (parse, apply): {:?}",
            t.elapsed()
        );
        assert_eq!(current.len(), n);
    }

    // ---- normalize_resource / split_members ----------------------------------------------

    #[test]
    fn normalize_user_body() {
        let doc = json!({
            "schemas": [USER, ENT],
            "id": "client-chosen", "meta": {"created": "x"},
            "USERNAME": "bjensen",
            "active": "True",
            "name": {"givenName": "B", "middleName": null},
            "title": null,
            "emails": [{"value": "b@x", "primary": "false", "display": null}, null],
            "groups": [{"value": "g1"}],
            "password": "pw",
            ENT: {"employeeNumber": "1", "manager": {"value": "m", "$ref": null, "displayName": "M"}},
        });
        let m = normalize_resource(&doc, ResourceKind::User).unwrap();
        assert_eq!(
            Value::Object(m),
            json!({
                "schemas": [USER, ENT],
                "userName": "bjensen",
                "active": true,
                "name": {"givenName": "B"},
                "emails": [{"value": "b@x", "primary": false}],
                ENT: {"employeeNumber": "1", "manager": {"value": "m"}},
            })
        );
    }

    #[test]
    fn normalize_refuses_undeclared_attributes() {
        let refused = |doc: Value, kind, attr: &str| {
            refused_naming(normalize_resource(&doc, kind).unwrap_err(), attr)
        };
        let u = |extra: Value| {
            let mut d = json!({"schemas": [USER], "userName": "a"});
            d.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            d
        };
        refused(
            u(json!({"favourite": {"b": 1}})),
            ResourceKind::User,
            "favourite",
        );
        refused(
            u(json!({"urn:acme:ext:1.0:User": {"badge": "7"}})),
            ResourceKind::User,
            "urn:acme:ext:1.0:User",
        );
        refused(
            u(json!({"urn:acme:ext:1.0:User:badge": "7"})),
            ResourceKind::User,
            "urn:acme:ext:1.0:User:badge",
        );
        refused(
            u(json!({ENT: {"shoeSize": 1}})),
            ResourceKind::User,
            &format!("{ENT}:shoeSize"),
        );
        refused(
            u(json!({format!("{ENT}:shoeSize"): 1})),
            ResourceKind::User,
            &format!("{ENT}:shoeSize"),
        );
        refused(
            u(json!({"name": {"nick": "x"}})),
            ResourceKind::User,
            "name.nick",
        );
        refused(
            u(json!({"emails": [{"value": "a@b", "label": "x"}]})),
            ResourceKind::User,
            "emails.label",
        );
        refused(
            u(json!({"members": [{"value": "x"}]})),
            ResourceKind::User,
            "members",
        );
        refused(
            u(json!({"urn:ietf:params:scim:schemas:core:2.0:User:nope": 1})),
            ResourceKind::User,
            "nope",
        );
        refused(
            json!({"displayName": "g", "emails": [{"value": "a@b"}]}),
            ResourceKind::Group,
            "emails",
        );
        refused(
            json!({"displayName": "g", ENT: {"department": "D"}}),
            ResourceKind::Group,
            ENT,
        );
        refused(
            json!({"displayName": "g", "urn:ietf:params:scim:schemas:core:2.0:User": {"userName": "x"}}),
            ResourceKind::Group,
            "urn:ietf:params:scim:schemas:core:2.0:User",
        );
        refused(
            json!({"displayName": "g", "members": [{"value": "u", "weight": 2}]}),
            ResourceKind::Group,
            "members.weight",
        );
        // A 1 MB undeclared extension attribute is refused for what it is, not its size.
        refused(
            u(json!({"urn:acme:ext:1.0:User": {"blob": "x".repeat(1 << 20)}})),
            ResourceKind::User,
            "urn:acme:ext:1.0:User",
        );
    }

    #[test]
    fn normalize_adds_missing_schemas() {
        let m = normalize_resource(
            &json!({"userName": "a", ENT: {"department": "D"}}),
            ResourceKind::User,
        )
        .unwrap();
        assert_eq!(m["schemas"], json!([USER, ENT]));
        // Schemas this server doesn't serve are not stored (a harmless `schemas` entry
        // is no reason to refuse a request).
        let m = normalize_resource(
            &json!({"schemas": ["urn:other", GROUP, ENT], "userName": "a"}),
            ResourceKind::User,
        )
        .unwrap();
        assert_eq!(m["schemas"], json!([USER, ENT]));
        let m = normalize_resource(
            &json!({"userName": "a", format!("{ENT}:department"): "D"}),
            ResourceKind::User,
        )
        .unwrap();
        assert_eq!(m[ENT], json!({"department": "D"}));
        assert_eq!(m["schemas"], json!([USER, ENT]));
    }

    #[test]
    fn normalize_errors() {
        let e = |v: Value, k| normalize_resource(&v, k).unwrap_err().scim_type().unwrap();
        assert_eq!(e(json!([]), ResourceKind::User), ScimType::InvalidSyntax);
        assert_eq!(e(json!({}), ResourceKind::User), ScimType::InvalidValue);
        assert_eq!(
            e(json!({"userName": ""}), ResourceKind::User),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!({"userName": 5}), ResourceKind::User),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!({"userName": null}), ResourceKind::User),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(
                json!({"userName": "a", "active": "maybe"}),
                ResourceKind::User
            ),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(
                json!({"userName": "a", "emails": "a@b"}),
                ResourceKind::User
            ),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(
                json!({"userName": "a", "name": [{"givenName": "a"}, {"givenName": "b"}]}),
                ResourceKind::User
            ),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!({"userName": "a", "schemas": "x"}), ResourceKind::User),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(json!({"userName": "a", "schemas": [1]}), ResourceKind::User),
            ScimType::InvalidSyntax
        );
        assert_eq!(
            e(json!({"userName": "a", ENT: "x"}), ResourceKind::User),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(json!({"displayName": "  "}), ResourceKind::Group),
            ScimType::InvalidValue
        );
        assert_eq!(
            e(
                json!({"displayName": "g", "members": [{"value": 1}]}),
                ResourceKind::Group
            ),
            ScimType::InvalidValue
        );
        let msg = normalize_resource(&json!({"userName": "a", "title": 3}), ResourceKind::User)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("title"), "{msg}");
    }

    #[test]
    fn normalize_group_and_split_members() {
        let doc = json!({
            "schemas": [GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "displayName": "G", "externalId": "e",
            "members": [{"value": "u1", "display": "U", "$ref": "x"}, {"value": "g2", "type": "Group"}]
        });
        let m = normalize_resource(&doc, ResourceKind::Group).unwrap();
        assert_eq!(
            m["schemas"][1],
            "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"
        );
        let (rest, members) = split_members(m).unwrap();
        assert!(rest.get("members").is_none());
        assert_eq!(rest["displayName"], "G");
        assert_eq!(
            members.unwrap(),
            vec![
                mv("u1"),
                MemberValue {
                    value: "g2".into(),
                    kind: Some("Group".into())
                }
            ]
        );
        let (_, none) = split_members(
            normalize_resource(&json!({"displayName": "G"}), ResourceKind::Group).unwrap(),
        )
        .unwrap();
        assert!(none.is_none());
        let mut bad = Map::new();
        bad.insert("Members".into(), json!("x"));
        assert_eq!(
            split_members(bad).unwrap_err().scim_type(),
            Some(ScimType::InvalidValue)
        );
    }
}
