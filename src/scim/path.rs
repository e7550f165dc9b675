//! PATCH operation paths (RFC 7644 §3.5.2: `PATH = attrPath / valuePath [subAttr]`).
use std::fmt;

use crate::scim::error::ScimError;
use crate::scim::filter::{Filter, Parser};
use crate::scim::schema;

/// A parsed PATCH path, e.g. `name.givenName`, `emails[type eq "work"].value`,
/// `members[value eq "abc"]`, `urn:…:enterprise:2.0:User:manager`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    /// Extension schema URN as written; `None` for core attributes (a core schema URN
    /// prefix is dropped, it means the same as no prefix).
    pub schema_urn: Option<String>,
    /// Attribute name as written (match case-insensitively).
    pub attr: String,
    /// Value-selection filter (`attr[filter]`); its paths are relative to the elements.
    pub filter: Option<Filter>,
    /// Sub-attribute, from `attr.sub` or `attr[filter].sub`.
    pub sub_attr: Option<String>,
}

impl PatchPath {
    pub fn is_core(&self) -> bool {
        self.schema_urn.is_none()
    }
}

impl fmt::Display for PatchPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.schema_urn {
            write!(f, "{u}:")?;
        }
        f.write_str(&self.attr)?;
        if self.filter.is_some() {
            f.write_str("[…]")?;
        }
        if let Some(s) = &self.sub_attr {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

/// Parses a PATCH `path`; every error is `invalidPath`.
///
/// A bare schema URN (the whole extension object) is not an attribute path and is
/// rejected here; `patch.rs` recognises it before calling this.
pub fn parse_patch_path(s: &str) -> Result<PatchPath, ScimError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ScimError::invalid_path("empty path"));
    }
    let mut p = Parser::new(s, ScimError::invalid_path);
    let head = p.attr_path()?;
    let mut path = PatchPath {
        schema_urn: head.schema_urn,
        attr: head.attr,
        filter: None,
        sub_attr: head.sub_attr,
    };
    if p.eat('[') {
        if path.sub_attr.is_some() {
            return Err(ScimError::invalid_path(format!(
                "a value filter must follow the attribute, not a sub-attribute: '{s}'"
            )));
        }
        path.filter = Some(p.bracket_filter(0)?);
        if p.eat('.') {
            path.sub_attr = Some(p.sub_attr_name()?);
        }
    }
    if !p.at_end() {
        return Err(p.unexpected());
    }
    Ok(path)
}

/// If `s` is exactly a modelled extension schema URN (case-insensitive), its canonical
/// spelling: such a path targets the whole extension object. Core schema URNs are not
/// extensions and give `None`.
pub fn whole_extension(s: &str) -> Option<&'static str> {
    match schema::split_urn(s.trim()) {
        (Some(urn), "") if !schema::is_core_urn(urn) => schema::schema_def(urn).map(|d| d.id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use crate::scim::filter::{AttrPath, CompValue, CompareOp};

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn ok(s: &str) -> PatchPath {
        parse_patch_path(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn bad(s: &str) -> String {
        let e = parse_patch_path(s).expect_err(s);
        assert_eq!(e.scim_type(), Some(ScimType::InvalidPath), "{s}");
        e.to_string()
    }

    #[test]
    fn simple_and_sub_attribute_paths() {
        let p = ok("userName");
        assert_eq!(
            (p.attr.as_str(), p.schema_urn, p.filter, p.sub_attr),
            ("userName", None, None, None)
        );
        let p = ok("name.givenName");
        assert_eq!(p.attr, "name");
        assert_eq!(p.sub_attr.as_deref(), Some("givenName"));
        let p = ok("  active ");
        assert_eq!(p.attr, "active");
        assert!(p.is_core());
        assert_eq!(ok("members").attr, "members");
    }

    #[test]
    fn value_paths() {
        let p = ok(r#"emails[type eq "work"].value"#);
        assert_eq!(p.attr, "emails");
        assert_eq!(p.sub_attr.as_deref(), Some("value"));
        assert_eq!(
            p.filter,
            Some(Filter::Compare {
                path: AttrPath::simple("type"),
                op: CompareOp::Eq,
                value: CompValue::String("work".into())
            })
        );
        let p = ok(r#"members[value eq "2819c223-7f76-453a-919d-413861904646"]"#);
        assert_eq!(p.attr, "members");
        assert!(p.filter.is_some());
        assert!(p.sub_attr.is_none());
        let p = ok(r#"addresses[type eq "work" and primary eq true].streetAddress"#);
        assert!(matches!(p.filter, Some(Filter::And(_))));
        assert_eq!(p.to_string(), "addresses[…].streetAddress");
    }

    #[test]
    fn urn_paths() {
        let p = ok(&format!("{ENT}:employeeNumber"));
        assert_eq!(p.schema_urn.as_deref(), Some(ENT));
        assert_eq!(p.attr, "employeeNumber");
        let p = ok(&format!("{ENT}:manager"));
        assert_eq!(p.attr, "manager");
        let p = ok(&format!("{ENT}:manager.value"));
        assert_eq!(p.sub_attr.as_deref(), Some("value"));
        let p = ok("urn:ietf:params:scim:schemas:core:2.0:User:userName");
        assert!(p.is_core());
        assert_eq!(p.attr, "userName");
        let p = ok(r#"urn:ietf:params:scim:schemas:core:2.0:User:emails[type eq "work"].value"#);
        assert!(p.is_core() && p.filter.is_some());
        let p = ok("urn:example:custom:1.0:User:badge");
        assert_eq!(p.schema_urn.as_deref(), Some("urn:example:custom:1.0:User"));
        assert_eq!(p.to_string(), "urn:example:custom:1.0:User:badge");
    }

    #[test]
    fn whole_extension_detection() {
        assert_eq!(whole_extension(ENT), Some(ENT));
        assert_eq!(whole_extension(&ENT.to_uppercase()), Some(ENT));
        assert_eq!(whole_extension(&format!("{ENT}:manager")), None);
        assert_eq!(whole_extension("userName"), None);
        assert_eq!(
            whole_extension("urn:ietf:params:scim:schemas:core:2.0:User"),
            None
        );
        bad("urn:ietf:params:scim:schemas:core:2.0:User");
        assert!(bad(ENT).contains("names a schema"));
    }

    #[test]
    fn invalid_paths() {
        bad("");
        bad("   ");
        bad("1abc");
        bad("name.givenName.x");
        bad("name..x");
        bad(r#"emails[type eq "work""#);
        bad(r#"emails[type eq "work"]x"#);
        bad(r#"emails[type eq "work"]."#);
        bad(r#"emails[type eq]"#);
        bad(r#"emails[]"#);
        bad(r#"emails.value[type eq "work"]"#);
        bad(r#"emails[type eq "work"][value eq "x"]"#);
        bad(r#"emails[x[y eq "1"]]"#);
        bad("user name");
        bad("\"userName\"");
        bad("emails]");
        let deep = "a[".to_string() + &"(".repeat(10_000) + "b pr" + &")".repeat(10_000) + "]";
        bad(&deep);
    }
}
