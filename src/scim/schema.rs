//! The SCIM attribute model (RFC 7643): the one place that knows which attributes exist,
//! their types and characteristics. Filter evaluation, PATCH, projection and the
//! discovery endpoints (`/Schemas`, `/ResourceTypes`, `/ServiceProviderConfig`) all read
//! from here so they cannot disagree.
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use super::extensions;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// Entra ID puts this in a Group's `schemas`; it has no attributes we model, we just keep it.
pub const MS_ADSCIM_GROUP_SCHEMA: &str =
    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";
pub const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";
pub const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
pub const SERVICE_PROVIDER_CONFIG_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Binary,
    Reference,
    Complex,
}

impl AttrType {
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Boolean => "boolean",
            AttrType::Decimal => "decimal",
            AttrType::Integer => "integer",
            AttrType::DateTime => "dateTime",
            AttrType::Binary => "binary",
            AttrType::Reference => "reference",
            AttrType::Complex => "complex",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

impl Mutability {
    pub fn as_str(self) -> &'static str {
        match self {
            Mutability::ReadOnly => "readOnly",
            Mutability::ReadWrite => "readWrite",
            Mutability::Immutable => "immutable",
            Mutability::WriteOnly => "writeOnly",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

impl Returned {
    pub fn as_str(self) -> &'static str {
        match self {
            Returned::Always => "always",
            Returned::Never => "never",
            Returned::Default => "default",
            Returned::Request => "request",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    None,
    Server,
    Global,
}

impl Uniqueness {
    pub fn as_str(self) -> &'static str {
        match self {
            Uniqueness::None => "none",
            Uniqueness::Server => "server",
            Uniqueness::Global => "global",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttributeDef {
    pub name: &'static str,
    pub ty: AttrType,
    pub multi_valued: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    pub uniqueness: Uniqueness,
    pub description: &'static str,
    pub canonical_values: Vec<&'static str>,
    pub reference_types: Vec<&'static str>,
    pub sub_attributes: Vec<AttributeDef>,
}

impl AttributeDef {
    /// Case-insensitive sub-attribute lookup (RFC 7643 §2.1: names are case-insensitive).
    pub fn sub_attribute(&self, name: &str) -> Option<&AttributeDef> {
        self.sub_attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    pub fn is_complex(&self) -> bool {
        self.ty == AttrType::Complex
    }

    /// Read-only attributes are server-owned: clients cannot write them.
    pub fn is_read_only(&self) -> bool {
        self.mutability == Mutability::ReadOnly
    }

    /// RFC 7643 §7 representation of this attribute (used by `/Schemas`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(self.ty.as_str()));
        m.insert("multiValued".into(), json!(self.multi_valued));
        m.insert("description".into(), json!(self.description));
        m.insert("required".into(), json!(self.required));
        if !self.canonical_values.is_empty() {
            m.insert("canonicalValues".into(), json!(self.canonical_values));
        }
        m.insert("caseExact".into(), json!(self.case_exact));
        m.insert("mutability".into(), json!(self.mutability.as_str()));
        m.insert("returned".into(), json!(self.returned.as_str()));
        m.insert("uniqueness".into(), json!(self.uniqueness.as_str()));
        if self.ty == AttrType::Reference {
            m.insert("referenceTypes".into(), json!(self.reference_types));
        }
        if self.ty == AttrType::Complex {
            let subs: Vec<Value> = self
                .sub_attributes
                .iter()
                .map(AttributeDef::to_json)
                .collect();
            m.insert("subAttributes".into(), Value::Array(subs));
        }
        Value::Object(m)
    }
}

/// Builder with RFC 7643 §2.2 defaults (readWrite, returned default, not required,
/// caseExact false, uniqueness none, single-valued).
fn attr(name: &'static str, ty: AttrType, description: &'static str) -> AttributeDef {
    AttributeDef {
        name,
        ty,
        multi_valued: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: Returned::Default,
        uniqueness: Uniqueness::None,
        description,
        canonical_values: Vec::new(),
        reference_types: Vec::new(),
        sub_attributes: Vec::new(),
    }
}

fn s(name: &'static str, description: &'static str) -> AttributeDef {
    attr(name, AttrType::String, description)
}

impl AttributeDef {
    fn multi(mut self) -> Self {
        self.multi_valued = true;
        self
    }
    fn required(mut self) -> Self {
        self.required = true;
        self
    }
    fn case_exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    fn mutability(mut self, m: Mutability) -> Self {
        self.mutability = m;
        self
    }
    fn returned(mut self, r: Returned) -> Self {
        self.returned = r;
        self
    }
    fn unique(mut self, u: Uniqueness) -> Self {
        self.uniqueness = u;
        self
    }
    fn canonical(mut self, values: &[&'static str]) -> Self {
        self.canonical_values = values.to_vec();
        self
    }
    fn refs(mut self, types: &[&'static str]) -> Self {
        self.reference_types = types.to_vec();
        self
    }
    fn subs(mut self, subs: Vec<AttributeDef>) -> Self {
        self.sub_attributes = subs;
        self
    }
    /// Marks this attribute and all its sub-attributes read-only (e.g. `meta`, `groups`).
    fn read_only_deep(mut self) -> Self {
        self.mutability = Mutability::ReadOnly;
        self.sub_attributes = self
            .sub_attributes
            .into_iter()
            .map(|a| a.read_only_deep())
            .collect();
        self
    }
}

/// The usual sub-attributes of a multi-valued attribute (RFC 7643 §2.4).
fn multi_valued_subs(
    value: AttributeDef,
    types: &[&'static str],
    with_display: bool,
) -> Vec<AttributeDef> {
    let mut v = vec![value];
    if with_display {
        v.push(s(
            "display",
            "A human-readable name, primarily used for display purposes.",
        ));
    }
    v.push(s("type", "A label indicating the attribute's function.").canonical(types));
    v.push(attr(
        "primary",
        AttrType::Boolean,
        "A Boolean value indicating the 'primary' or preferred attribute value.",
    ));
    v
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchemaDef {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub attributes: Vec<AttributeDef>,
}

impl SchemaDef {
    pub fn attribute(&self, name: &str) -> Option<&AttributeDef> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// RFC 7643 §7 Schema resource.
    pub fn to_json(&self, base_url: &str) -> Value {
        let attrs: Vec<Value> = self.attributes.iter().map(AttributeDef::to_json).collect();
        json!({
            "schemas": [SCHEMA_SCHEMA],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": attrs,
            "meta": {
                "resourceType": "Schema",
                "location": format!("{}/Schemas/{}", trim_base(base_url), self.id),
            },
        })
    }
}

fn trim_base(base_url: &str) -> &str {
    base_url.trim_end_matches('/')
}

/// `id`, `externalId` and `meta` (RFC 7643 §3.1): part of every resource but of no schema.
static COMMON: LazyLock<Vec<AttributeDef>> = LazyLock::new(|| {
    let dt = |n, d| attr(n, AttrType::DateTime, d);
    vec![
        s(
            "id",
            "Unique identifier for the SCIM resource as defined by the service provider.",
        )
        .case_exact()
        .mutability(Mutability::ReadOnly)
        .returned(Returned::Always)
        .unique(Uniqueness::Server),
        s(
            "externalId",
            "Identifier of the resource as defined by the provisioning client.",
        )
        .case_exact(),
        attr("meta", AttrType::Complex, "Resource metadata.")
            .subs(vec![
                s(
                    "resourceType",
                    "The name of the resource type of the resource.",
                )
                .case_exact(),
                dt(
                    "created",
                    "The DateTime that the resource was added to the service provider.",
                ),
                dt(
                    "lastModified",
                    "The most recent DateTime that the resource was modified.",
                ),
                attr(
                    "location",
                    AttrType::Reference,
                    "The URI of the resource being returned.",
                )
                .case_exact()
                .refs(&["uri"]),
                s(
                    "version",
                    "The version (ETag) of the resource being returned.",
                )
                .case_exact(),
            ])
            .read_only_deep(),
    ]
});

static USER: LazyLock<SchemaDef> = LazyLock::new(|| {
    use AttrType::*;
    let r = |n, d| attr(n, Reference, d);
    SchemaDef {
        id: USER_SCHEMA,
        name: "User",
        description: "User Account",
        attributes: vec![
            s(
                "userName",
                "Unique identifier for the User, used by the user to sign in.",
            )
            .required()
            .unique(Uniqueness::Server),
            attr("name", Complex, "The components of the user's real name.").subs(vec![
                s("formatted", "The full name, formatted for display."),
                s("familyName", "The family name of the User."),
                s("givenName", "The given name of the User."),
                s("middleName", "The middle name(s) of the User."),
                s("honorificPrefix", "The honorific prefix(es) of the User."),
                s("honorificSuffix", "The honorific suffix(es) of the User."),
            ]),
            s(
                "displayName",
                "The name of the User, suitable for display to end-users.",
            ),
            s(
                "nickName",
                "The casual way to address the user in real life.",
            ),
            r(
                "profileUrl",
                "A fully qualified URL pointing to the User's online profile.",
            )
            .refs(&["external"]),
            s("title", "The user's title, such as 'Vice President'."),
            s(
                "userType",
                "Identifies the relationship between the organization and the user.",
            ),
            s(
                "preferredLanguage",
                "The User's preferred written or spoken language.",
            ),
            s("locale", "The User's default location for localization."),
            s(
                "timezone",
                "The User's time zone in the 'Olson' time zone database format.",
            ),
            attr(
                "active",
                Boolean,
                "A Boolean value indicating the User's administrative status.",
            ),
            s("password", "The User's cleartext password; never returned.")
                .mutability(Mutability::WriteOnly)
                .returned(Returned::Never),
            attr("emails", Complex, "Email addresses for the user.")
                .multi()
                .subs(multi_valued_subs(
                    s("value", "Email address for the user."),
                    &["work", "home", "other"],
                    true,
                )),
            attr("phoneNumbers", Complex, "Phone numbers for the User.")
                .multi()
                .subs(multi_valued_subs(
                    s("value", "Phone number of the User."),
                    &["work", "home", "mobile", "fax", "pager", "other"],
                    true,
                )),
            attr("ims", Complex, "Instant messaging addresses for the User.")
                .multi()
                .subs(multi_valued_subs(
                    s("value", "Instant messaging address for the User."),
                    &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"],
                    true,
                )),
            attr("photos", Complex, "URLs of photos of the User.")
                .multi()
                .subs(multi_valued_subs(
                    r("value", "URL of a photo of the User.").refs(&["external"]),
                    &["photo", "thumbnail"],
                    true,
                )),
            attr(
                "addresses",
                Complex,
                "A physical mailing address for this User.",
            )
            .multi()
            .subs(vec![
                s(
                    "formatted",
                    "The full mailing address, formatted for display.",
                ),
                s("streetAddress", "The full street address component."),
                s("locality", "The city or locality component."),
                s("region", "The state or region component."),
                s("postalCode", "The zip code or postal code component."),
                s("country", "The country name component."),
                s("type", "A label indicating the attribute's function.")
                    .canonical(&["work", "home", "other"]),
                attr("primary", Boolean, "Whether this is the primary address."),
            ]),
            attr(
                "groups",
                Complex,
                "A list of groups to which the user belongs.",
            )
            .multi()
            .subs(vec![
                s("value", "The identifier of the User's group."),
                r("$ref", "The URI of the corresponding 'Group' resource.")
                    .refs(&["User", "Group"]),
                s("display", "A human-readable name of the group."),
                s("type", "Whether the membership is direct or indirect.")
                    .canonical(&["direct", "indirect"]),
            ])
            .read_only_deep(),
            attr(
                "entitlements",
                Complex,
                "A list of entitlements for the User.",
            )
            .multi()
            .subs(multi_valued_subs(
                s("value", "The value of an entitlement."),
                &[],
                true,
            )),
            attr("roles", Complex, "A list of roles for the User.")
                .multi()
                .subs(multi_valued_subs(
                    s("value", "The value of a role."),
                    &[],
                    true,
                )),
            attr(
                "x509Certificates",
                Complex,
                "A list of certificates issued to the User.",
            )
            .multi()
            .subs(multi_valued_subs(
                attr("value", Binary, "The value of an X.509 certificate.").case_exact(),
                &[],
                true,
            )),
        ],
    }
});

static ENTERPRISE_USER: LazyLock<SchemaDef> = LazyLock::new(|| SchemaDef {
    id: ENTERPRISE_USER_SCHEMA,
    name: "EnterpriseUser",
    description: "Enterprise User",
    attributes: vec![
        s(
            "employeeNumber",
            "Numeric or alphanumeric identifier assigned to a person.",
        ),
        s("costCenter", "Identifies the name of a cost center."),
        s("organization", "Identifies the name of an organization."),
        s("division", "Identifies the name of a division."),
        s("department", "Identifies the name of a department."),
        attr("manager", AttrType::Complex, "The User's manager.").subs(vec![
            s(
                "value",
                "The id of the SCIM resource representing the User's manager.",
            ),
            attr(
                "$ref",
                AttrType::Reference,
                "The URI of the SCIM resource of the manager.",
            )
            .refs(&["User"]),
            s("displayName", "The displayName of the User's manager.")
                .mutability(Mutability::ReadOnly),
        ]),
    ],
});

static GROUP: LazyLock<SchemaDef> = LazyLock::new(|| SchemaDef {
    id: GROUP_SCHEMA,
    name: "Group",
    description: "Group",
    attributes: vec![
        s("displayName", "A human-readable name for the Group.")
            .required()
            .unique(Uniqueness::Server),
        attr(
            "members",
            AttrType::Complex,
            "A list of members of the Group.",
        )
        .multi()
        .subs(vec![
            s("value", "Identifier of the member of this Group.")
                .case_exact()
                .mutability(Mutability::Immutable),
            attr(
                "$ref",
                AttrType::Reference,
                "The URI of the member resource.",
            )
            .refs(&["User", "Group"])
            .mutability(Mutability::Immutable),
            s("display", "A human-readable name of the member.").mutability(Mutability::ReadOnly),
            s("type", "The type of the member.")
                .canonical(&["User", "Group"])
                .mutability(Mutability::Immutable),
        ]),
    ],
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    User,
    Group,
}

/// The schemas a resource type is made of.
#[derive(Debug, Clone, Copy)]
pub struct ResourceSchema {
    pub core: &'static SchemaDef,
    /// Extensions with their `required` flag.
    pub extensions: &'static [(&'static str, bool)],
}

impl ResourceKind {
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
        }
    }

    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceKind::User => "/Users",
            ResourceKind::Group => "/Groups",
        }
    }

    pub fn core_urn(self) -> &'static str {
        match self {
            ResourceKind::User => USER_SCHEMA,
            ResourceKind::Group => GROUP_SCHEMA,
        }
    }

    /// The core schema and the served extensions (the enterprise User extension and the
    /// configured ones, see `scim::extensions`).
    pub fn schema(self) -> ResourceSchema {
        let served = extensions::served();
        match self {
            ResourceKind::User => ResourceSchema {
                core: &USER,
                extensions: &served.user_extensions,
            },
            ResourceKind::Group => ResourceSchema {
                core: &GROUP,
                extensions: &served.group_extensions,
            },
        }
    }

    /// The attribute whose non-empty string value a resource must have.
    pub fn required_name_attr(self) -> &'static str {
        match self {
            ResourceKind::User => "userName",
            ResourceKind::Group => "displayName",
        }
    }

    /// The modelled extension schema with this URN (case-insensitive), if any.
    pub fn extension(self, urn: &str) -> Option<&'static SchemaDef> {
        self.schema()
            .extensions
            .iter()
            .find(|(u, _)| u.eq_ignore_ascii_case(urn))
            .and_then(|(u, _)| schema_def(u))
    }
}

/// The schemas built into the server.
pub(crate) fn built_in_schemas() -> [&'static SchemaDef; 3] {
    [&USER, &ENTERPRISE_USER, &GROUP]
}

/// All served schemas (built-in and configured), for `/Schemas`.
pub fn all_schemas() -> &'static [&'static SchemaDef] {
    &extensions::served().all
}

/// A served schema by URN (case-insensitive).
pub fn schema_def(urn: &str) -> Option<&'static SchemaDef> {
    all_schemas()
        .iter()
        .copied()
        .find(|s| s.id.eq_ignore_ascii_case(urn))
}

/// Whether `urn` may appear in the `schemas` of a `kind` resource: its core schema, a
/// served extension, or (Groups) the marker URN Entra sends.
pub fn is_served_schema(kind: ResourceKind, urn: &str) -> bool {
    urn.eq_ignore_ascii_case(kind.core_urn())
        || kind.extension(urn).is_some()
        || (kind == ResourceKind::Group && urn.eq_ignore_ascii_case(MS_ADSCIM_GROUP_SCHEMA))
}

/// True for the two core resource schemas: a path prefixed with one of them means the same
/// as the bare path (RFC 7644 §3.10).
pub fn is_core_urn(urn: &str) -> bool {
    urn.eq_ignore_ascii_case(USER_SCHEMA) || urn.eq_ignore_ascii_case(GROUP_SCHEMA)
}

/// Definitions of `id`, `externalId`, `meta`.
pub fn common_attribute(name: &str) -> Option<&'static AttributeDef> {
    COMMON.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// Splits a possibly URN-qualified attribute path into `(urn, rest)`.
///
/// URNs contain ':' and '.' (`...:enterprise:2.0:User:manager.value`), and attribute names
/// contain neither ':' nor '.', so the URN ends at the last ':'. Known schema URNs are
/// matched first so that a bare known URN comes back as `(Some(urn), "")`.
pub fn split_urn(path: &str) -> (Option<&str>, &str) {
    if !starts_with_ci(path, "urn:") {
        return (None, path);
    }
    for known in all_schemas().iter().map(|s| s.id) {
        if path.len() >= known.len() && path.is_char_boundary(known.len()) {
            let (head, tail) = path.split_at(known.len());
            if head.eq_ignore_ascii_case(known) {
                if tail.is_empty() {
                    return (Some(head), "");
                }
                if let Some(rest) = tail.strip_prefix(':') {
                    return (Some(head), rest);
                }
            }
        }
    }
    match path.rfind(':') {
        Some(i) => (Some(&path[..i]), &path[i + 1..]),
        None => (None, path),
    }
}

pub(crate) fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Result of resolving an attribute path against a resource type's schemas.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedAttr {
    /// The attribute's definition.
    pub attr: &'static AttributeDef,
    /// Extension schema URN (canonical spelling); `None` for core and common attributes.
    pub schema_urn: Option<&'static str>,
    /// The sub-attribute's definition when the path names one.
    pub sub: Option<&'static AttributeDef>,
}

impl ResolvedAttr {
    /// The definition of the innermost attribute named by the path.
    pub fn leaf(&self) -> &'static AttributeDef {
        self.sub.unwrap_or(self.attr)
    }
}

/// Resolves `attr`, `attr.sub`, `urn:…:attr[.sub]` (case-insensitive) for `kind`.
/// Unknown attributes, unknown sub-attributes and unknown URNs give `None`.
pub fn resolve(kind: ResourceKind, path: &str) -> Option<ResolvedAttr> {
    let (urn, rest) = split_urn(path);
    let (name, sub) = match rest.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    resolve_parts(kind, urn, name, sub)
}

/// Like [`resolve`] with the path already split.
pub fn resolve_parts(
    kind: ResourceKind,
    urn: Option<&str>,
    name: &str,
    sub: Option<&str>,
) -> Option<ResolvedAttr> {
    let (def, schema_urn): (&'static AttributeDef, Option<&'static str>) = match urn {
        None => (find_core_attr(kind, name)?, None),
        Some(u) if u.eq_ignore_ascii_case(kind.core_urn()) => (find_core_attr(kind, name)?, None),
        Some(u) => {
            let ext = kind.extension(u)?;
            (ext.attribute(name)?, Some(ext.id))
        }
    };
    let sub_def = match sub {
        None => None,
        Some(sn) => Some(def.sub_attribute(sn)?),
    };
    Some(ResolvedAttr {
        attr: def,
        schema_urn,
        sub: sub_def,
    })
}

fn find_core_attr(kind: ResourceKind, name: &str) -> Option<&'static AttributeDef> {
    kind.schema()
        .core
        .attribute(name)
        .or_else(|| common_attribute(name))
}

/// Case-insensitive key lookup in a JSON object, returning the stored key.
pub fn get_ci<'a>(map: &'a Map<String, Value>, name: &str) -> Option<(&'a String, &'a Value)> {
    map.get_key_value(name)
        .or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
}

/// The stored spelling of `name` in `map`, if present (case-insensitive).
pub fn key_ci(map: &Map<String, Value>, name: &str) -> Option<String> {
    get_ci(map, name).map(|(k, _)| k.clone())
}

// ---------------------------------------------------------------------------------------
// Discovery documents
// ---------------------------------------------------------------------------------------

/// All Schema resources (RFC 7643 §7), for `GET /Schemas` (the caller wraps them in a
/// ListResponse).
pub fn schemas_list(base_url: &str) -> Vec<Value> {
    all_schemas().iter().map(|s| s.to_json(base_url)).collect()
}

/// One Schema resource for `GET /Schemas/{urn}`; `None` → 404.
pub fn schema_document(base_url: &str, urn: &str) -> Option<Value> {
    schema_def(urn).map(|s| s.to_json(base_url))
}

fn resource_type_json(kind: ResourceKind, base_url: &str) -> Value {
    let schema = kind.schema();
    let exts: Vec<Value> = schema
        .extensions
        .iter()
        .map(|(urn, required)| json!({"schema": urn, "required": required}))
        .collect();
    let description = match kind {
        ResourceKind::User => "User Account",
        ResourceKind::Group => "Group",
    };
    json!({
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": kind.name(),
        "name": kind.name(),
        "endpoint": kind.endpoint(),
        "description": description,
        "schema": schema.core.id,
        "schemaExtensions": exts,
        "meta": {
            "resourceType": "ResourceType",
            "location": format!("{}/ResourceTypes/{}", trim_base(base_url), kind.name()),
        },
    })
}

/// ResourceType resources (RFC 7643 §6) for `GET /ResourceTypes`.
pub fn resource_types(base_url: &str) -> Vec<Value> {
    [ResourceKind::User, ResourceKind::Group]
        .into_iter()
        .map(|k| resource_type_json(k, base_url))
        .collect()
}

/// One ResourceType (`User` / `Group`, case-insensitive) for `GET /ResourceTypes/{name}`.
pub fn resource_type(base_url: &str, name: &str) -> Option<Value> {
    [ResourceKind::User, ResourceKind::Group]
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(name))
        .map(|k| resource_type_json(k, base_url))
}

/// The ServiceProviderConfig (RFC 7643 §5), describing what this server really does.
pub fn service_provider_config(
    base_url: &str,
    max_results: usize,
    max_payload_bytes: usize,
) -> Value {
    json!({
        "schemas": [SERVICE_PROVIDER_CONFIG_SCHEMA],
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": max_payload_bytes},
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": false},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "Authentication scheme using the OAuth Bearer Token Standard",
            "specUri": "https://www.rfc-editor.org/info/rfc6750",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{}/ServiceProviderConfig", trim_base(base_url)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_core_attributes_case_insensitively() {
        let r = resolve(ResourceKind::User, "USERNAME").unwrap();
        assert_eq!(r.attr.name, "userName");
        assert!(r.schema_urn.is_none());
        assert!(r.sub.is_none());
        assert!(!r.attr.case_exact);
        assert_eq!(r.attr.uniqueness, Uniqueness::Server);
        assert!(r.attr.required);
    }

    #[test]
    fn resolves_sub_attributes_and_core_urn_prefix() {
        let r = resolve(ResourceKind::User, "name.givenName").unwrap();
        assert_eq!(r.attr.name, "name");
        assert_eq!(r.sub.unwrap().name, "givenName");
        assert_eq!(r.leaf().name, "givenName");
        let r = resolve(
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:core:2.0:User:name.familyname",
        )
        .unwrap();
        assert_eq!(r.sub.unwrap().name, "familyName");
        assert!(r.schema_urn.is_none());
        let r = resolve(ResourceKind::User, "emails.primary").unwrap();
        assert_eq!(r.leaf().ty, AttrType::Boolean);
    }

    #[test]
    fn resolves_enterprise_extension() {
        let r = resolve(
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
        )
        .unwrap();
        assert_eq!(r.attr.name, "employeeNumber");
        assert_eq!(r.schema_urn, Some(ENTERPRISE_USER_SCHEMA));
        let r = resolve(
            ResourceKind::User,
            "URN:IETF:PARAMS:SCIM:SCHEMAS:EXTENSION:ENTERPRISE:2.0:USER:manager.value",
        )
        .unwrap();
        assert_eq!(r.attr.name, "manager");
        assert_eq!(r.sub.unwrap().name, "value");
        // Extension attributes are not core attributes, and groups have no extension.
        assert!(resolve(ResourceKind::User, "employeeNumber").is_none());
        assert!(resolve(
            ResourceKind::Group,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber"
        )
        .is_none());
    }

    #[test]
    fn resolves_common_attributes() {
        for kind in [ResourceKind::User, ResourceKind::Group] {
            let id = resolve(kind, "id").unwrap().attr;
            assert!(id.case_exact);
            assert_eq!(id.returned, Returned::Always);
            assert_eq!(id.mutability, Mutability::ReadOnly);
            assert!(resolve(kind, "externalId").unwrap().attr.case_exact);
            let created = resolve(kind, "meta.created").unwrap();
            assert_eq!(created.leaf().ty, AttrType::DateTime);
            assert_eq!(created.leaf().mutability, Mutability::ReadOnly);
        }
    }

    #[test]
    fn unknown_attributes_resolve_to_none() {
        assert!(resolve(ResourceKind::User, "favouriteColour").is_none());
        assert!(resolve(ResourceKind::User, "name.nope").is_none());
        assert!(resolve(ResourceKind::User, "urn:example:ext:1.0:User:thing").is_none());
        assert!(resolve(ResourceKind::Group, "userName").is_none());
        assert!(resolve(ResourceKind::User, "").is_none());
    }

    #[test]
    fn group_schema() {
        let d = resolve(ResourceKind::Group, "displayName").unwrap().attr;
        assert!(d.required);
        assert_eq!(d.uniqueness, Uniqueness::Server);
        let v = resolve(ResourceKind::Group, "members.value")
            .unwrap()
            .leaf();
        assert_eq!(v.mutability, Mutability::Immutable);
        let t = resolve(ResourceKind::Group, "members.type").unwrap().leaf();
        assert_eq!(t.canonical_values, vec!["User", "Group"]);
    }

    #[test]
    fn user_characteristics() {
        let p = resolve(ResourceKind::User, "password").unwrap().attr;
        assert_eq!(p.mutability, Mutability::WriteOnly);
        assert_eq!(p.returned, Returned::Never);
        let g = resolve(ResourceKind::User, "groups").unwrap().attr;
        assert!(g.is_read_only() && g.multi_valued);
        assert!(g.sub_attributes.iter().all(|a| a.is_read_only()));
        assert_eq!(
            resolve(ResourceKind::User, "active").unwrap().attr.ty,
            AttrType::Boolean
        );
        let a = resolve(ResourceKind::User, "addresses.postalCode").unwrap();
        assert!(a.attr.multi_valued);
        for n in [
            "displayName",
            "nickName",
            "profileUrl",
            "title",
            "userType",
            "preferredLanguage",
            "locale",
            "timezone",
            "emails",
            "phoneNumbers",
            "ims",
            "photos",
            "entitlements",
            "roles",
            "x509Certificates",
            "name.honorificSuffix",
            "name.middleName",
            "name.formatted",
            "name.honorificPrefix",
        ] {
            assert!(resolve(ResourceKind::User, n).is_some(), "{n}");
        }
    }

    #[test]
    fn split_urn_cases() {
        assert_eq!(split_urn("userName"), (None, "userName"));
        assert_eq!(
            split_urn("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value"),
            (Some(ENTERPRISE_USER_SCHEMA), "manager.value")
        );
        assert_eq!(
            split_urn("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"),
            (Some(ENTERPRISE_USER_SCHEMA), "")
        );
        assert_eq!(
            split_urn("urn:custom:ext:1.0:User:attr"),
            (Some("urn:custom:ext:1.0:User"), "attr")
        );
        assert_eq!(split_urn("urn:é:x"), (Some("urn:é"), "x"));
    }

    #[test]
    fn schema_documents() {
        let list = schemas_list("https://h/scim/v2/");
        assert_eq!(list.len(), 3);
        let user = schema_document("https://h/scim/v2", USER_SCHEMA).unwrap();
        assert_eq!(user["schemas"][0], SCHEMA_SCHEMA);
        assert_eq!(user["id"], USER_SCHEMA);
        assert_eq!(user["meta"]["resourceType"], "Schema");
        assert_eq!(
            user["meta"]["location"],
            format!("https://h/scim/v2/Schemas/{USER_SCHEMA}")
        );
        let attrs = user["attributes"].as_array().unwrap();
        let un = attrs.iter().find(|a| a["name"] == "userName").unwrap();
        assert_eq!(un["uniqueness"], "server");
        assert_eq!(un["required"], true);
        assert_eq!(un["caseExact"], false);
        assert_eq!(un["mutability"], "readWrite");
        assert_eq!(un["returned"], "default");
        assert_eq!(un["type"], "string");
        assert_eq!(un["multiValued"], false);
        let emails = attrs.iter().find(|a| a["name"] == "emails").unwrap();
        assert_eq!(emails["multiValued"], true);
        assert!(emails["subAttributes"].as_array().unwrap().len() >= 4);
        let pw = attrs.iter().find(|a| a["name"] == "password").unwrap();
        assert_eq!(pw["returned"], "never");
        assert_eq!(pw["mutability"], "writeOnly");
        let url = attrs.iter().find(|a| a["name"] == "profileUrl").unwrap();
        assert_eq!(url["referenceTypes"][0], "external");
        assert!(schema_document("x", ENTERPRISE_USER_SCHEMA.to_uppercase().as_str()).is_some());
        assert!(schema_document("x", "urn:nope").is_none());
        let g = schema_document("x", GROUP_SCHEMA).unwrap();
        assert_eq!(g["attributes"][1]["name"], "members");
    }

    #[test]
    fn resource_type_documents() {
        let rts = resource_types("https://h/scim/v2");
        assert_eq!(rts.len(), 2);
        assert_eq!(rts[0]["id"], "User");
        assert_eq!(rts[0]["endpoint"], "/Users");
        assert_eq!(rts[0]["schema"], USER_SCHEMA);
        assert_eq!(
            rts[0]["schemaExtensions"][0]["schema"],
            ENTERPRISE_USER_SCHEMA
        );
        assert_eq!(rts[0]["schemaExtensions"][0]["required"], false);
        assert_eq!(
            rts[0]["meta"]["location"],
            "https://h/scim/v2/ResourceTypes/User"
        );
        assert_eq!(rts[1]["schemaExtensions"], json!([]));
        assert_eq!(resource_type("b", "group").unwrap()["id"], "Group");
        assert!(resource_type("b", "Widget").is_none());
    }

    #[test]
    fn configured_extensions_are_resolved_and_advertised() {
        let custom = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";
        let site = "urn:acme:scim:2.0:Group";
        let _served = extensions::serve_in_this_thread(&[
            &format!("{custom}:costCode"),
            &format!("{custom}:level=integer"),
            &format!("{site}:site"),
        ]);
        let r = resolve(ResourceKind::User, &format!("{custom}:COSTCODE")).unwrap();
        assert_eq!(r.attr.name, "costCode");
        assert_eq!(r.schema_urn, Some(custom));
        assert_eq!(
            split_urn(&custom.to_lowercase()),
            (Some(custom.to_lowercase().as_str()), "")
        );
        assert!(resolve(ResourceKind::Group, &format!("{custom}:costCode")).is_none());
        assert!(resolve(ResourceKind::Group, &format!("{site}:site")).is_some());
        assert!(is_served_schema(ResourceKind::User, custom));
        assert!(!is_served_schema(ResourceKind::Group, custom));
        let rts = resource_types("https://h/scim/v2");
        assert_eq!(
            rts[0]["schemaExtensions"],
            json!([{"schema": ENTERPRISE_USER_SCHEMA, "required": false},
                   {"schema": custom, "required": false}])
        );
        assert_eq!(
            rts[1]["schemaExtensions"],
            json!([{"schema": site, "required": false}])
        );
        let list = schemas_list("https://h/scim/v2");
        assert_eq!(list.len(), 5);
        let doc = schema_document("https://h/scim/v2", custom).unwrap();
        assert_eq!(doc["name"], "CustomExtensionName");
        assert_eq!(doc["attributes"][0]["name"], "costCode");
        assert_eq!(doc["attributes"][0]["type"], "string");
        assert_eq!(doc["attributes"][1]["type"], "integer");
        assert_eq!(doc["attributes"][1]["mutability"], "readWrite");
    }

    #[test]
    fn service_provider_config_tells_the_truth() {
        let c = service_provider_config("https://h/scim/v2/", 200, 1_000_000);
        assert_eq!(c["schemas"][0], SERVICE_PROVIDER_CONFIG_SCHEMA);
        assert_eq!(c["patch"]["supported"], true);
        assert_eq!(c["bulk"]["supported"], false);
        assert_eq!(c["bulk"]["maxOperations"], 0);
        assert_eq!(c["bulk"]["maxPayloadSize"], 1_000_000);
        assert_eq!(c["filter"]["supported"], true);
        assert_eq!(c["filter"]["maxResults"], 200);
        assert_eq!(c["changePassword"]["supported"], false);
        assert_eq!(c["sort"]["supported"], true);
        assert_eq!(c["etag"]["supported"], true);
        let auth = c["authenticationSchemes"].as_array().unwrap();
        assert_eq!(auth.len(), 1);
        assert_eq!(auth[0]["type"], "oauthbearertoken");
        assert_eq!(auth[0]["name"], "OAuth Bearer Token");
        assert_eq!(auth[0]["primary"], true);
        assert!(auth[0]["description"].is_string());
        assert_eq!(
            c["meta"]["location"],
            "https://h/scim/v2/ServiceProviderConfig"
        );
    }

    #[test]
    fn get_ci_prefers_exact_then_case_insensitive() {
        let m = json!({"userName": "a", "Other": 1});
        let m = m.as_object().unwrap();
        assert_eq!(get_ci(m, "USERNAME").unwrap().0, "userName");
        assert_eq!(key_ci(m, "other").as_deref(), Some("Other"));
        assert!(get_ci(m, "nope").is_none());
    }
}
