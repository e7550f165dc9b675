//! How subjects are named: the operator's and a mapping's subject options resolved,
//! and the names a user or group gets (or why it gets none).
use super::*;

/// How subjects are named, every field resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSubjects {
    pub kind: SubjectKind,
    pub user_attribute: UserAttribute,
    pub user_prefix: String,
    pub group_attribute: GroupAttribute,
    pub group_prefix: String,
}

impl Default for ResolvedSubjects {
    fn default() -> Self {
        ResolvedSubjects {
            kind: SubjectKind::User,
            user_attribute: UserAttribute::UserName,
            user_prefix: String::new(),
            group_attribute: GroupAttribute::ExternalId,
            group_prefix: String::new(),
        }
    }
}

impl ResolvedSubjects {
    /// These defaults with every field `options` sets taking precedence.
    pub fn with_overrides(&self, options: Option<&SubjectOptions>) -> Self {
        let Some(o) = options else {
            return self.clone();
        };
        ResolvedSubjects {
            kind: o.kind.unwrap_or(self.kind),
            user_attribute: o.user_attribute.unwrap_or(self.user_attribute),
            user_prefix: o
                .user_prefix
                .clone()
                .unwrap_or_else(|| self.user_prefix.clone()),
            group_attribute: o.group_attribute.unwrap_or(self.group_attribute),
            group_prefix: o
                .group_prefix
                .clone()
                .unwrap_or_else(|| self.group_prefix.clone()),
        }
    }

    pub(crate) fn binds_users(&self) -> bool {
        matches!(self.kind, SubjectKind::User | SubjectKind::UserAndGroup)
    }

    pub(crate) fn binds_groups(&self) -> bool {
        matches!(self.kind, SubjectKind::Group | SubjectKind::UserAndGroup)
    }

    pub(super) fn user_attr<'u>(&self, u: &'u UserInput) -> Option<&'u str> {
        let v = match self.user_attribute {
            UserAttribute::UserName => Some(u.user_name.as_str()),
            UserAttribute::Email => u.work_email.as_deref(),
            UserAttribute::ExternalId => u.external_id.as_deref(),
        };
        v.filter(|v| !v.is_empty())
    }

    pub(super) fn group_attr<'g>(&self, g: &'g GroupInput) -> Option<&'g str> {
        let v = match self.group_attribute {
            GroupAttribute::ExternalId => g.external_id.as_deref(),
            GroupAttribute::DisplayName => Some(g.display_name.as_str()),
        };
        v.filter(|v| !v.is_empty())
    }

    /// The subject a user becomes: its attribute with the prefix, checked.
    pub(super) fn user_subject(&self, u: &UserInput) -> Named {
        Named::check(self.user_attr(u), &self.user_prefix)
    }

    /// The User subject `u` is bound as, if any (whatever its active state).
    pub(crate) fn user_subject_name(&self, u: &UserInput) -> Option<Subject> {
        match self.user_subject(u) {
            Named::Bound(name) => Some(Subject::user(name)),
            _ => None,
        }
    }

    /// The subject a group becomes: its attribute with the prefix, checked.
    pub(super) fn group_subject(&self, g: &GroupInput) -> Named {
        Named::check(self.group_attr(g), &self.group_prefix)
    }

    /// The User subject `u` becomes, or why it becomes none (for people: `kube-scim access`).
    pub(crate) fn explain_user_subject(&self, u: &UserInput) -> Result<Subject, NoSubject> {
        match self.user_subject(u) {
            Named::Bound(name) => Ok(Subject::user(name)),
            Named::Missing => Err(NoSubject::Missing(format!(
                "user has no {}",
                self.user_attribute_name()
            ))),
            Named::Refused(name, why) => Err(NoSubject::Refused(refusal(
                format!("user {}", u.id),
                self.user_attribute_name(),
                &name,
                why,
            ))),
        }
    }

    /// The Group subject `g` becomes, or why it becomes none.
    pub(crate) fn explain_group_subject(&self, g: &GroupInput) -> Result<Subject, NoSubject> {
        match self.group_subject(g) {
            Named::Bound(name) => Ok(Subject::group(name)),
            Named::Missing => Err(NoSubject::Missing(format!(
                "group {:?} has no {}",
                g.display_name,
                self.group_attribute_name()
            ))),
            Named::Refused(name, why) => Err(NoSubject::Refused(refusal(
                format!("group {:?}", g.display_name),
                self.group_attribute_name(),
                &name,
                why,
            ))),
        }
    }

    pub(super) fn user_attribute_name(&self) -> &'static str {
        match self.user_attribute {
            UserAttribute::UserName => "userName",
            UserAttribute::Email => "email",
            UserAttribute::ExternalId => "externalId",
        }
    }

    pub(super) fn group_attribute_name(&self) -> &'static str {
        match self.group_attribute {
            GroupAttribute::ExternalId => "externalId",
            GroupAttribute::DisplayName => "displayName",
        }
    }
}

/// Why a user or group becomes no subject of a mapping's bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoSubject {
    /// The attribute that names subjects is absent or empty.
    Missing(String),
    /// The final name is unsafe (see [`check_subject_name`]): never bound.
    Refused(String),
}

/// What a user's or group's attribute becomes as an RBAC subject name.
pub(super) enum Named {
    /// The attribute is absent or empty.
    Missing,
    /// The final name (prefix included) fails [`check_subject_name`]: never bound.
    Refused(String, UnsafeName),
    Bound(String),
}

impl Named {
    pub(super) fn check(attr: Option<&str>, prefix: &str) -> Named {
        let Some(a) = attr else {
            return Named::Missing;
        };
        let name = format!("{prefix}{a}");
        match check_subject_name(&name) {
            Ok(()) => Named::Bound(name),
            Err(why) => Named::Refused(name, why),
        }
    }

    pub(super) fn is_bound(&self) -> bool {
        matches!(self, Named::Bound(_))
    }
}

/// `who` (`user <id>` / `group <displayName>`) refused as `name`, for status messages:
/// the name is attacker-chosen, so it is shortened and debug-quoted.
pub(super) fn refusal(who: String, attribute: &str, name: &str, why: UnsafeName) -> String {
    let shown: String = name.chars().take(64).collect();
    let ellipsis = if shown.len() < name.len() { "…" } else { "" };
    format!("{who} ({attribute} → subject {shown:?}{ellipsis} {why})")
}
