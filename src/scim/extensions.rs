//! Extension schemas served besides the built-in ones (core User and Group, enterprise
//! User): Entra's custom extension attributes and the like, configured with
//! `--extension-attributes` (chart `scim.extensionAttributes`).
//!
//! An entry is the attribute's full name as the client writes it, the URN of its schema
//! then `:` and the attribute (`urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User:costCode`),
//! optionally `=TYPE` (`string` by default; `boolean`, `integer`, `decimal`, `dateTime`,
//! `reference`, `binary`) and `[]` for a multi-valued attribute (`=string[]`). The URN's
//! last segment names the resource type it extends (`User` or `Group`). Entries of one
//! URN make one schema, advertised in `/Schemas` and in the resource type's
//! `schemaExtensions`.
//!
//! The set is installed once at start-up ([`install`]); until then (and in unit tests that
//! don't set their own, see `serve_in_this_thread`) only the built-in schemas are served.
use std::sync::{LazyLock, OnceLock};

use super::schema::{AttrType, AttributeDef, Mutability, ResourceKind, Returned, Uniqueness};
use super::schema::{SchemaDef, ENTERPRISE_USER_SCHEMA};

/// A configured entry that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("extension attribute {entry:?}: {why}")]
pub struct ExtensionConfigError {
    pub entry: String,
    pub why: String,
}

/// One configured extension schema and the resource type it extends.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtensionSchema {
    pub kind: ResourceKind,
    pub schema: SchemaDef,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn is_attr_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && s.len() <= 128
}

fn parse_type(t: &str) -> Option<AttrType> {
    Some(match t.to_ascii_lowercase().as_str() {
        "string" => AttrType::String,
        "boolean" => AttrType::Boolean,
        "integer" => AttrType::Integer,
        "decimal" => AttrType::Decimal,
        "datetime" => AttrType::DateTime,
        "reference" => AttrType::Reference,
        "binary" => AttrType::Binary,
        _ => return None,
    })
}

/// `CustomExtensionName` of `urn:…:extension:CustomExtensionName:2.0:User`.
fn schema_name(urn: &str) -> &str {
    let parts: Vec<&str> = urn.split(':').collect();
    match parts.len() {
        n if n >= 4 => parts[n - 3],
        _ => urn,
    }
}

/// Parses the configured entries into one schema per URN (in the order first named).
pub fn parse(entries: &[String]) -> Result<Vec<ExtensionSchema>, ExtensionConfigError> {
    let mut out: Vec<ExtensionSchema> = Vec::new();
    for raw in entries {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let fail = |why: &str| ExtensionConfigError {
            entry: entry.to_string(),
            why: why.to_string(),
        };
        let Some((urn, attr_and_type)) = entry.rsplit_once(':') else {
            return Err(fail("expected URN:attribute"));
        };
        let (attr, type_part) = match attr_and_type.split_once('=') {
            Some((a, t)) => (a.trim(), Some(t.trim())),
            None => (attr_and_type.trim(), None),
        };
        if !urn.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
            || urn.len() < 6
            || !urn.is_ascii()
            || urn.chars().any(|c| c.is_ascii_whitespace() || c == ',')
        {
            return Err(fail(
                "the schema must be a URN (urn:ietf:params:scim:schemas:extension:NAME:2.0:User)",
            ));
        }
        if super::schema::is_core_urn(urn) || urn.eq_ignore_ascii_case(ENTERPRISE_USER_SCHEMA) {
            return Err(fail(
                "core and enterprise User attributes are always served; list only extension attributes",
            ));
        }
        let kind = match urn.rsplit(':').next() {
            Some(t) if t.eq_ignore_ascii_case("User") => ResourceKind::User,
            Some(t) if t.eq_ignore_ascii_case("Group") => ResourceKind::Group,
            _ => {
                return Err(fail(
                    "the URN must end in :User or :Group (the resource type it extends)",
                ))
            }
        };
        if !is_attr_name(attr) {
            return Err(fail(
                "the attribute name must start with a letter and hold only letters, digits, '-' and '_'",
            ));
        }
        let (ty, multi) = match type_part {
            None => (AttrType::String, false),
            Some(t) => {
                let (t, multi) = match t.strip_suffix("[]") {
                    Some(t) => (t, true),
                    None => (t, false),
                };
                let ty = parse_type(t).ok_or_else(|| {
                    fail("unknown type (string, boolean, integer, decimal, dateTime, reference, binary; [] for multi-valued)")
                })?;
                (ty, multi)
            }
        };
        let def = AttributeDef {
            name: leak(attr),
            ty,
            multi_valued: multi,
            required: false,
            case_exact: false,
            mutability: Mutability::ReadWrite,
            returned: Returned::Default,
            uniqueness: Uniqueness::None,
            description: "Extension attribute served by configuration (--extension-attributes).",
            canonical_values: Vec::new(),
            reference_types: if ty == AttrType::Reference {
                vec!["external"]
            } else {
                Vec::new()
            },
            sub_attributes: Vec::new(),
        };
        match out
            .iter_mut()
            .find(|s| s.schema.id.eq_ignore_ascii_case(urn))
        {
            Some(s) => {
                if s.schema.attribute(attr).is_some() {
                    return Err(fail("listed twice"));
                }
                s.schema.attributes.push(def);
            }
            None => out.push(ExtensionSchema {
                kind,
                schema: SchemaDef {
                    id: leak(urn),
                    name: leak(schema_name(urn)),
                    description:
                        "Extension schema served by configuration (--extension-attributes).",
                    attributes: vec![def],
                },
            }),
        }
    }
    Ok(out)
}

/// Every schema this process serves, and which extend which resource type.
#[derive(Debug)]
pub struct Served {
    pub all: Vec<&'static SchemaDef>,
    pub user_extensions: Vec<(&'static str, bool)>,
    pub group_extensions: Vec<(&'static str, bool)>,
}

impl Served {
    fn new(configured: Vec<ExtensionSchema>, builtin: [&'static SchemaDef; 3]) -> Served {
        let mut served = Served {
            all: builtin.to_vec(),
            user_extensions: vec![(ENTERPRISE_USER_SCHEMA, false)],
            group_extensions: Vec::new(),
        };
        for ext in configured {
            let schema: &'static SchemaDef = Box::leak(Box::new(ext.schema));
            served.all.push(schema);
            match ext.kind {
                ResourceKind::User => served.user_extensions.push((schema.id, false)),
                ResourceKind::Group => served.group_extensions.push((schema.id, false)),
            }
        }
        served
    }
}

static INSTALLED: OnceLock<Served> = OnceLock::new();
static BUILT_IN: LazyLock<Served> =
    LazyLock::new(|| Served::new(Vec::new(), super::schema::built_in_schemas()));

/// Serve the configured extension attributes from now on. Once per process, before the
/// SCIM endpoint starts; a second call is refused.
pub fn install(entries: &[String]) -> Result<(), ExtensionConfigError> {
    let configured = parse(entries)?;
    let served = Served::new(configured, super::schema::built_in_schemas());
    INSTALLED.set(served).map_err(|_| ExtensionConfigError {
        entry: entries.join(","),
        why: "extension attributes were already installed".into(),
    })
}

/// What this process serves.
pub fn served() -> &'static Served {
    #[cfg(test)]
    if let Some(s) = TEST_SERVED.with(std::cell::Cell::get) {
        return s;
    }
    INSTALLED.get().unwrap_or_else(|| &BUILT_IN)
}

#[cfg(test)]
thread_local! {
    static TEST_SERVED: std::cell::Cell<Option<&'static Served>> = const { std::cell::Cell::new(None) };
}

/// Unit tests: serve `entries` on this thread until the guard drops (tests run one per
/// thread; `#[tokio::test]` runs on the test's thread).
#[cfg(test)]
pub(crate) fn serve_in_this_thread(entries: &[&str]) -> ServedGuard {
    let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
    let served = Served::new(
        parse(&entries).expect("test extension attributes"),
        super::schema::built_in_schemas(),
    );
    TEST_SERVED.with(|c| c.set(Some(Box::leak(Box::new(served)))));
    ServedGuard
}

#[cfg(test)]
pub(crate) struct ServedGuard;

#[cfg(test)]
impl Drop for ServedGuard {
    fn drop(&mut self) {
        TEST_SERVED.with(|c| c.set(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUSTOM: &str = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";

    fn entries(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_make_one_schema_per_urn() {
        let got = parse(&entries(&[
            &format!("{CUSTOM}:costCode"),
            &format!(" {CUSTOM}:badge=integer "),
            &format!("{}:tags=String[]", CUSTOM.to_uppercase()),
            "urn:acme:scim:2.0:Group:site=dateTime",
            "",
        ]))
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].kind, ResourceKind::User);
        assert_eq!(got[0].schema.id, CUSTOM);
        assert_eq!(got[0].schema.name, "CustomExtensionName");
        let names: Vec<&str> = got[0].schema.attributes.iter().map(|a| a.name).collect();
        assert_eq!(names, ["costCode", "badge", "tags"]);
        let badge = got[0].schema.attribute("BADGE").unwrap();
        assert_eq!(badge.ty, AttrType::Integer);
        assert!(!badge.multi_valued);
        let tags = got[0].schema.attribute("tags").unwrap();
        assert_eq!(tags.ty, AttrType::String);
        assert!(tags.multi_valued);
        assert_eq!(got[1].kind, ResourceKind::Group);
        assert_eq!(got[1].schema.attributes[0].ty, AttrType::DateTime);
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        let why = |e: &str| parse(&entries(&[e])).unwrap_err().why;
        assert!(why("costCode").contains("URN"));
        assert!(why("urn:x").contains("URN"));
        assert!(why("urn:acme:2.0:Device:x").contains(":User or :Group"));
        assert!(why(&format!("{CUSTOM}:1bad")).contains("attribute name"));
        assert!(why(&format!("{CUSTOM}:a.b")).contains("attribute name"));
        assert!(why(&format!("{CUSTOM}:a=complex")).contains("unknown type"));
        assert!(why(&format!("{ENTERPRISE_USER_SCHEMA}:badge")).contains("always served"));
        assert!(why("urn:ietf:params:scim:schemas:core:2.0:User:badge").contains("always served"));
        let twice = parse(&entries(&[
            &format!("{CUSTOM}:a"),
            &format!("{CUSTOM}:A=boolean"),
        ]))
        .unwrap_err();
        assert_eq!(twice.why, "listed twice");
    }

    #[test]
    fn served_set_lists_builtin_and_configured_schemas() {
        assert_eq!(served().all.len(), 3);
        assert_eq!(served().user_extensions.len(), 1);
        {
            let _g = serve_in_this_thread(&[&format!("{CUSTOM}:costCode")]);
            assert_eq!(served().all.len(), 4);
            assert_eq!(served().user_extensions[1].0, CUSTOM);
            assert!(served().group_extensions.is_empty());
        }
        assert_eq!(served().all.len(), 3);
    }
}
