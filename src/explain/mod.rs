//! Reports for people, built from the controller's own plan: who has what and why
//! (`kube-scim access USER`), who can get into a namespace (`kube-scim who NAMESPACE`),
//! and what a mapping edit would change (`kube-scim plan -f FILE`).
//!
//! Pure like the plan: [`Facts`] (the plan's input and settings, and the little the plan
//! does not look at) and a [`Plan`] in, serializable reports out. No kube client or
//! object types; `crate::cli` lists the cluster and prints. Every list in a report is
//! sorted, so the same cluster gives the same output.
pub mod access;
pub mod diff;
pub mod table;
pub mod who;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::controller::naming;
use crate::controller::plan::{
    BindingKind, ExistingBinding, MappingKey, Plan, PlanInput, Reason, Settings, Subject,
    SubjectType,
};
use crate::crd::RoleRef;

/// What the reports read: what the plan reads, and what only people need.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The operator's settings, as the controller runs with them.
    pub settings: Settings,
    pub input: PlanInput,
    /// By user id: what people recognise a user by besides the plan's fields.
    pub people: BTreeMap<String, Person>,
    /// By mapping: its Ready condition as the controller last wrote it. Only the apply
    /// step knows that the API server refused a binding (`BindingRefused`); the plan
    /// cannot say so.
    pub live_status: BTreeMap<MappingKey, LiveStatus>,
}

/// A ScimUser's names besides `userName`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Person {
    pub display_name: Option<String>,
    /// Every `emails[].value`.
    pub emails: Vec<String>,
}

/// A mapping's Ready condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveStatus {
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl Facts {
    /// `BindingRefused` from the mapping's live status, if that is its reason.
    pub(crate) fn binding_refused(&self, key: &MappingKey) -> Option<&str> {
        self.live_status
            .get(key)
            .filter(|s| s.reason.as_deref() == Some(Reason::BindingRefused.as_str()))
            .map(|s| s.message.as_deref().unwrap_or(""))
    }
}

/// Output format of every report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// `report` as JSON or YAML, or `table(report)`; ends with a newline.
pub fn render<T: Serialize>(
    report: &T,
    format: Format,
    table: impl FnOnce(&T) -> String,
) -> Result<String, RenderError> {
    Ok(match format {
        Format::Table => table(report),
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
        Format::Yaml => serde_yaml::to_string(report)?,
    })
}

// ---------------------------------------------------------------------------------------
// Shared views
// ---------------------------------------------------------------------------------------

/// A mapping, as reports name it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct MappingRef {
    /// `GroupRoleMapping` or `ClusterGroupRoleMapping`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl From<&MappingKey> for MappingRef {
    fn from(k: &MappingKey) -> Self {
        MappingRef {
            kind: k.kind().to_owned(),
            namespace: k.namespace().map(str::to_owned),
            name: k.name().to_owned(),
        }
    }
}

/// `grm payments/devs` or `cgrm platform` (the kinds' short names).
impl fmt::Display for MappingRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "grm {ns}/{}", self.name),
            None => write!(f, "cgrm {}", self.name),
        }
    }
}

/// A RoleBinding or ClusterRoleBinding object.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct BindingRef {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl BindingRef {
    fn new(kind: BindingKind, namespace: Option<&str>, name: &str) -> Self {
        BindingRef {
            kind: kind.as_str().to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }
}

/// `rolebinding/NAME` or `clusterrolebinding/NAME`, as kubectl takes them.
impl fmt::Display for BindingRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.to_lowercase(), self.name)
    }
}

/// An RBAC subject.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubjectRef {
    /// `User` or `Group`.
    pub kind: String,
    pub name: String,
}

impl From<&Subject> for SubjectRef {
    fn from(s: &Subject) -> Self {
        SubjectRef {
            kind: s.kind.as_str().to_owned(),
            name: s.name.clone(),
        }
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// `ClusterRole/edit`, `Role/deployer`.
pub(crate) fn role_text(r: &RoleRef) -> String {
    format!("{}/{}", naming::role_kind_str(r.kind), r.name)
}

/// Where a grant applies.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// In one namespace (a RoleBinding).
    Namespace,
    /// In every namespace and on cluster-scoped resources (a ClusterRoleBinding).
    Cluster,
}

impl Scope {
    fn of(kind: BindingKind) -> Scope {
        match kind {
            BindingKind::RoleBinding => Scope::Namespace,
            BindingKind::ClusterRoleBinding => Scope::Cluster,
        }
    }
}

/// Whether a planned grant is in force in the cluster now.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Live {
    /// The binding object exists and names the subject.
    Applied,
    /// The object exists but does not name the subject yet: the controller's next pass adds it.
    Pending,
    /// The object does not exist yet: the controller's next pass creates it.
    Absent,
    /// The object names the subject, but the plan no longer does: the controller's next
    /// pass removes it.
    Removing,
}

impl Live {
    fn text(self) -> &'static str {
        match self {
            Live::Applied => "applied",
            Live::Pending => "pending",
            Live::Absent => "absent",
            Live::Removing => "removing",
        }
    }
}

/// The binding object through which a subject holds a role, and how it stands.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Carrier {
    /// The owning mapping; none for an orphaned binding (the next pass prunes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingRef>,
    pub role: RoleRef,
    pub scope: Scope,
    /// The object (one part of a split binding).
    pub binding: BindingRef,
    pub live: Live,
    /// When the mapping's grants end (`spec.expiresAt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Carrier {
    /// `b`, owned by `mapping` (if any), carrying a subject whose state is `live`.
    fn new(
        input: &PlanInput,
        b: &Bound<'_>,
        mapping: Option<&MappingKey>,
        live: Live,
        note: Option<String>,
    ) -> Self {
        Carrier {
            mapping: mapping.map(MappingRef::from),
            role: b.role_ref.clone(),
            scope: Scope::of(b.kind),
            binding: b.binding_ref(),
            live,
            expires_at: mapping.and_then(|k| expires_at(input, k)),
            note,
        }
    }

    /// Table cells: mapping, role, `place`, binding, live, expires, note.
    fn cells(&self, place: String) -> Vec<String> {
        vec![
            self.mapping
                .as_ref()
                .map_or_else(|| "(orphan)".to_owned(), ToString::to_string),
            role_text(&self.role),
            place,
            self.binding.to_string(),
            self.live.text().to_owned(),
            table::or_dash(self.expires_at.as_deref()),
            table::or_dash(self.note.as_deref()),
        ]
    }
}

/// Why a grant is missing, or what stands in its way: the plan's condition reasons, and
/// the reasons that concern one user. Serialized as its name (`Inactive`, `Expired`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Why {
    /// The user is deactivated (`active: false`): not bound as a User subject.
    Inactive,
    /// The user is in no group a mapping selects.
    NotAMember,
    /// The user (or group) lacks the attribute that names subjects.
    NoSubjectName,
    /// A mapping's condition reason.
    Mapping(Reason),
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Inactive => "Inactive",
            Why::NotAMember => "NotAMember",
            Why::NoSubjectName => "NoSubjectName",
            Why::Mapping(r) => r.as_str(),
        }
    }

    /// The mapping-wide reasons that stand between a selected member and a grant (the
    /// others concern other groups or users, or keep access rather than withhold it).
    fn blocking(r: Reason) -> Option<Why> {
        match r {
            // FanOutExceeded withholds only new subjects and bindings: `access` checks
            // whether this user's are among them.
            Reason::Reconciled
            | Reason::GroupNotFound
            | Reason::SubjectRefused
            | Reason::RemovalHeld
            | Reason::FanOutExceeded => None,
            Reason::NamespaceNotFound
            | Reason::RoleNotFound
            | Reason::BindingRefused
            | Reason::ProtectedRoleRefused
            | Reason::ScopeRefused
            | Reason::InvalidSelector
            | Reason::InvalidSpec
            | Reason::Expired => Some(Why::Mapping(r)),
        }
    }
}

impl Serialize for Why {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------
// The bindings a plan leads to
// ---------------------------------------------------------------------------------------

/// One binding object the plan leads to: applied as planned, or kept as it is (a frozen
/// mapping's, or one whose prune the mass-removal guard holds).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound<'a> {
    pub kind: BindingKind,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub role_ref: &'a RoleRef,
    pub subjects: &'a [Subject],
    pub mapping: &'a MappingKey,
    pub kept: bool,
}

type ObjectKey<'a> = (BindingKind, Option<&'a str>, &'a str);

impl<'a> Bound<'a> {
    fn key(&self) -> ObjectKey<'a> {
        (self.kind, self.namespace, self.name)
    }

    fn binding_ref(&self) -> BindingRef {
        BindingRef::new(self.kind, self.namespace, self.name)
    }
}

/// Every binding object `plan` leaves in place, sorted by (kind, namespace, name).
pub(crate) fn bound<'a>(plan: &'a Plan, input: &'a PlanInput) -> Vec<Bound<'a>> {
    let mut out: Vec<Bound<'a>> = plan
        .bindings
        .iter()
        .map(|b| Bound {
            kind: b.kind,
            namespace: b.namespace.as_deref(),
            name: &b.name,
            role_ref: &b.role_ref,
            subjects: &b.subjects,
            mapping: &b.mapping,
            kept: false,
        })
        .collect();
    let planned: HashSet<ObjectKey<'a>> = out.iter().map(Bound::key).collect();
    let live = LiveIndex::new(input);
    // Kept objects are listed in the layouts but not planned.
    for (key, layout) in &plan.layouts {
        for t in &layout.targets {
            for part in &t.parts {
                let id = (t.kind, t.namespace.as_deref(), part.as_str());
                if planned.contains(&id) {
                    continue;
                }
                if let Some(e) = live.get(id) {
                    out.push(Bound {
                        kind: e.kind,
                        namespace: e.namespace.as_deref(),
                        name: &e.name,
                        role_ref: &e.role_ref,
                        subjects: &e.subjects,
                        mapping: key,
                        kept: true,
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.key().cmp(&b.key()));
    out.dedup_by(|a, b| a.key() == b.key());
    out
}

/// The managed bindings as they are in the cluster, by object.
pub(crate) struct LiveIndex<'a> {
    by_key: HashMap<ObjectKey<'a>, &'a ExistingBinding>,
}

impl<'a> LiveIndex<'a> {
    pub fn new(input: &'a PlanInput) -> Self {
        LiveIndex {
            by_key: input
                .existing
                .iter()
                .map(|b| ((b.kind, b.namespace.as_deref(), b.name.as_str()), b))
                .collect(),
        }
    }

    fn get(&self, key: ObjectKey<'_>) -> Option<&'a ExistingBinding> {
        self.by_key.get(&key).copied()
    }

    /// Whether the live object of `b` names `subject`.
    fn state(&self, b: &Bound<'_>, subject: &Subject) -> Live {
        match self.get(b.key()) {
            None => Live::Absent,
            Some(e) if e.subjects.contains(subject) => Live::Applied,
            Some(_) => Live::Pending,
        }
    }
}

/// `spec.expiresAt` of `key`, RFC 3339.
pub(crate) fn expires_at(input: &PlanInput, key: &MappingKey) -> Option<String> {
    input
        .mappings
        .iter()
        .find(|m| &m.key == key && !m.deleting)
        .and_then(|m| m.spec.expires_at())
        .map(|t| t.to_string())
}

/// A kept binding's explanation: why the plan leaves the object as it is.
pub(crate) fn kept_note(plan: &Plan, key: &MappingKey) -> String {
    match plan.mapping_status.get(key) {
        Some(o) if matches!(o.reason, Reason::InvalidSpec | Reason::InvalidSelector) => format!(
            "kept unchanged while the mapping's spec is invalid ({})",
            o.reason
        ),
        Some(o) => held_note(o),
        None => "kept unchanged".to_owned(),
    }
}

/// A subject the mass-removal guard keeps.
pub(crate) fn held_note(o: &crate::controller::plan::MappingOutcome) -> String {
    match &o.held_removals {
        Some(h) => format!(
            "held by the mass-removal guard: the mapping's edit removes it once annotation {}={} confirms",
            crate::crd::CONFIRM_REMOVAL_ANNOTATION,
            h.confirm_token
        ),
        None => "kept unchanged".to_owned(),
    }
}

/// Subjects of a kind, for the name columns.
pub(crate) fn is_user(s: &Subject) -> bool {
    s.kind == SubjectType::User
}

#[cfg(test)]
pub(crate) mod testing {
    //! A small world for the reports' tests.
    use super::*;
    use crate::controller::plan::{
        GroupInput, MappingInput, MappingSpec, NamespaceInput, UserInput,
    };
    use serde_json::json;

    pub fn user(id: &str, name: &str, active: bool) -> UserInput {
        UserInput {
            id: id.into(),
            user_name: name.into(),
            external_id: Some(format!("ext-{id}")),
            work_email: Some(format!("{id}@work.example")),
            active,
        }
    }

    pub fn group(id: &str, name: &str, members: &[&str]) -> GroupInput {
        GroupInput {
            id: id.into(),
            display_name: name.into(),
            external_id: Some(format!("ext-{id}")),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    pub fn namespace(name: &str, labels: &[(&str, &str)]) -> NamespaceInput {
        NamespaceInput {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            terminating: false,
        }
    }

    pub fn grm(ns: &str, name: &str, spec: serde_json::Value) -> MappingInput {
        MappingInput {
            key: MappingKey::Namespaced {
                namespace: ns.into(),
                name: name.into(),
            },
            generation: Some(1),
            observed_generation: Some(1),
            spec: MappingSpec::Namespaced(serde_json::from_value(spec).expect("grm spec")),
            confirm_annotation: None,
            deleting: false,
        }
    }

    pub fn cgrm(name: &str, spec: serde_json::Value) -> MappingInput {
        MappingInput {
            key: MappingKey::Cluster { name: name.into() },
            generation: Some(1),
            observed_generation: Some(1),
            spec: MappingSpec::Cluster(serde_json::from_value(spec).expect("cgrm spec")),
            confirm_annotation: None,
            deleting: false,
        }
    }

    /// alice (active, in devs and staff), bob (inactive, in devs), carol (in no group);
    /// `payments/devs` binds devs to edit; `staff-view` binds staff to view cluster-wide;
    /// `staff-admin` asks for cluster-admin without opting in.
    pub fn world() -> Facts {
        let input = PlanInput {
            users: vec![
                user("u-alice", "alice@example.com", true),
                user("u-bob", "bob@example.com", false),
                user("u-carol", "carol@example.com", true),
            ],
            groups: vec![
                group("g-devs", "devs", &["u-alice", "u-bob"]),
                group("g-staff", "staff", &["u-alice"]),
            ],
            namespaces: vec![namespace("payments", &[]), namespace("kube-system", &[])],
            cluster_roles: ["edit", "view", "cluster-admin"]
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
            mappings: vec![
                grm(
                    "payments",
                    "devs",
                    json!({"groups": [{"displayName": "devs"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}}),
                ),
                cgrm(
                    "staff-view",
                    json!({"groups": [{"displayName": "staff"}], "clusterRoles": ["view"]}),
                ),
                cgrm(
                    "staff-admin",
                    json!({"groups": [{"displayName": "staff"}], "clusterRoles": ["cluster-admin"]}),
                ),
            ],
            ..PlanInput::default()
        };
        let people = [
            ("u-alice", "Alice A", "alice@contoso.com"),
            ("u-bob", "Bob B", "bob@contoso.com"),
            ("u-carol", "Carol C", "carol@contoso.com"),
        ]
        .iter()
        .map(|(id, dn, email)| {
            (
                (*id).to_owned(),
                Person {
                    display_name: Some((*dn).to_owned()),
                    emails: vec![(*email).to_owned()],
                },
            )
        })
        .collect();
        Facts {
            // cluster-admin may be bound cluster-wide, once opted in.
            settings: Settings {
                cluster_wide_roles: vec!["view".into(), "cluster-admin".into()],
                ..Settings::default()
            },
            input,
            people,
            live_status: BTreeMap::new(),
        }
    }

    /// The world with every planned binding live, as after the controller's pass.
    pub fn applied(mut facts: Facts) -> Facts {
        let plan = crate::controller::plan::plan(&facts.settings, &facts.input);
        facts.input.existing = plan
            .bindings
            .iter()
            .map(crate::controller::plan::DesiredBinding::as_existing)
            .collect();
        facts
    }
}
