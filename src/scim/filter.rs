//! SCIM filters (RFC 7644 §3.4.2.2): parser, validation against the schema, and evaluation
//! on the SCIM JSON representation of a resource.
//!
//! Choices where the RFC is silent or clients deviate from it:
//! * Unquoted values are tolerated (`externalId eq jyoung`, Microsoft's docs show this):
//!   `true`/`false`/`null` and JSON numbers in canonical form keep their type, anything
//!   else (including `1.50` or a 25-digit id) is a string, compared as sent.
//! * `ne` is the negation of `eq` on the whole attribute: it is true when the attribute is
//!   missing, and false on a multi-valued attribute if *any* value equals the operand.
//! * `eq null` is true when the attribute is unassigned, `ne null` when it is assigned.
//! * `and`/`or` chains are stored n-ary so a long flat filter cannot build a deep tree;
//!   parentheses, `not` and `[...]` may nest at most [`MAX_DEPTH`] levels.
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use serde_json::Value;

use crate::scim::error::ScimError;
use crate::scim::schema::{self, get_ci, AttrType, AttributeDef, ResourceKind};

/// Deepest nesting of `(`, `not (` and `[` accepted; bounds recursion on hostile input.
pub const MAX_DEPTH: usize = 64;

/// An attribute path: `[urn:]attr[.sub]`. Core schema URN prefixes are dropped at parse
/// time (they mean the same as no prefix), so `schema_urn` is only ever an extension URN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    pub schema_urn: Option<String>,
    pub attr: String,
    pub sub_attr: Option<String>,
}

impl AttrPath {
    pub fn simple(attr: impl Into<String>) -> Self {
        AttrPath {
            schema_urn: None,
            attr: attr.into(),
            sub_attr: None,
        }
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.schema_urn {
            write!(f, "{u}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(s) = &self.sub_attr {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }

    fn is_ordering(self) -> bool {
        matches!(
            self,
            CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
        )
    }

    fn is_substring(self) -> bool {
        matches!(self, CompareOp::Co | CompareOp::Sw | CompareOp::Ew)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    String(String),
    Number(serde_json::Number),
    Bool(bool),
    Null,
}

impl CompValue {
    /// The literal as JSON (used by PATCH to build an element from `type eq "work"`).
    pub fn to_json(&self) -> Value {
        match self {
            CompValue::String(s) => Value::String(s.clone()),
            CompValue::Number(n) => Value::Number(n.clone()),
            CompValue::Bool(b) => Value::Bool(*b),
            CompValue::Null => Value::Null,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: CompValue,
    },
    Present(AttrPath),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    /// `attr[filter]`; paths inside `filter` are relative to the elements of `attr`.
    /// `emails[type eq "work"].value eq "x"` is stored as
    /// `emails[type eq "work" and value eq "x"]`, which has the same meaning.
    ValuePath {
        attr: AttrPath,
        filter: Box<Filter>,
    },
}

/// Parses a filter; every error is `invalidFilter`.
/// Longest filter accepted, in bytes: Entra's and Okta's are under 200.
pub const MAX_FILTER_BYTES: usize = 8 * 1024;

pub fn parse_filter(s: &str) -> Result<Filter, ScimError> {
    if s.len() > MAX_FILTER_BYTES {
        return Err(ScimError::invalid_filter(format!(
            "the filter is {} bytes long; at most {MAX_FILTER_BYTES} are accepted",
            s.len()
        )));
    }
    let mut p = Parser::new(s, ScimError::invalid_filter);
    p.skip_ws();
    if p.at_end() {
        return Err(ScimError::invalid_filter("empty filter"));
    }
    let f = p.parse_or(0, false)?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.unexpected());
    }
    Ok(f)
}

/// [`parse_filter`] followed by [`validate`].
pub fn parse_filter_for(s: &str, kind: ResourceKind) -> Result<Filter, ScimError> {
    let f = parse_filter(s)?;
    validate(&f, kind)?;
    Ok(f)
}

pub(crate) type ErrFn = fn(String) -> ScimError;

/// Recursive-descent parser over the filter text; also used by `path.rs` for PATCH paths
/// (with `invalidPath` errors).
pub(crate) struct Parser<'a> {
    src: &'a str,
    pos: usize,
    err: ErrFn,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$'
}

/// RFC 7644 ATTRNAME (`ALPHA *(nameChar)`), plus `$ref`.
pub(crate) fn is_attr_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '$' => chars.all(is_name_char),
        _ => false,
    }
}

impl<'a> Parser<'a> {
    pub(crate) fn new(src: &'a str, err: ErrFn) -> Self {
        Parser { src, pos: 0, err }
    }

    fn fail(&self, msg: impl Into<String>) -> ScimError {
        (self.err)(msg.into())
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    pub(crate) fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    pub(crate) fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.bump();
            true
        } else {
            false
        }
    }

    pub(crate) fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(c) if c.is_whitespace()) {
            self.bump();
        }
    }

    pub(crate) fn unexpected(&self) -> ScimError {
        let shown: String = self.rest().chars().take(30).collect();
        self.fail(format!(
            "unexpected input at position {}: '{}'",
            self.pos, shown
        ))
    }

    /// True (and consumes it) if the next word is `kw` (case-insensitive) followed by a
    /// non-name character.
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let rest = self.rest();
        if schema::starts_with_ci(rest, kw) {
            let after = rest[kw.len()..].chars().next();
            if after.is_none_or(|c| !is_name_char(c) && c != '.' && c != ':') {
                self.pos += kw.len();
                return true;
            }
        }
        false
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        let rest = self.rest();
        schema::starts_with_ci(rest, kw)
            && rest[kw.len()..]
                .chars()
                .next()
                .is_none_or(|c| !is_name_char(c))
    }

    pub(crate) fn parse_or(&mut self, depth: usize, in_vp: bool) -> Result<Filter, ScimError> {
        self.parse_chain(depth, in_vp, "or", Self::parse_and, Filter::Or)
    }

    fn parse_and(&mut self, depth: usize, in_vp: bool) -> Result<Filter, ScimError> {
        self.parse_chain(depth, in_vp, "and", Self::parse_unary, Filter::And)
    }

    /// `operand (keyword operand)*`, flat (a long chain builds no deep tree).
    fn parse_chain(
        &mut self,
        depth: usize,
        in_vp: bool,
        keyword: &str,
        operand: fn(&mut Self, usize, bool) -> Result<Filter, ScimError>,
        join: fn(Vec<Filter>) -> Filter,
    ) -> Result<Filter, ScimError> {
        let mut items = vec![operand(self, depth, in_vp)?];
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.eat_keyword(keyword) {
                items.push(operand(self, depth, in_vp)?);
            } else {
                self.pos = save;
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            join(items)
        })
    }

    fn enter(&self, depth: usize) -> Result<usize, ScimError> {
        if depth >= MAX_DEPTH {
            Err(self.fail(format!("filter nested more than {MAX_DEPTH} levels deep")))
        } else {
            Ok(depth + 1)
        }
    }

    fn parse_parenthesized(&mut self, depth: usize, in_vp: bool) -> Result<Filter, ScimError> {
        let depth = self.enter(depth)?;
        self.skip_ws();
        if !self.eat('(') {
            return Err(self.fail("expected '('"));
        }
        let f = self.parse_or(depth, in_vp)?;
        self.skip_ws();
        if !self.eat(')') {
            return Err(if self.at_end() {
                self.fail("unbalanced parentheses: missing ')'")
            } else {
                self.unexpected()
            });
        }
        Ok(f)
    }

    fn parse_unary(&mut self, depth: usize, in_vp: bool) -> Result<Filter, ScimError> {
        self.skip_ws();
        match self.peek() {
            None => return Err(self.fail("unexpected end of filter: expected an expression")),
            Some('(') => return self.parse_parenthesized(depth, in_vp),
            _ => {}
        }
        // `not` is a keyword only when a '(' follows; otherwise it may be an attribute name.
        if self.peek_keyword("not") {
            let save = self.pos;
            self.pos += 3;
            self.skip_ws();
            if self.peek() == Some('(') {
                let f = self.parse_parenthesized(depth, in_vp)?;
                return Ok(Filter::Not(Box::new(f)));
            }
            self.pos = save;
        }
        self.parse_attr_exp(depth, in_vp)
    }

    /// Reads `[urn:]attr[.sub]` up to whitespace or one of `()[]"`.
    pub(crate) fn attr_path(&mut self) -> Result<AttrPath, ScimError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"') {
                break;
            }
            self.bump();
        }
        let token = &self.src[start..self.pos];
        if token.is_empty() {
            return Err(match self.peek() {
                None => self.fail("expected an attribute name at end of input"),
                Some(_) => self.fail(format!(
                    "expected an attribute name at position {start}, found '{}'",
                    self.rest().chars().take(20).collect::<String>()
                )),
            });
        }
        parse_attr_path_token(token).map_err(|m| self.fail(m))
    }

    /// Reads the sub-attribute name after `].`.
    pub(crate) fn sub_attr_name(&mut self) -> Result<String, ScimError> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if is_name_char(c)) {
            self.bump();
        }
        let name = &self.src[start..self.pos];
        if !is_attr_name(name) {
            return Err(self.fail(format!("invalid sub-attribute name at position {start}")));
        }
        Ok(name.to_string())
    }

    /// `[ filter ]` (the '[' already consumed), closing bracket included.
    pub(crate) fn bracket_filter(&mut self, depth: usize) -> Result<Filter, ScimError> {
        let depth = self.enter(depth)?;
        let inner = self.parse_or(depth, true)?;
        self.skip_ws();
        if !self.eat(']') {
            return Err(if self.at_end() {
                self.fail("unbalanced brackets: missing ']'")
            } else {
                self.unexpected()
            });
        }
        Ok(inner)
    }

    fn parse_attr_exp(&mut self, depth: usize, in_vp: bool) -> Result<Filter, ScimError> {
        let path = self.attr_path()?;
        if self.eat('[') {
            if in_vp {
                return Err(self.fail("a value filter cannot be nested inside another"));
            }
            if path.sub_attr.is_some() {
                return Err(self.fail(format!("'{path}' cannot take a value filter")));
            }
            let mut inner = self.bracket_filter(depth)?;
            if self.eat('.') {
                let sub = self.sub_attr_name()?;
                let cmp = self.parse_op_and_value(AttrPath::simple(sub))?;
                inner = match inner {
                    Filter::And(mut v) => {
                        v.push(cmp);
                        Filter::And(v)
                    }
                    other => Filter::And(vec![other, cmp]),
                };
            }
            return Ok(Filter::ValuePath {
                attr: path,
                filter: Box::new(inner),
            });
        }
        if in_vp && path.schema_urn.is_some() {
            return Err(self.fail("attributes inside a value filter cannot have a schema URN"));
        }
        self.parse_op_and_value(path)
    }

    fn parse_op_and_value(&mut self, path: AttrPath) -> Result<Filter, ScimError> {
        self.skip_ws();
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphabetic()) {
            self.bump();
        }
        let word = &self.src[start..self.pos];
        if word.is_empty() {
            return Err(self.fail(format!("missing operator after '{path}'")));
        }
        if word.eq_ignore_ascii_case("pr") {
            let save = self.pos;
            self.skip_ws();
            let ok = match self.peek() {
                None | Some(')') | Some(']') => true,
                Some(_) => self.peek_keyword("and") || self.peek_keyword("or"),
            };
            self.pos = save;
            if !ok {
                return Err(self.fail(format!("'pr' takes no value (after '{path}')")));
            }
            return Ok(Filter::Present(path));
        }
        let Some(op) = CompareOp::parse(word) else {
            return Err(self.fail(format!("unknown operator '{word}'")));
        };
        self.skip_ws();
        let value = self.comp_value(op)?;
        Ok(Filter::Compare { path, op, value })
    }

    fn comp_value(&mut self, op: CompareOp) -> Result<CompValue, ScimError> {
        match self.peek() {
            None | Some(')') | Some(']') => {
                Err(self.fail(format!("missing value after operator '{}'", op.as_str())))
            }
            Some('"') => self.string_literal().map(CompValue::String),
            Some(_) => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if !c.is_whitespace() && c != ')' && c != ']') {
                    self.bump();
                }
                Ok(classify_unquoted(&self.src[start..self.pos]))
            }
        }
    }

    fn string_literal(&mut self) -> Result<String, ScimError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut i = start + 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => {
                    let lit = &self.src[start..=i];
                    self.pos = i + 1;
                    return serde_json::from_str::<String>(lit).map_err(|e| {
                        self.fail(format!("invalid string literal at position {start}: {e}"))
                    });
                }
                _ => i += 1,
            }
        }
        Err(self.fail(format!("unterminated string starting at position {start}")))
    }
}

fn classify_unquoted(tok: &str) -> CompValue {
    if tok.eq_ignore_ascii_case("true") {
        CompValue::Bool(true)
    } else if tok.eq_ignore_ascii_case("false") {
        CompValue::Bool(false)
    } else if tok.eq_ignore_ascii_case("null") {
        CompValue::Null
    } else if let Some(n) = serde_json::from_str::<serde_json::Number>(tok)
        .ok()
        .filter(|n| n.to_string() == tok)
    {
        CompValue::Number(n)
    } else {
        // Including numbers that don't survive as a JSON number (`1.50`, `1e3`, ids longer
        // than an i64/u64): compared with a string attribute, the text must stay as sent
        // (`externalId eq 12345678901234567890123`); a numeric attribute still compares
        // numerically with a string operand.
        CompValue::String(tok.to_string())
    }
}

/// Splits and checks one attribute path token (no brackets).
pub(crate) fn parse_attr_path_token(token: &str) -> Result<AttrPath, String> {
    let (urn, rest) = schema::split_urn(token);
    if urn.is_some() && rest.is_empty() {
        return Err(format!("'{token}' names a schema, not an attribute"));
    }
    let (attr, sub) = match rest.split_once('.') {
        Some((a, s)) => (a, Some(s)),
        None => (rest, None),
    };
    if !is_attr_name(attr) {
        return Err(format!("invalid attribute name '{attr}'"));
    }
    if let Some(s) = sub {
        if !is_attr_name(s) {
            return Err(format!("invalid sub-attribute name '{s}' in '{token}'"));
        }
    }
    Ok(AttrPath {
        schema_urn: urn.filter(|u| !schema::is_core_urn(u)).map(str::to_string),
        attr: attr.to_string(),
        sub_attr: sub.map(str::to_string),
    })
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// Rejects filters the RFC says must fail with `invalidFilter`: ordering or substring
/// operators on booleans, ordering on binary, comparing a complex attribute that has no
/// `value` sub-attribute, and value filters on simple attributes. Unknown attributes pass
/// (they simply never match or are compared as strings).
pub fn validate(filter: &Filter, kind: ResourceKind) -> Result<(), ScimError> {
    validate_in(filter, &Scope::Resource(kind))
}

/// [`validate`] for a value filter (the part inside `attr[...]`) whose elements are
/// described by `parent`.
pub fn validate_value_filter(
    filter: &Filter,
    parent: Option<&AttributeDef>,
) -> Result<(), ScimError> {
    validate_in(filter, &Scope::Element(parent))
}

#[derive(Clone, Copy)]
enum Scope<'d> {
    Resource(ResourceKind),
    /// Inside `attr[...]`: paths are sub-attributes of `parent` (None if unknown).
    Element(Option<&'d AttributeDef>),
}

impl<'d> Scope<'d> {
    /// Definition of what `path` names in this scope (None if unknown).
    fn def_of(&self, path: &AttrPath) -> Option<&'d AttributeDef> {
        match *self {
            Scope::Resource(kind) => schema::resolve_parts(
                kind,
                path.schema_urn.as_deref(),
                &path.attr,
                path.sub_attr.as_deref(),
            )
            .map(|r| r.leaf()),
            Scope::Element(parent) => {
                let a = parent?.sub_attribute(&path.attr)?;
                match &path.sub_attr {
                    None => Some(a),
                    Some(s) => a.sub_attribute(s),
                }
            }
        }
    }
}

fn validate_in(filter: &Filter, scope: &Scope<'_>) -> Result<(), ScimError> {
    match filter {
        Filter::And(v) | Filter::Or(v) => v.iter().try_for_each(|f| validate_in(f, scope)),
        Filter::Not(f) => validate_in(f, scope),
        Filter::Present(_) => Ok(()),
        Filter::ValuePath { attr, filter } => {
            let def = scope.def_of(attr);
            if let Some(d) = def {
                if !d.is_complex() {
                    return Err(ScimError::invalid_filter(format!(
                        "'{attr}' is not a complex attribute and cannot take a value filter"
                    )));
                }
            }
            validate_in(filter, &Scope::Element(def))
        }
        Filter::Compare { path, op, value } => {
            let Some(mut def) = scope.def_of(path) else {
                return Ok(());
            };
            if def.is_complex() {
                match def.sub_attribute("value") {
                    Some(v) if def.multi_valued => def = v,
                    _ => {
                        return Err(ScimError::invalid_filter(format!(
                            "complex attribute '{path}' cannot be compared; name a sub-attribute"
                        )))
                    }
                }
            }
            match def.ty {
                AttrType::Boolean => {
                    if op.is_ordering() || op.is_substring() {
                        return Err(ScimError::invalid_filter(format!(
                            "operator '{}' is not valid for boolean attribute '{path}'",
                            op.as_str()
                        )));
                    }
                    if !matches!(value, CompValue::Bool(_) | CompValue::Null)
                        && bool_of(value).is_none()
                    {
                        return Err(ScimError::invalid_filter(format!(
                            "boolean attribute '{path}' must be compared with true or false"
                        )));
                    }
                }
                AttrType::Binary if op.is_ordering() => {
                    return Err(ScimError::invalid_filter(format!(
                        "operator '{}' is not valid for binary attribute '{path}'",
                        op.as_str()
                    )));
                }
                _ => {}
            }
            Ok(())
        }
    }
}

fn bool_of(v: &CompValue) -> Option<bool> {
    match v {
        CompValue::Bool(b) => Some(*b),
        CompValue::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        CompValue::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Recognises a top-level `attr eq "value"` on a core attribute without sub-attribute.
/// Superseded by [`index_equalities`]; kept for tests only, where the old list algorithm
/// it served is the reference the indexed one is compared against.
#[cfg(test)]
pub fn simple_equality(filter: &Filter) -> Option<(String, &str)> {
    match filter {
        Filter::Compare {
            path:
                AttrPath {
                    schema_urn: None,
                    attr,
                    sub_attr: None,
                },
            op: CompareOp::Eq,
            value: CompValue::String(v),
        } => Some((attr.to_ascii_lowercase(), v.as_str())),
        _ => None,
    }
}

/// An equality `attr eq value` read off a filter, for an index lookup. `attr` is the
/// lower-cased core attribute path: `username`, `emails`, `emails.value` (also for
/// `emails[value eq "x"]`). `value` is the operand as the engine compares it to strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equality<'f> {
    pub attr: String,
    pub value: Cow<'f, str>,
}

/// Equalities such that every resource matching `filter` satisfies at least one of them,
/// using only attributes for which `indexed` holds: a single `attr eq "v"`, any indexable
/// term of an `and` (the one with fewest lookups), every branch of an `or`, and
/// `attr[… eq …]` value filters. `None` when no such set is known (the caller scans).
/// The filter must still be evaluated on what the lookups return: an index only narrows.
pub fn index_equalities<'f>(
    filter: &'f Filter,
    indexed: &dyn Fn(&str) -> bool,
) -> Option<Vec<Equality<'f>>> {
    equalities_in(filter, None, indexed)
}

fn equalities_in<'f>(
    filter: &'f Filter,
    prefix: Option<&str>,
    indexed: &dyn Fn(&str) -> bool,
) -> Option<Vec<Equality<'f>>> {
    match filter {
        Filter::Compare {
            path:
                AttrPath {
                    schema_urn: None,
                    attr,
                    sub_attr,
                },
            op: CompareOp::Eq,
            value,
        } => {
            // The operand as `compare_one` turns it into a string to compare with.
            let value = match value {
                CompValue::String(s) => Cow::Borrowed(s.as_str()),
                CompValue::Number(n) => Cow::Owned(n.to_string()),
                CompValue::Bool(b) => Cow::Owned(b.to_string()),
                CompValue::Null => return None,
            };
            let mut name = String::new();
            if let Some(p) = prefix {
                name.push_str(p);
                name.push('.');
            }
            name.push_str(&attr.to_ascii_lowercase());
            if let Some(sub) = sub_attr {
                name.push('.');
                name.push_str(&sub.to_ascii_lowercase());
            }
            indexed(&name).then(|| vec![Equality { attr: name, value }])
        }
        Filter::And(v) => v
            .iter()
            .filter_map(|f| equalities_in(f, prefix, indexed))
            .min_by_key(Vec::len),
        Filter::Or(v) => {
            let mut out = Vec::new();
            for f in v {
                out.extend(equalities_in(f, prefix, indexed)?);
            }
            Some(out)
        }
        Filter::ValuePath {
            attr:
                AttrPath {
                    schema_urn: None,
                    attr,
                    sub_attr: None,
                },
            filter,
        } if prefix.is_none() => equalities_in(filter, Some(&attr.to_ascii_lowercase()), indexed),
        _ => None,
    }
}

/// The top-level attributes of a resource `filter` reads, lower-cased (an extension URN
/// stands for its whole object): the filter evaluates the same on a resource reduced to
/// those attributes as on the whole resource.
pub fn top_level_attributes(filter: &Filter) -> Vec<String> {
    fn walk(f: &Filter, out: &mut Vec<String>) {
        let mut add = |p: &AttrPath| {
            let name = p
                .schema_urn
                .as_deref()
                .unwrap_or(&p.attr)
                .to_ascii_lowercase();
            if !out.contains(&name) {
                out.push(name);
            }
        };
        match f {
            Filter::Compare { path, .. } | Filter::Present(path) => add(path),
            // Paths inside the brackets are relative to the elements.
            Filter::ValuePath { attr, .. } => add(attr),
            Filter::And(v) | Filter::Or(v) => v.iter().for_each(|f| walk(f, out)),
            Filter::Not(f) => walk(f, out),
        }
    }
    let mut out = Vec::new();
    walk(filter, &mut out);
    out
}

/// Whether the filter names the core attribute `attr` anywhere (case-insensitive), e.g.
/// so a caller knows to load a group's `members` before evaluating
/// `members[value eq "x"]` or `members eq "x"`.
pub fn mentions_attribute(filter: &Filter, attr: &str) -> bool {
    let is = |p: &AttrPath| p.schema_urn.is_none() && p.attr.eq_ignore_ascii_case(attr);
    match filter {
        Filter::Compare { path, .. } | Filter::Present(path) => is(path),
        Filter::And(v) | Filter::Or(v) => v.iter().any(|f| mentions_attribute(f, attr)),
        Filter::Not(f) => mentions_attribute(f, attr),
        // Paths inside the brackets are sub-attributes, not top-level attributes.
        Filter::ValuePath { attr: a, .. } => is(a),
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

/// Whether `resource` (its client-visible SCIM JSON) matches `filter`.
pub fn matches(filter: &Filter, resource: &Value, kind: ResourceKind) -> bool {
    eval(filter, resource, &Scope::Resource(kind))
}

/// Evaluates a value-filter (the part inside `attr[...]`) against one element of a
/// multi-valued complex attribute whose definition is `parent`.
pub fn matches_element(filter: &Filter, element: &Value, parent: Option<&AttributeDef>) -> bool {
    eval(filter, element, &Scope::Element(parent))
}

fn eval(filter: &Filter, root: &Value, scope: &Scope<'_>) -> bool {
    match filter {
        Filter::And(v) => v.iter().all(|f| eval(f, root, scope)),
        Filter::Or(v) => v.iter().any(|f| eval(f, root, scope)),
        Filter::Not(f) => !eval(f, root, scope),
        Filter::Present(path) => lookup(root, scope, path, false)
            .0
            .iter()
            .any(|v| is_present(v)),
        Filter::ValuePath { attr, filter } => {
            let def = scope.def_of(attr);
            let Some(v) = attribute_value(root, scope, attr) else {
                return false;
            };
            let inner = Scope::Element(def);
            match v {
                Value::Array(items) => items.iter().any(|e| eval(filter, e, &inner)),
                Value::Object(_) => eval(filter, v, &inner),
                _ => false,
            }
        }
        Filter::Compare { path, op, value } => {
            let (values, def) = lookup(root, scope, path, true);
            let case_exact = def.is_some_and(|d| d.case_exact);
            let is_date = def.is_some_and(|d| d.ty == AttrType::DateTime);
            let one = |v: &&Value, op: CompareOp| compare_one(v, op, value, case_exact, is_date);
            match (op, value) {
                // Unassigned and null are the same state (RFC 7643 §2.5).
                (CompareOp::Eq, CompValue::Null) => !values.iter().any(|v| is_present(v)),
                (CompareOp::Ne, CompValue::Null) => values.iter().any(|v| is_present(v)),
                (CompareOp::Ne, _) => !values.iter().any(|v| one(v, CompareOp::Eq)),
                _ => values.iter().any(|v| one(v, *op)),
            }
        }
    }
}

fn is_present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().any(is_present),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// The attribute's raw value (`root[urn][attr]` or `root[attr]`).
fn attribute_value<'v>(root: &'v Value, scope: &Scope<'_>, path: &AttrPath) -> Option<&'v Value> {
    let mut container = root.as_object()?;
    if let (Scope::Resource(_), Some(urn)) = (scope, &path.schema_urn) {
        container = get_ci(container, urn)?.1.as_object()?;
    }
    get_ci(container, &path.attr).map(|(_, v)| v)
}

/// All scalar values a path designates (arrays flattened), with the definition of what is
/// compared. With `for_compare`, a multi-valued complex attribute without sub-attribute
/// stands for its elements' `value` sub-attribute (RFC 7644 §3.4.2.2).
fn lookup<'v, 'd>(
    root: &'v Value,
    scope: &Scope<'d>,
    path: &AttrPath,
    for_compare: bool,
) -> (Vec<&'v Value>, Option<&'d AttributeDef>) {
    let mut def = scope.def_of(path);
    let Some(v) = attribute_value(root, scope, path) else {
        return (Vec::new(), def);
    };
    let mut out = Vec::new();
    let sub = path.sub_attr.as_deref().or_else(|| {
        let complex_multi = match v {
            Value::Array(items) => items.iter().any(Value::is_object),
            _ => false,
        };
        if for_compare && complex_multi {
            def = def.and_then(|d| d.sub_attribute("value"));
            Some("value")
        } else {
            None
        }
    });
    match sub {
        None => flatten_into(v, &mut out),
        Some(sub) => {
            let mut push_sub = |e: &'v Value| {
                if let Some((_, sv)) = e.as_object().and_then(|o| get_ci(o, sub)) {
                    flatten_into(sv, &mut out);
                }
            };
            match v {
                Value::Array(items) => items.iter().for_each(&mut push_sub),
                other => push_sub(other),
            }
        }
    }
    (out, def)
}

fn flatten_into<'v>(v: &'v Value, out: &mut Vec<&'v Value>) {
    match v {
        Value::Array(items) => out.extend(items.iter()),
        other => out.push(other),
    }
}

pub(crate) fn parse_datetime(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d);
    }
    // xsd:dateTime allows omitting the offset; read it as UTC.
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc().fixed_offset())
}

fn ord_matches(op: CompareOp, ord: Ordering) -> bool {
    match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

fn compare_one(v: &Value, op: CompareOp, cv: &CompValue, case_exact: bool, is_date: bool) -> bool {
    match (v, cv) {
        (Value::Null, CompValue::Null) => op == CompareOp::Eq,
        (_, CompValue::Null) => op == CompareOp::Ne,
        (Value::Bool(b), _) => match bool_of(cv) {
            Some(x) => ord_matches(op, b.cmp(&x)) && matches!(op, CompareOp::Eq | CompareOp::Ne),
            None => false,
        },
        (Value::Number(n), _) => {
            let Some(a) = n.as_f64() else { return false };
            let b = match cv {
                CompValue::Number(m) => m.as_f64(),
                CompValue::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match b.and_then(|b| a.partial_cmp(&b)) {
                Some(ord) => ord_matches(op, ord),
                None => false,
            }
        }
        (Value::String(s), _) => {
            let operand = match cv {
                CompValue::String(t) => t.clone(),
                CompValue::Number(n) => n.to_string(),
                CompValue::Bool(b) => b.to_string(),
                CompValue::Null => return false,
            };
            if is_date && !op.is_substring() {
                if let (Some(a), Some(b)) = (parse_datetime(s), parse_datetime(&operand)) {
                    return ord_matches(op, a.cmp(&b));
                }
            }
            if case_exact {
                compare_str(s, &operand, op)
            } else {
                compare_str(&s.to_lowercase(), &operand.to_lowercase(), op)
            }
        }
        _ => false,
    }
}

fn compare_str(a: &str, b: &str, op: CompareOp) -> bool {
    match op {
        CompareOp::Co => a.contains(b),
        CompareOp::Sw => a.starts_with(b),
        CompareOp::Ew => a.ends_with(b),
        _ => ord_matches(op, a.cmp(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use serde_json::json;

    const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn p(s: &str) -> Filter {
        parse_filter(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn err(s: &str) -> String {
        match parse_filter(s) {
            Ok(f) => panic!("{s} parsed as {f:?}"),
            Err(e) => {
                assert_eq!(e.scim_type(), Some(ScimType::InvalidFilter), "{s}");
                e.to_string()
            }
        }
    }

    fn cmp(attr: &str, op: CompareOp, v: &str) -> Filter {
        Filter::Compare {
            path: AttrPath::simple(attr),
            op,
            value: CompValue::String(v.into()),
        }
    }

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENT],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "BJensen",
            "userName": "bjensen@example.com",
            "name": {"familyName": "Jensen", "givenName": "Barbara"},
            "displayName": "Babs Jensen",
            "title": "Tour Guide",
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "phoneNumbers": [],
            "nickName": "",
            "meta": {
                "resourceType": "User",
                "created": "2010-01-23T04:56:22Z",
                "lastModified": "2011-05-13T04:42:34Z",
                "version": "W/\"a330bc54f0671c9\""
            },
            ENT: {"employeeNumber": "701984", "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}},
            "loginCount": 7
        })
    }

    fn m(s: &str) -> bool {
        let f = p(s);
        validate(&f, ResourceKind::User).unwrap_or_else(|e| panic!("{s}: {e:?}"));
        matches(&f, &user(), ResourceKind::User)
    }

    #[test]
    fn parses_simple_comparisons_and_all_operators() {
        assert_eq!(
            p(r#"userName eq "bjensen""#),
            cmp("userName", CompareOp::Eq, "bjensen")
        );
        for (o, op) in [
            ("eq", CompareOp::Eq),
            ("NE", CompareOp::Ne),
            ("Co", CompareOp::Co),
            ("sw", CompareOp::Sw),
            ("ew", CompareOp::Ew),
            ("gt", CompareOp::Gt),
            ("ge", CompareOp::Ge),
            ("lt", CompareOp::Lt),
            ("le", CompareOp::Le),
        ] {
            assert_eq!(p(&format!("title {o} \"x\"")), cmp("title", op, "x"));
        }
        assert_eq!(p("title pr"), Filter::Present(AttrPath::simple("title")));
        assert_eq!(p("title PR"), Filter::Present(AttrPath::simple("title")));
    }

    #[test]
    fn precedence_not_and_or() {
        let f = p(r#"a eq "1" or b eq "2" and c eq "3""#);
        assert_eq!(
            f,
            Filter::Or(vec![
                cmp("a", CompareOp::Eq, "1"),
                Filter::And(vec![
                    cmp("b", CompareOp::Eq, "2"),
                    cmp("c", CompareOp::Eq, "3")
                ])
            ])
        );
        let f = p(r#"(a eq "1" or b eq "2") and not (c eq "3")"#);
        assert_eq!(
            f,
            Filter::And(vec![
                Filter::Or(vec![
                    cmp("a", CompareOp::Eq, "1"),
                    cmp("b", CompareOp::Eq, "2")
                ]),
                Filter::Not(Box::new(cmp("c", CompareOp::Eq, "3")))
            ])
        );
        // Keywords are case-insensitive; `not(` without a space works.
        assert!(matches!(p(r#"a pr AND b pr Or not(c pr)"#), Filter::Or(_)));
        // `not` alone is an attribute name.
        assert_eq!(p("not pr"), Filter::Present(AttrPath::simple("not")));
    }

    #[test]
    fn parses_value_paths() {
        let f = p(r#"emails[type eq "work" and value co "@example.com"]"#);
        let Filter::ValuePath { attr, filter } = f else {
            panic!()
        };
        assert_eq!(attr, AttrPath::simple("emails"));
        assert!(matches!(*filter, Filter::And(ref v) if v.len() == 2));

        let f = p(r#"emails[type eq "work"].value eq "a@b.c""#);
        let Filter::ValuePath { filter, .. } = f else {
            panic!()
        };
        assert_eq!(
            *filter,
            Filter::And(vec![
                cmp("type", CompareOp::Eq, "work"),
                cmp("value", CompareOp::Eq, "a@b.c")
            ])
        );
        let f =
            p(r#"userType eq "Employee" and emails[type eq "work" and value co "@example.com"]"#);
        assert!(matches!(f, Filter::And(ref v) if matches!(v[1], Filter::ValuePath { .. })));
        // Value paths nested in parentheses and in `or`.
        p(r#"(emails[type eq "work"] or ims[type eq "xmpp"])"#);
        p(r#"emails[not (type eq "work")]"#);
    }

    #[test]
    fn parses_urn_paths() {
        let f = p(&format!(r#"{ENT}:employeeNumber eq "1""#));
        let Filter::Compare { path, .. } = f else {
            panic!()
        };
        assert_eq!(path.schema_urn.as_deref(), Some(ENT));
        assert_eq!(path.attr, "employeeNumber");
        let f = p(&format!(r#"{ENT}:manager.value eq "x""#));
        let Filter::Compare { path, .. } = f else {
            panic!()
        };
        assert_eq!(path.attr, "manager");
        assert_eq!(path.sub_attr.as_deref(), Some("value"));
        // Core URN prefix is the same as no prefix.
        let f = p(r#"urn:ietf:params:scim:schemas:core:2.0:User:name.givenName eq "B""#);
        let Filter::Compare { path, .. } = f else {
            panic!()
        };
        assert_eq!(path.schema_urn, None);
        assert_eq!(path.attr, "name");
        // Unknown extension URN.
        let f = p(r#"urn:example:custom:1.0:User:badge eq "x""#);
        let Filter::Compare { path, .. } = f else {
            panic!()
        };
        assert_eq!(
            path.schema_urn.as_deref(),
            Some("urn:example:custom:1.0:User")
        );
        assert_eq!(path.attr, "badge");
    }

    #[test]
    fn literals_and_unquoted_values() {
        let val = |s: &str| match p(s) {
            Filter::Compare { value, .. } => value,
            other => panic!("{other:?}"),
        };
        assert_eq!(val("active eq true"), CompValue::Bool(true));
        assert_eq!(val("active eq FALSE"), CompValue::Bool(false));
        assert_eq!(val("title eq null"), CompValue::Null);
        assert_eq!(val("loginCount gt 5"), CompValue::Number(5.into()));
        assert_eq!(
            val("x eq -1500.5"),
            CompValue::Number(serde_json::Number::from_f64(-1500.5).unwrap())
        );
        // Not canonical JSON numbers: kept as the text sent.
        assert_eq!(val("x eq -1.5e3"), CompValue::String("-1.5e3".into()));
        assert_eq!(
            val("externalId eq 12345678901234567890123"),
            CompValue::String("12345678901234567890123".into())
        );
        assert_eq!(
            val("externalId eq jyoung"),
            CompValue::String("jyoung".into())
        );
        assert_eq!(
            val("externalId eq 7f4bc1a3-0c4f-4b8e-9d2a-1a2b3c4d5e6f"),
            CompValue::String("7f4bc1a3-0c4f-4b8e-9d2a-1a2b3c4d5e6f".into())
        );
        assert_eq!(val("externalId eq 007"), CompValue::String("007".into()));
        assert_eq!(
            val(r#"title eq "a \"q\" \\ \u00e9 \n""#),
            CompValue::String("a \"q\" \\ é \n".into())
        );
        assert_eq!(
            val(r#"title eq "with ) and ] inside""#),
            CompValue::String("with ) and ] inside".into())
        );
        assert_eq!(val(r#"title eq """#), CompValue::String(String::new()));
        // Unquoted value followed by a closing paren.
        assert!(matches!(
            p("(externalId eq abc) and title pr"),
            Filter::And(_)
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(err("").contains("empty"));
        assert!(err("   ").contains("empty"));
        assert!(err(r#"(userName eq "x""#).contains("')'"));
        assert!(err(r#"userName eq "x")"#).contains("unexpected"));
        assert!(err(r#"emails[type eq "work""#).contains("']'"));
        assert!(err(r#"emails[type eq "work"]]"#).contains("unexpected"));
        assert!(err("userName").contains("missing operator"));
        assert!(err(r#"userName xx "a""#).contains("unknown operator 'xx'"));
        assert!(err("userName eq").contains("missing value"));
        assert!(err(r#"userName eq "x" and"#).contains("end"));
        assert!(err(r#"userName eq "x" "y""#).contains("unexpected"));
        assert!(err(r#"userName eq "unterminated"#).contains("unterminated"));
        assert!(err(r#"title eq "bad \x escape""#).contains("invalid string"));
        assert!(err(r#"emails[type eq "a" and x[y eq "b"]]"#).contains("nested"));
        assert!(err(r#"title pr "x""#).contains("'pr' takes no value"));
        assert!(err(r#"1abc eq "x""#).contains("invalid attribute name"));
        assert!(err(r#"name.given.x eq "x""#).contains("invalid sub-attribute"));
        assert!(err(r#""x" eq "y""#).contains("expected an attribute"));
        assert!(err(&format!("{ENT} pr")).contains("names a schema"));
        assert!(err(r#"emails.value[type eq "x"]"#).contains("cannot take a value filter"));
        assert!(err(r#"not (title pr"#).contains("')'"));
        assert!(err(r#"()"#).contains("expected an attribute"));
        assert!(err(r#"emails[type eq "work"].value"#).contains("missing operator"));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // Within the length cap the depth bound still applies …
        let deep = "(".repeat(3_000) + "a pr" + &")".repeat(3_000);
        assert!(err(&deep).contains("nested"));
        let nots = "not (".repeat(1_000) + "a pr" + &")".repeat(1_000);
        assert!(err(&nots).contains("nested"));
        // … and beyond it the length is refused before any parsing.
        let huge = "(".repeat(100_000) + "a pr" + &")".repeat(100_000);
        assert!(err(&huge).contains("at most 8192"));
        let ok = "(".repeat(MAX_DEPTH) + "a pr" + &")".repeat(MAX_DEPTH);
        p(&ok);
        let too_deep = "(".repeat(MAX_DEPTH + 1) + "a pr" + &")".repeat(MAX_DEPTH + 1);
        err(&too_deep);
        // Long flat chains are fine (n-ary, no deep tree).
        let long = vec!["a pr"; 900].join(" and ");
        assert!(matches!(p(&long), Filter::And(v) if v.len() == 900));
        let long_or = vec![r#"userName eq "x""#; 400].join(" or ");
        assert!(!matches(&p(&long_or), &user(), ResourceKind::User));
        let big_value = format!("title eq \"{}\"", "x".repeat(MAX_FILTER_BYTES - 20));
        p(&big_value);
    }

    #[test]
    fn eval_case_insensitive_names_and_values() {
        assert!(m(r#"userName eq "BJENSEN@example.com""#));
        assert!(m(r#"USERNAME EQ "bjensen@example.com""#));
        assert!(m(r#"username sw "BJ""#));
        assert!(m(r#"displayName co "babs""#));
        assert!(m(r#"title ew "GUIDE""#));
        assert!(m(r#"name.givenName eq "barbara""#));
        assert!(m(r#"NAME.GIVENNAME eq "barbara""#));
        assert!(!m(r#"userName eq "other""#));
    }

    #[test]
    fn eval_case_exact_attributes() {
        assert!(m(r#"externalId eq "BJensen""#));
        assert!(!m(r#"externalId eq "bjensen""#));
        assert!(m(r#"id eq "2819c223-7f76-453a-919d-413861904646""#));
        assert!(!m(r#"id eq "2819C223-7F76-453A-919D-413861904646""#));
        assert!(m(r#"externalId eq BJensen"#));
    }

    #[test]
    fn eval_multi_valued() {
        assert!(m(r#"emails.value eq "babs@jensen.org""#));
        assert!(m(r#"emails co "jensen.org""#));
        assert!(m(r#"emails eq "BABS@jensen.org""#));
        assert!(m(r#"emails.type eq "home""#));
        assert!(m(r#"emails[type eq "work" and value co "@example.com"]"#));
        assert!(!m(r#"emails[type eq "home" and value co "@example.com"]"#));
        assert!(m(
            r#"emails[type eq "work"].value eq "bjensen@example.com""#
        ));
        assert!(!m(r#"emails[type eq "work"].value eq "babs@jensen.org""#));
        assert!(m(r#"emails[primary eq true]"#));
        assert!(m(r#"emails[primary eq "True"]"#));
        assert!(m(r#"emails[not (type eq "work")]"#));
        assert!(m(r#"emails[type eq "work"].value pr"#));
        assert!(!m(r#"phoneNumbers[type eq "work"]"#));
    }

    #[test]
    fn eval_present() {
        assert!(m("title pr"));
        assert!(m("emails pr"));
        assert!(m("name.familyName pr"));
        assert!(!m("nickName pr"), "empty string is not present");
        assert!(!m("phoneNumbers pr"), "empty array is not present");
        assert!(!m("profileUrl pr"));
        assert!(m(&format!("{ENT}:employeeNumber pr")));
        assert!(m("meta.created pr"));
    }

    #[test]
    fn eval_ne_and_null() {
        assert!(m(r#"title ne "Boss""#));
        assert!(!m(r#"title ne "tour guide""#));
        assert!(m(r#"profileUrl ne "x""#), "ne on missing attribute is true");
        assert!(
            !m(r#"emails.type ne "work""#),
            "ne is not(eq) on multi-valued"
        );
        assert!(m(r#"profileUrl eq null"#));
        assert!(!m(r#"title eq null"#));
        assert!(m(r#"title ne null"#));
        assert!(!m(r#"profileUrl ne null"#));
        assert!(!m(r#"profileUrl gt "a""#));
    }

    #[test]
    fn eval_booleans() {
        assert!(m("active eq true"));
        assert!(!m("active eq false"));
        assert!(m(r#"active eq "true""#));
        assert!(m(r#"active eq "TRUE""#));
        assert!(m("active ne false"));
        assert!(!m("active ne true"));
    }

    #[test]
    fn eval_ordering_strings_numbers_dates() {
        assert!(m(r#"userName gt "a""#));
        assert!(m(r#"userName gt "A""#), "case-insensitive ordering");
        assert!(!m(r#"userName lt "B""#));
        assert!(m(r#"title ge "tour guide""#));
        assert!(m(r#"title le "TOUR GUIDE""#));
        assert!(m("loginCount gt 5"));
        assert!(m("loginCount ge 7"));
        assert!(!m("loginCount lt 7"));
        assert!(m("loginCount le 7.0"));
        assert!(m("loginCount eq 7"));
        assert!(m(r#"meta.lastModified gt "2011-05-13T04:42:33Z""#));
        assert!(!m(r#"meta.lastModified gt "2011-05-13T04:42:34Z""#));
        // Same instant, other offset: compared as instants, not strings.
        assert!(m(r#"meta.lastModified eq "2011-05-13T06:42:34+02:00""#));
        assert!(m(r#"meta.created lt "2011-01-01T00:00:00""#));
        assert!(m(r#"meta.created ge "2010-01-23T04:56:22.000Z""#));
    }

    #[test]
    fn unquoted_numbers_compare_as_sent() {
        let doc = json!({"externalId": "12345678901234567890123", "loginCount": 1500,
                         "employeeNumber": "1.50"});
        let m = |f: &str| matches(&parse_filter(f).unwrap(), &doc, ResourceKind::User);
        assert!(m("externalId eq 12345678901234567890123"));
        assert!(
            !m("externalId eq 12345678901234567890124"),
            "no f64 rounding collisions"
        );
        assert!(m("employeeNumber eq 1.50"));
        assert!(
            m("loginCount eq 1.5e3"),
            "numeric attributes compare numerically"
        );
        assert!(m("loginCount gt 1e3"));
        assert!(m("loginCount eq 1500"));
    }

    #[test]
    fn eval_extension_attributes() {
        assert!(m(&format!(r#"{ENT}:employeeNumber eq "701984""#)));
        assert!(m(&format!(
            r#"{}:EMPLOYEENUMBER eq "701984""#,
            ENT.to_uppercase()
        )));
        assert!(
            m(&format!(r#"{ENT}:employeeNumber eq 701984"#)),
            "unquoted number vs string"
        );
        assert!(m(&format!(
            r#"{ENT}:manager.value eq "26118915-6090-4610-87e4-49d8ca9f808d""#
        )));
        assert!(
            !m(r#"employeeNumber eq "701984""#),
            "extension attrs need their URN"
        );
        assert!(!m(r#"urn:example:custom:1.0:User:badge pr"#));
    }

    #[test]
    fn eval_logic() {
        assert!(m(r#"userName eq "bjensen@example.com" and active eq true"#));
        assert!(!m(r#"userName eq "x" and active eq true"#));
        assert!(m(r#"userName eq "x" or active eq true"#));
        assert!(m(r#"not (userName eq "x")"#));
        assert!(m(r#"title pr and (emails.type eq "work" or ims pr)"#));
        assert!(!m(r#"not (title pr and not (userName eq "x"))"#));
    }

    #[test]
    fn eval_groups() {
        let g = json!({"id": "g1", "displayName": "Admins", "members": [
            {"value": "u1", "type": "User"}, {"value": "g2", "type": "Group"}]});
        let gm = |s: &str| matches(&p(s), &g, ResourceKind::Group);
        assert!(gm(r#"displayName eq "admins""#));
        assert!(gm(r#"members[value eq "u1"]"#));
        assert!(
            !gm(r#"members[value eq "U1"]"#),
            "member value is caseExact"
        );
        assert!(gm(r#"members.value eq "g2""#));
        assert!(gm(r#"members eq "u1""#));
        assert!(gm(
            r#"urn:ietf:params:scim:schemas:core:2.0:Group:displayName sw "Ad""#
        ));
    }

    #[test]
    fn eval_on_non_object_resource_is_false() {
        assert!(!matches(&p("a pr"), &json!([1]), ResourceKind::User));
        assert!(!matches(&p(r#"a eq "x""#), &json!("s"), ResourceKind::User));
        assert!(matches(&p(r#"a ne "x""#), &json!(null), ResourceKind::User));
    }

    #[test]
    fn validate_rejects_invalid_operator_for_type() {
        let v = |s: &str| validate(&p(s), ResourceKind::User);
        for bad in [
            "active gt true",
            "active co \"t\"",
            "active sw \"t\"",
            "emails[primary lt true]",
            "x509Certificates.value gt \"AAA\"",
            r#"name eq "Barbara""#,
            r#"meta gt "x""#,
            r#"userName[value eq "x"]"#,
            r#"active eq "yes""#,
        ] {
            let e = v(bad).expect_err(bad);
            assert_eq!(e.scim_type(), Some(ScimType::InvalidFilter), "{bad}");
        }
        for good in [
            "active eq true",
            "active eq \"False\"",
            "emails co \"x\"",
            "name pr",
            "name.givenName gt \"a\"",
            "unknownThing gt 3",
            "emails[type eq \"work\"]",
            "meta.created gt \"2020-01-01T00:00:00Z\"",
        ] {
            v(good).unwrap_or_else(|e| panic!("{good}: {e:?}"));
        }
        assert!(parse_filter_for("active gt true", ResourceKind::User).is_err());
        assert!(parse_filter_for("active eq true", ResourceKind::User).is_ok());
    }

    #[test]
    fn mentions_attribute_finds_members() {
        assert!(mentions_attribute(
            &p(r#"id eq "g" and members eq "u""#),
            "members"
        ));
        assert!(mentions_attribute(
            &p(r#"not (MEMBERS[value eq "u"])"#),
            "members"
        ));
        assert!(mentions_attribute(
            &p("members.value pr or displayName pr"),
            "members"
        ));
        assert!(!mentions_attribute(
            &p(r#"displayName eq "members""#),
            "members"
        ));
        assert!(!mentions_attribute(
            &p(r#"emails[members eq "x"]"#),
            "members"
        ));
    }

    #[test]
    fn simple_equality_fast_path() {
        let f = p(r#"userName eq "Bob""#);
        assert_eq!(simple_equality(&f), Some(("username".to_string(), "Bob")));
        let f = p(r#"EXTERNALID Eq "abc""#);
        assert_eq!(simple_equality(&f), Some(("externalid".to_string(), "abc")));
        let f = p(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "Bob""#);
        assert_eq!(
            simple_equality(&f).map(|x| x.0),
            Some("username".to_string())
        );
        let f = p("externalId eq jyoung");
        assert_eq!(
            simple_equality(&f),
            Some(("externalid".to_string(), "jyoung"))
        );
        for s in [
            r#"userName ne "Bob""#,
            r#"name.givenName eq "Bob""#,
            &format!(r#"{ENT}:employeeNumber eq "1""#),
            r#"userName eq "a" and title pr"#,
            "active eq true",
        ] {
            assert!(simple_equality(&p(s)).is_none(), "{s}");
        }
    }
}
