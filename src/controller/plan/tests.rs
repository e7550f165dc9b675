use super::*;
use crate::crd::NamespaceRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

#[test]
fn every_reason_is_listed_once_in_severity_order() {
    // No wildcard: a new variant stops this compiling until it is added here and to
    // `Reason::ALL` (the metric would otherwise never report it).
    let listed = |r: Reason| match r {
        Reason::Reconciled
        | Reason::NamespaceNotFound
        | Reason::RoleNotFound
        | Reason::GroupNotFound
        | Reason::SubjectRefused
        | Reason::RemovalHeld
        | Reason::FanOutExceeded
        | Reason::BindingRefused
        | Reason::ProtectedRoleRefused
        | Reason::ScopeRefused
        | Reason::InvalidSelector
        | Reason::InvalidSpec
        | Reason::Expired => Reason::ALL.contains(&r),
    };
    assert!(Reason::ALL.iter().all(|r| listed(*r)));
    assert!(
        Reason::ALL.windows(2).all(|w| w[0] < w[1]),
        "sorted, no repeats"
    );
    let names: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), Reason::ALL.len());
}

// ----- fixtures ---------------------------------------------------------------------

fn user(id: &str) -> UserInput {
    UserInput {
        id: id.into(),
        user_name: format!("{id}@example.com"),
        external_id: Some(format!("ext-{id}")),
        work_email: Some(format!("{id}@work.example")),
        active: true,
    }
}

fn group(id: &str, members: &[&str]) -> GroupInput {
    GroupInput {
        id: format!("id-{id}"),
        display_name: id.into(),
        external_id: Some(format!("gx-{id}")),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> NamespaceInput {
    NamespaceInput {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        terminating: false,
    }
}

fn by_name(n: &str) -> GroupRef {
    GroupRef {
        display_name: Some(n.into()),
        external_id: None,
    }
}

fn by_ext(e: &str) -> GroupRef {
    GroupRef {
        display_name: None,
        external_id: Some(e.into()),
    }
}

fn role(name: &str) -> RoleRef {
    RoleRef {
        kind: RoleKind::Role,
        name: name.into(),
    }
}

fn ns_key(ns: &str, name: &str) -> MappingKey {
    MappingKey::Namespaced {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn c_key(name: &str) -> MappingKey {
    MappingKey::Cluster { name: name.into() }
}

fn grm(ns: &str, name: &str, groups: Vec<GroupRef>, role_ref: RoleRef) -> MappingInput {
    MappingInput {
        key: ns_key(ns, name),
        generation: Some(3),
        observed_generation: None,
        spec: MappingSpec::Namespaced(GroupRoleMappingSpec {
            groups,
            role_ref,
            subjects: None,
            allow_protected_roles: false,
            expires_at: None,
        }),
        confirm_annotation: None,
        deleting: false,
    }
}

fn cgrm(
    name: &str,
    groups: Vec<GroupRef>,
    cluster_roles: &[&str],
    namespace_roles: Vec<NamespaceRole>,
) -> MappingInput {
    MappingInput {
        key: c_key(name),
        generation: Some(1),
        observed_generation: None,
        spec: MappingSpec::Cluster(ClusterGroupRoleMappingSpec {
            groups,
            cluster_roles: cluster_roles.iter().map(|r| r.to_string()).collect(),
            namespace_roles,
            subjects: None,
            allow_protected_roles: false,
            expires_at: None,
        }),
        confirm_annotation: None,
        deleting: false,
    }
}

fn ns_role(role: &str, namespaces: &[&str], selector: Option<LabelSelector>) -> NamespaceRole {
    NamespaceRole {
        cluster_role: role.into(),
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        namespace_selector: selector,
    }
}

fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn match_exprs(exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(exprs),
    }
}

fn set_subjects(m: &mut MappingInput, o: SubjectOptions) {
    match &mut m.spec {
        MappingSpec::Namespaced(s) => s.subjects = Some(o),
        MappingSpec::Cluster(s) => s.subjects = Some(o),
    }
}

fn set_kind(m: &mut MappingInput, kind: SubjectKind) {
    set_subjects(
        m,
        SubjectOptions {
            kind: Some(kind),
            ..Default::default()
        },
    );
}

fn set_user_attribute(m: &mut MappingInput, attribute: UserAttribute) {
    set_subjects(
        m,
        SubjectOptions {
            user_attribute: Some(attribute),
            ..Default::default()
        },
    );
}

/// The mapping most tests start from: group `devs` gets ClusterRole `edit` in `payments`.
fn devs_edit() -> MappingInput {
    grm(
        "payments",
        "devs",
        vec![by_name("devs")],
        cluster_role("edit"),
    )
}

fn allow_protected(m: &mut MappingInput) {
    match &mut m.spec {
        MappingSpec::Namespaced(s) => s.allow_protected_roles = true,
        MappingSpec::Cluster(s) => s.allow_protected_roles = true,
    }
}

/// alice, bob, carol active, dave inactive, erin in no group; devs = alice, bob, dave and
/// an unknown id; ops = carol, alice.
fn world() -> PlanInput {
    let mut dave = user("dave");
    dave.active = false;
    let mut dying = namespace("dying", &[("team", "pay")]);
    dying.terminating = true;
    PlanInput {
        mappings: vec![],
        groups: vec![
            group("devs", &["alice", "bob", "dave", "ghost"]),
            group("ops", &["carol", "alice"]),
        ],
        users: vec![
            user("alice"),
            user("bob"),
            user("carol"),
            dave,
            user("erin"),
        ],
        namespaces: vec![
            namespace("payments", &[("team", "pay"), ("env", "prod")]),
            namespace("shop", &[("team", "shop"), ("env", "dev")]),
            namespace("tools", &[]),
            dying,
        ],
        cluster_roles: [
            "edit",
            "view",
            "admin",
            "cluster-admin",
            "system:aggregate-to-edit",
        ]
        .iter()
        .map(|r| r.to_string())
        .collect(),
        roles: [("payments".to_string(), "deployer".to_string())]
            .into_iter()
            .collect(),
        existing: vec![],
        now: "2026-06-01T12:00:00Z".parse().unwrap(),
    }
}

fn expire(m: &mut MappingInput, at: &str) {
    let at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        at.parse().unwrap(),
    ));
    match &mut m.spec {
        MappingSpec::Namespaced(s) => s.expires_at = at,
        MappingSpec::Cluster(s) => s.expires_at = at,
    }
}

#[test]
fn an_expired_mapping_binds_nothing_and_a_moved_expiry_renews_it() {
    let mut w = world();
    let mut m = grm(
        "payments",
        "temp",
        vec![by_name("devs")],
        cluster_role("edit"),
    );
    let other = cgrm("lasting", vec![by_name("ops")], &["view"], vec![]);
    // Expires in 3 s: bound, and the plan asks to be run again at the expiry.
    expire(&mut m, "2026-06-01T12:00:03Z");
    w.mappings = vec![m.clone(), other.clone()];
    let p = run(&w);
    let st = status(&p, &m.key);
    assert!(st.ready, "{st:?}");
    assert!(
        st.message.contains("expires at 2026-06-01T12:00:03Z"),
        "{st:?}"
    );
    assert_eq!(p.next_expiry, Some("2026-06-01T12:00:03Z".parse().unwrap()));
    w.existing = applied(&p);
    let key = m.key.clone();
    let mine = |p: &Plan| p.bindings.iter().filter(|b| b.mapping == key).count();
    assert_eq!(mine(&p), 1);
    assert!(p.user_status["alice"]
        .access()
        .iter()
        .any(|g| g.role_name == "edit"));

    // At the expiry: no bindings, the existing one pruned without the mass-removal
    // guard, Ready=False/Expired with an Event; the other mapping is untouched.
    w.now = "2026-06-01T12:00:03Z".parse().unwrap();
    let p = run(&w);
    let st = status(&p, &m.key);
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::Expired);
    assert!(st.held_removals.is_none());
    assert_eq!(st.subject_count, Some(0));
    assert!(st.bindings.is_empty());
    assert!(st
        .events
        .iter()
        .any(|e| e.reason == "Expired" && e.type_ == EventType::Normal));
    assert_eq!(mine(&p), 0);
    let pruned: Vec<&str> = p.prune.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(pruned.len(), 1, "{pruned:?}");
    assert!(w
        .existing
        .iter()
        .any(|b| b.name == pruned[0] && b.mapping.as_ref() == Some(&m.key)));
    assert!(!p.user_status["alice"]
        .access()
        .iter()
        .any(|g| g.role_name == "edit"));
    assert!(status(&p, &other.key).ready);
    assert_eq!(p.next_expiry, None, "nothing expires any more");

    // Renewed: moving the time binds again.
    w.existing = applied(&p);
    expire(&mut m, "2026-06-02T12:00:00Z");
    w.mappings = vec![m.clone(), other.clone()];
    let p = run(&w);
    assert!(status(&p, &m.key).ready);
    assert_eq!(mine(&p), 1);
    assert_eq!(p.next_expiry, Some("2026-06-02T12:00:00Z".parse().unwrap()));
}

#[test]
fn the_nearest_future_expiry_wakes_the_controller() {
    let mut w = world();
    let mut a = cgrm("a", vec![by_name("ops")], &["view"], vec![]);
    let mut b = cgrm("b", vec![by_name("ops")], &["view"], vec![]);
    let mut c = cgrm("c", vec![by_name("ops")], &["view"], vec![]);
    expire(&mut a, "2026-06-01T13:00:00Z");
    expire(&mut b, "2026-06-01T12:30:00Z");
    expire(&mut c, "2026-06-01T11:00:00Z"); // past: not a wake-up
    w.mappings = vec![a, b, c.clone()];
    let p = run(&w);
    assert_eq!(p.next_expiry, Some("2026-06-01T12:30:00Z".parse().unwrap()));
    assert_eq!(status(&p, &c.key).reason, Reason::Expired);
}

#[test]
fn columns_summarize_groups_roles_and_subjects() {
    let mut w = world();
    let m = grm(
        "payments",
        "devs",
        vec![by_name("devs"), by_name("ops")],
        cluster_role("edit"),
    );
    let c = cgrm(
        "wide",
        vec![by_name("ops")],
        &["view"],
        vec![
            ns_role("edit", &["payments"], None),
            ns_role("edit", &["shop"], None),
        ],
    );
    w.mappings = vec![m.clone(), c.clone()];
    let p = run(&w);
    let st = status(&p, &m.key);
    assert_eq!(st.groups, "devs, ops");
    assert_eq!(st.roles, "edit");
    // alice, bob (devs; dave inactive, ghost unknown) and carol (ops): alice once.
    assert_eq!(st.subject_count, Some(3));
    let st = status(&p, &c.key);
    assert_eq!(st.roles, "view, edit (ns)");
    assert_eq!(st.subject_count, Some(2));

    let many: Vec<String> = (0..20).map(|i| format!("group-number-{i}")).collect();
    let s = shorten_list(many.iter().map(String::as_str));
    assert!(s.len() <= MAX_COLUMN, "{s}");
    assert!(
        s.starts_with("group-number-0, ") && s.ends_with(", +18"),
        "{s}"
    );
    let long = "x".repeat(100);
    let s = shorten_list([long.as_str(), "b"]);
    assert!(s.starts_with("xxx") && s.contains("..., +1"), "{s}");
    assert_eq!(shorten_list([]), "");
}

/// Any ClusterRole may be bound cluster-wide here; the scope rules have their own tests.
fn run(input: &PlanInput) -> Plan {
    let settings = Settings {
        cluster_wide_roles: vec!["*".into()],
        ..Settings::default()
    };
    plan(&settings, input)
}

#[test]
fn protected_namespaces_are_never_bound_and_cluster_wide_is_view_only() {
    let mut w = world();
    w.namespaces
        .push(namespace("kube-system", &[("team", "pay")]));
    w.namespaces.push(namespace("kube-public", &[]));
    let into_system = grm(
        "kube-system",
        "sys",
        vec![by_name("ops")],
        cluster_role("view"),
    );
    let broad = cgrm(
        "broad",
        vec![by_name("ops")],
        &["view", "edit"],
        vec![
            ns_role("edit", &[], Some(match_labels(&[("team", "pay")]))),
            ns_role("view", &["kube-public"], None),
        ],
    );
    w.mappings = vec![into_system.clone(), broad.clone()];
    let p = plan(&Settings::default(), &w);

    assert!(of(&p, &into_system.key).is_empty());
    let st = status(&p, &into_system.key);
    assert_eq!(st.reason, Reason::ScopeRefused);
    assert!(
        st.message.contains("namespace kube-system is protected"),
        "{}",
        st.message
    );
    assert!(st.events.iter().any(|e| e.reason == "ScopeRefused"));

    let targets: BTreeSet<(BindingKind, Option<String>, String)> = of(&p, &broad.key)
        .iter()
        .map(|b| (b.kind, b.namespace.clone(), b.role_ref.name.clone()))
        .collect();
    assert_eq!(
        targets,
        [
            (
                BindingKind::RoleBinding,
                Some("dying".to_owned()),
                "edit".to_owned()
            ),
            (
                BindingKind::RoleBinding,
                Some("payments".to_owned()),
                "edit".to_owned()
            ),
            (BindingKind::ClusterRoleBinding, None, "view".to_owned()),
        ]
        .into_iter()
        .filter(|t| t.1.as_deref() != Some("dying"))
        .collect()
    );
    let st = status(&p, &broad.key);
    assert_eq!(st.reason, Reason::ScopeRefused);
    assert!(
        st.message
            .contains("ClusterRole edit may not be bound cluster-wide"),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("namespace kube-public is protected"),
        "{}",
        st.message
    );
    assert!(
        st.message
            .contains("skips protected namespaces: kube-system"),
        "{}",
        st.message
    );

    // The operator can list namespaces and cluster-wide roles explicitly.
    let open = Settings {
        protected_namespaces: BTreeSet::new(),
        cluster_wide_roles: vec!["view".into(), "ed*".into()],
        ..Settings::default()
    };
    let p = plan(&open, &w);
    assert!(status(&p, &into_system.key).ready);
    assert!(status(&p, &broad.key).ready, "{:?}", status(&p, &broad.key));
}

fn of<'p>(p: &'p Plan, key: &MappingKey) -> Vec<&'p DesiredBinding> {
    p.bindings.iter().filter(|b| &b.mapping == key).collect()
}

fn names(b: &DesiredBinding) -> Vec<&str> {
    b.subjects.iter().map(|s| s.name.as_str()).collect()
}

fn status<'p>(p: &'p Plan, key: &MappingKey) -> &'p MappingOutcome {
    &p.mapping_status[key]
}

/// What the cluster holds after the plan is applied, read back like the I/O layer does.
fn applied(p: &Plan) -> Vec<ExistingBinding> {
    p.bindings.iter().map(DesiredBinding::as_existing).collect()
}

fn ids(p: &Plan) -> BTreeSet<(BindingKind, Option<String>, String)> {
    p.bindings
        .iter()
        .map(|b| (b.kind, b.namespace.clone(), b.name.clone()))
        .collect()
}

// ----- subjects -----------------------------------------------------------------------

#[test]
fn user_subjects_are_active_known_members_by_user_name() {
    let mut w = world();
    w.mappings = vec![devs_edit()];
    let p = run(&w);
    let key = ns_key("payments", "devs");
    let bs = of(&p, &key);
    assert_eq!(bs.len(), 1);
    let b = bs[0];
    assert_eq!(b.kind, BindingKind::RoleBinding);
    assert_eq!(b.namespace.as_deref(), Some("payments"));
    assert_eq!(b.role_ref, cluster_role("edit"));
    assert_eq!(names(b), ["alice@example.com", "bob@example.com"]);
    assert!(b.subjects.iter().all(|s| s.kind == SubjectType::User));
    let st = status(&p, &key);
    assert!(st.ready, "{st:?}");
    assert_eq!(st.reason, Reason::Reconciled);
    assert_eq!(st.observed_generation, Some(3));
    assert!(
        st.message.contains("1 inactive member(s) not bound"),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("1 member id(s) not found"),
        "{}",
        st.message
    );
    assert_eq!(st.bindings.len(), 1);
    assert_eq!(st.bindings[0].subjects, 2);
    assert_eq!(st.bindings[0].role, "ClusterRole/edit");
    assert!(p.prune.is_empty());
}

#[test]
fn group_subjects_use_group_attribute_and_prefix() {
    let mut w = world();
    let mut m = grm(
        "payments",
        "devs",
        vec![by_name("devs"), by_name("ops")],
        cluster_role("edit"),
    );
    set_subjects(
        &mut m,
        SubjectOptions {
            kind: Some(SubjectKind::Group),
            group_prefix: Some("oidc:".into()),
            ..Default::default()
        },
    );
    w.mappings = vec![m.clone()];
    let p = run(&w);
    let b = of(&p, &m.key)[0];
    assert_eq!(
        &b.subjects[..],
        [
            Subject::group("oidc:gx-devs"),
            Subject::group("oidc:gx-ops")
        ]
    );

    set_subjects(
        &mut m,
        SubjectOptions {
            kind: Some(SubjectKind::Group),
            group_attribute: Some(GroupAttribute::DisplayName),
            ..Default::default()
        },
    );
    w.mappings = vec![m.clone()];
    let p = run(&w);
    assert_eq!(
        &of(&p, &m.key)[0].subjects[..],
        [Subject::group("devs"), Subject::group("ops")]
    );
}

#[test]
fn group_without_external_id_is_skipped_and_noted() {
    let mut w = world();
    w.groups[1].external_id = None;
    let mut m = grm(
        "payments",
        "devs",
        vec![by_name("devs"), by_name("ops")],
        cluster_role("edit"),
    );
    set_kind(&mut m, SubjectKind::Group);
    w.mappings = vec![m.clone()];
    let p = run(&w);
    assert_eq!(&of(&p, &m.key)[0].subjects[..], [Subject::group("gx-devs")]);
    let st = status(&p, &m.key);
    assert!(st.ready);
    assert!(
        st.message
            .contains("1 group(s) skipped for lacking externalId: ops"),
        "{}",
        st.message
    );
}

#[test]
fn user_and_group_binds_both() {
    let mut w = world();
    let mut m = grm(
        "payments",
        "ops",
        vec![by_name("ops")],
        cluster_role("view"),
    );
    set_subjects(
        &mut m,
        SubjectOptions {
            kind: Some(SubjectKind::UserAndGroup),
            user_prefix: Some("u:".into()),
            group_prefix: Some("g:".into()),
            ..Default::default()
        },
    );
    w.mappings = vec![m.clone()];
    let p = run(&w);
    assert_eq!(
        &of(&p, &m.key)[0].subjects[..],
        [
            Subject::user("u:alice@example.com"),
            Subject::user("u:carol@example.com"),
            Subject::group("g:gx-ops"),
        ]
    );
}

#[test]
fn reserved_and_unsafe_subject_names_are_never_bound_and_are_reported() {
    // The live hole: a SCIM client names a group `system:authenticated` and a user
    // `system:anonymous`. Bound as UserAndGroup, that would grant every identity.
    let mut w = world();
    let mut evil = group("evil", &["alice", "mallory", "long"]);
    evil.external_id = Some("system:authenticated".into());
    let mut mallory = user("mallory");
    mallory.user_name = "system:anonymous".into();
    let mut long = user("long");
    long.user_name = "x".repeat(400);
    w.users.extend([mallory, long]);
    w.groups.push(evil);
    let mut m = grm(
        "payments",
        "evil",
        vec![by_name("evil")],
        cluster_role("edit"),
    );
    set_kind(&mut m, SubjectKind::UserAndGroup);
    // A prefix is part of the final name: "SYSTEM:" hides nothing, "oidc:" makes it safe.
    let mut prefixed = grm(
        "shop",
        "prefixed",
        vec![by_name("ops")],
        cluster_role("view"),
    );
    set_subjects(
        &mut prefixed,
        SubjectOptions {
            kind: Some(SubjectKind::UserAndGroup),
            user_prefix: Some("SYSTEM:".into()),
            group_prefix: Some("oidc:".into()),
            ..Default::default()
        },
    );
    w.mappings = vec![m.clone(), prefixed.clone()];
    let p = run(&w);

    for b in &p.bindings {
        for s in b.subjects.iter() {
            assert!(
                check_subject_name(&s.name).is_ok(),
                "{} bound {:?}",
                b.name,
                s
            );
        }
    }
    assert_eq!(
        &of(&p, &m.key)[0].subjects[..],
        [Subject::user("alice@example.com")]
    );
    let st = status(&p, &m.key);
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::SubjectRefused);
    assert!(
        st.message.contains("3 subject(s) refused"),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("group \"evil\" (externalId"),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("user mallory (userName"),
        "{}",
        st.message
    );
    assert!(st.message.contains("user long (userName"), "{}", st.message);
    assert!(
        st.message.contains("longer than 320 bytes"),
        "{}",
        st.message
    );
    assert!(st.message.len() < 2_000, "the long name is shortened");

    assert_eq!(
        &of(&p, &prefixed.key)[0].subjects[..],
        [Subject::group("oidc:gx-ops")]
    );
    assert_eq!(status(&p, &prefixed.key).reason, Reason::SubjectRefused);

    // Nobody is told they have access through a refused subject.
    assert!(p.user_status["mallory"].access().is_empty());
    assert!(p.user_status["long"].access().is_empty());
    assert!(!p.user_status["alice"].access().is_empty());
}

#[test]
fn a_role_in_several_namespaces_is_one_grant_in_the_user_status() {
    let mut w = world();
    let m = cgrm(
        "ops",
        vec![by_name("ops")],
        &["view"],
        vec![
            ns_role("edit", &[], Some(match_labels(&[]))),
            ns_role("admin", &["payments"], None),
        ],
    );
    w.mappings = vec![m];
    let p = run(&w);
    let access = p.user_status["carol"].access();
    let summary: Vec<(&str, Option<&str>, Option<GrantScope>)> = access
        .iter()
        .map(|g| (g.role_name.as_str(), g.namespace.as_deref(), g.scope))
        .collect();
    assert_eq!(
        summary,
        [
            ("view", None, Some(GrantScope::Cluster)),
            ("edit", None, Some(GrantScope::SelectedNamespaces)),
            ("admin", Some("payments"), Some(GrantScope::Namespace)),
        ]
    );
}

#[test]
fn user_attributes_and_missing_attribute() {
    let mut w = world();
    w.users[1].work_email = None; // bob
    let mut m = devs_edit();
    set_user_attribute(&mut m, UserAttribute::Email);
    w.mappings = vec![m.clone()];
    let p = run(&w);
    assert_eq!(names(of(&p, &m.key)[0]), ["alice@work.example"]);
    let st = status(&p, &m.key);
    assert!(st.ready);
    assert!(
        st.message
            .contains("1 member(s) skipped for lacking email: bob"),
        "{}",
        st.message
    );
    // bob has no subject, so no grant either.
    assert!(p.user_status["bob"].access().is_empty());

    set_user_attribute(&mut m, UserAttribute::ExternalId);
    w.mappings = vec![m.clone()];
    let p = run(&w);
    assert_eq!(names(of(&p, &m.key)[0]), ["ext-alice", "ext-bob"]);
}

#[test]
fn mapping_options_override_settings_field_by_field() {
    let mut w = world();
    let settings = Settings {
        subjects: ResolvedSubjects {
            user_prefix: "sso:".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut m = devs_edit();
    set_user_attribute(&mut m, UserAttribute::ExternalId);
    w.mappings = vec![m.clone()];
    let p = plan(&settings, &w);
    assert_eq!(names(of(&p, &m.key)[0]), ["sso:ext-alice", "sso:ext-bob"]);
}

#[test]
fn duplicate_subjects_collapse() {
    let mut w = world();
    w.users[1].work_email = Some("alice@work.example".into()); // bob shares alice's email
    let mut m = grm(
        "payments",
        "all",
        vec![by_name("devs"), by_name("ops"), by_ext("gx-ops")],
        cluster_role("edit"),
    );
    set_user_attribute(&mut m, UserAttribute::Email);
    w.mappings = vec![m.clone()];
    let p = run(&w);
    assert_eq!(
        names(of(&p, &m.key)[0]),
        ["alice@work.example", "carol@work.example"]
    );
}

#[test]
fn removed_members_lose_their_subject() {
    let mut w = world();
    w.mappings = vec![devs_edit()];
    let before = run(&w);
    w.existing = applied(&before);
    w.groups[0].members.retain(|m| m != "bob");
    let p = run(&w);
    assert_eq!(
        names(of(&p, &ns_key("payments", "devs"))[0]),
        ["alice@example.com"]
    );
    assert!(p.prune.is_empty(), "same binding, updated in place");
}

// ----- targets ------------------------------------------------------------------------

#[test]
fn namespaced_mapping_binds_in_its_namespace_with_labels() {
    let mut w = world();
    w.mappings = vec![grm(
        "payments",
        "deployers",
        vec![by_name("ops")],
        role("deployer"),
    )];
    let p = run(&w);
    let key = ns_key("payments", "deployers");
    let b = of(&p, &key)[0];
    assert_eq!(b.role_ref, role("deployer"));
    assert!(
        b.name.starts_with("kube-scim.deployers.deployer-"),
        "{}",
        b.name
    );
    assert_eq!(b.labels["app.kubernetes.io/managed-by"], "kube-scim");
    assert_eq!(b.labels[naming::MAPPING_KIND_LABEL], "GroupRoleMapping");
    assert_eq!(b.labels[naming::MAPPING_NAME_LABEL], "deployers");
    assert_eq!(b.labels[naming::MAPPING_NAMESPACE_LABEL], "payments");
    assert_eq!(
        naming::mapping_key_from_labels(&b.labels, &b.annotations),
        Some(key.clone())
    );
    assert!(status(&p, &key).ready);
    assert_eq!(status(&p, &key).bindings[0].role, "Role/deployer");
}

#[test]
fn cluster_mapping_binds_cluster_roles_and_namespace_union() {
    let mut w = world();
    w.mappings = vec![cgrm(
        "devs",
        vec![by_name("devs")],
        &["view"],
        vec![ns_role(
            "edit",
            &["tools", "dying"],
            Some(match_labels(&[("team", "pay")])),
        )],
    )];
    let p = run(&w);
    let key = c_key("devs");
    let bs = of(&p, &key);
    let got: Vec<(BindingKind, Option<&str>, &str)> = bs
        .iter()
        .map(|b| (b.kind, b.namespace.as_deref(), b.role_ref.name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (BindingKind::RoleBinding, Some("payments"), "edit"),
            (BindingKind::RoleBinding, Some("tools"), "edit"),
            (BindingKind::ClusterRoleBinding, None, "view"),
        ]
    );
    assert!(bs[0].name.starts_with("kube-scim.c.devs.edit-"));
    assert_eq!(bs[0].name, bs[1].name, "same name in every namespace");
    assert!(!bs[0].labels.contains_key(naming::MAPPING_NAMESPACE_LABEL));
    let st = status(&p, &key);
    assert!(
        st.ready,
        "terminating namespaces are skipped silently: {st:?}"
    );
    assert_eq!(st.bindings.len(), 3);
}

#[test]
fn missing_listed_namespace_is_reported_and_others_proceed() {
    let mut w = world();
    w.mappings = vec![cgrm(
        "devs",
        vec![by_name("devs")],
        &[],
        vec![ns_role("edit", &["shop", "nope"], None)],
    )];
    let p = run(&w);
    let key = c_key("devs");
    assert_eq!(of(&p, &key).len(), 1);
    let st = status(&p, &key);
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::NamespaceNotFound);
    assert!(
        st.message.contains("namespaces not found: nope"),
        "{}",
        st.message
    );
}

#[test]
fn selector_expressions() {
    let labels: BTreeMap<String, String> = [("team", "pay"), ("env", "prod")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let yes = |s: LabelSelector| {
        assert!(validate_selector(&s).is_ok());
        selector_matches(&s, &labels)
    };
    assert!(
        yes(LabelSelector::default()),
        "empty selector matches everything"
    );
    assert!(yes(match_labels(&[("team", "pay")])));
    assert!(!yes(match_labels(&[("team", "pay"), ("env", "dev")])));
    assert!(yes(match_exprs(vec![expr("env", "In", &["dev", "prod"])])));
    assert!(!yes(match_exprs(vec![expr("env", "In", &["dev"])])));
    assert!(yes(match_exprs(vec![expr("env", "NotIn", &["dev"])])));
    assert!(
        yes(match_exprs(vec![expr("tier", "NotIn", &["x"])])),
        "NotIn holds for absent keys"
    );
    assert!(!yes(match_exprs(vec![expr("env", "NotIn", &["prod"])])));
    assert!(yes(match_exprs(vec![expr("team", "Exists", &[])])));
    assert!(!yes(match_exprs(vec![expr("tier", "Exists", &[])])));
    assert!(yes(match_exprs(vec![expr("tier", "DoesNotExist", &[])])));
    assert!(!yes(match_exprs(vec![
        expr("team", "DoesNotExist", &[]),
        expr("env", "Exists", &[])
    ])));

    for bad in [
        match_exprs(vec![expr("env", "In", &[])]),
        match_exprs(vec![expr("env", "NotIn", &[])]),
        match_exprs(vec![expr("env", "Exists", &["x"])]),
        match_exprs(vec![expr("env", "DoesNotExist", &["x"])]),
        match_exprs(vec![expr("env", "Gt", &["1"])]),
        match_exprs(vec![expr("", "Exists", &[])]),
    ] {
        assert!(validate_selector(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn selector_expressions_through_the_plan() {
    let mut w = world();
    let sel = match_exprs(vec![
        expr("env", "In", &["prod", "dev"]),
        expr("team", "NotIn", &["shop"]),
    ]);
    w.mappings = vec![cgrm(
        "devs",
        vec![by_name("devs")],
        &[],
        vec![ns_role("edit", &[], Some(sel))],
    )];
    let p = run(&w);
    let nss: Vec<_> = of(&p, &c_key("devs"))
        .iter()
        .map(|b| b.namespace.clone())
        .collect();
    assert_eq!(nss, [Some("payments".to_string())]);
}

#[test]
fn invalid_selector_freezes_the_mapping() {
    let mut w = world();
    let good = cgrm(
        "devs",
        vec![by_name("devs")],
        &[],
        vec![ns_role("edit", &[], Some(match_labels(&[("team", "pay")])))],
    );
    w.mappings = vec![good.clone()];
    w.existing = applied(&run(&w));
    assert_eq!(w.existing.len(), 1);

    let mut bad = good.clone();
    bad.spec = MappingSpec::Cluster(ClusterGroupRoleMappingSpec {
        groups: vec![by_name("devs")],
        cluster_roles: vec![],
        namespace_roles: vec![ns_role(
            "edit",
            &["shop"],
            Some(match_exprs(vec![expr("env", "In", &[])])),
        )],
        subjects: None,
        allow_protected_roles: false,
        expires_at: None,
    });
    w.mappings = vec![bad];
    w.groups[0].members.clear(); // would otherwise remove everyone
    let p = run(&w);
    let st = status(&p, &c_key("devs"));
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::InvalidSelector);
    assert!(
        st.message.contains("namespaceRoles[0].namespaceSelector"),
        "{}",
        st.message
    );
    assert!(p.bindings.is_empty(), "nothing new is planned");
    assert!(p.prune.is_empty(), "nothing is removed");
    assert_eq!(st.bindings.len(), 1, "the kept binding is still reported");
}

#[test]
fn missing_group_is_reported_and_found_groups_still_bound() {
    let mut w = world();
    w.mappings = vec![grm(
        "payments",
        "devs",
        vec![by_name("devs"), by_name("nope"), by_ext("gx-nope")],
        cluster_role("edit"),
    )];
    let p = run(&w);
    let key = ns_key("payments", "devs");
    assert_eq!(
        names(of(&p, &key)[0]),
        ["alice@example.com", "bob@example.com"]
    );
    let st = status(&p, &key);
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::GroupNotFound);
    assert!(
        st.message
            .contains(r#"groups not found: displayName "nope", externalId "gx-nope""#),
        "{}",
        st.message
    );
}

#[test]
fn missing_role_is_still_bound_but_not_ready() {
    let mut w = world();
    w.mappings = vec![
        grm("payments", "a", vec![by_name("devs")], cluster_role("nope")),
        grm("shop", "b", vec![by_name("devs")], role("deployer")), // the Role lives in payments only
    ];
    let p = run(&w);
    for (key, text) in [
        (ns_key("payments", "a"), "ClusterRole nope"),
        (ns_key("shop", "b"), "Role shop/deployer"),
    ] {
        assert_eq!(of(&p, &key).len(), 1);
        let st = status(&p, &key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::RoleNotFound);
        assert!(st.message.contains(text), "{}", st.message);
    }
}

#[test]
fn protected_roles_are_refused_unless_allowed() {
    let mut w = world();
    let settings = Settings {
        protected_roles: ["admin".to_string()].into_iter().collect(),
        cluster_wide_roles: vec!["*".into()],
        ..Default::default()
    };
    let m = cgrm(
        "devs",
        vec![by_name("devs")],
        &["cluster-admin", "view"],
        vec![ns_role("admin", &["shop"], None)],
    );
    w.mappings = vec![
        m.clone(),
        grm(
            "payments",
            "x",
            vec![by_name("devs")],
            role("cluster-admin"),
        ),
    ];
    w.roles.insert(("payments".into(), "cluster-admin".into()));
    let p = plan(&settings, &w);
    let bs = of(&p, &m.key);
    assert_eq!(bs.len(), 1);
    assert_eq!(bs[0].role_ref, cluster_role("view"));
    let st = status(&p, &m.key);
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::ProtectedRoleRefused);
    assert!(
        st.message.contains("ClusterRole admin is protected"),
        "{}",
        st.message
    );
    assert!(
        st.message
            .contains("ClusterRole cluster-admin is protected"),
        "{}",
        st.message
    );
    assert_eq!(st.events.len(), 2);
    assert!(st.events.iter().all(|e| e.type_ == EventType::Warning));
    // A namespaced Role that happens to be named cluster-admin is not the ClusterRole.
    assert!(status(&p, &ns_key("payments", "x")).ready);

    let mut allowed = m.clone();
    allow_protected(&mut allowed);
    w.mappings = vec![allowed];
    let p = plan(&settings, &w);
    assert_eq!(of(&p, &m.key).len(), 3);
    assert!(status(&p, &m.key).ready);
}

#[test]
fn invalid_specs_freeze_the_mapping() {
    let mut w = world();
    let good = devs_edit();
    w.mappings = vec![good.clone()];
    w.existing = applied(&run(&w));

    let mut both = good.clone();
    let mut neither = good.clone();
    let mut empty = good.clone();
    if let MappingSpec::Namespaced(s) = &mut both.spec {
        s.groups = vec![GroupRef {
            display_name: Some("devs".into()),
            external_id: Some("gx-devs".into()),
        }];
    }
    if let MappingSpec::Namespaced(s) = &mut neither.spec {
        s.groups = vec![by_name("devs"), GroupRef::default()];
    }
    if let MappingSpec::Namespaced(s) = &mut empty.spec {
        s.groups = vec![];
    }
    let mut mismatched = good.clone();
    mismatched.spec = cgrm("x", vec![by_name("devs")], &["view"], vec![]).spec;
    for (m, text) in [
        (both, "spec.groups[0] must set exactly one"),
        (neither, "spec.groups[1] must set exactly one"),
        (empty, "spec.groups is empty"),
        (mismatched, "carries a ClusterGroupRoleMapping spec"),
    ] {
        w.mappings = vec![m];
        let p = run(&w);
        let st = status(&p, &good.key);
        assert!(!st.ready);
        assert_eq!(st.reason, Reason::InvalidSpec);
        assert!(st.message.contains(text), "{}", st.message);
        assert!(p.bindings.is_empty() && p.prune.is_empty(), "frozen: {p:?}");
    }

    let mut w = world();
    w.mappings = vec![
        cgrm("none", vec![by_name("devs")], &[], vec![]),
        cgrm(
            "blank",
            vec![by_name("devs")],
            &[""],
            vec![ns_role("edit", &[], None)],
        ),
    ];
    let p = run(&w);
    assert!(status(&p, &c_key("none"))
        .message
        .contains("neither clusterRoles nor namespaceRoles"));
    let blank = &status(&p, &c_key("blank")).message;
    assert!(
        blank.contains("clusterRoles[0] is empty")
            && blank.contains("sets neither namespaces nor namespaceSelector"),
        "{blank}"
    );
    assert!(p.bindings.is_empty());
}

#[test]
fn several_problems_report_the_most_severe_and_list_all() {
    let mut w = world();
    w.mappings = vec![cgrm(
        "devs",
        vec![by_name("devs"), by_name("nope")],
        &["cluster-admin", "missing-role"],
        vec![ns_role("edit", &["nowhere"], None)],
    )];
    let p = run(&w);
    let st = status(&p, &c_key("devs"));
    assert_eq!(st.reason, Reason::ProtectedRoleRefused);
    let reasons: Vec<Reason> = st.problems.iter().map(|p| p.reason).collect();
    assert_eq!(
        reasons,
        [
            Reason::ProtectedRoleRefused,
            Reason::GroupNotFound,
            Reason::RoleNotFound,
            Reason::NamespaceNotFound
        ]
    );
    for text in [
        "cluster-admin is protected",
        "groups not found",
        "roles not found",
        "namespaces not found",
    ] {
        assert!(st.message.contains(text), "{}", st.message);
    }
    assert!(st
        .message
        .starts_with("ClusterRole cluster-admin is protected"));
}

#[test]
fn apply_layer_can_report_a_refused_binding() {
    let mut w = world();
    w.mappings = vec![devs_edit()];
    let mut p = run(&w);
    let st = p
        .mapping_status
        .get_mut(&ns_key("payments", "devs"))
        .unwrap();
    st.add_problem(
        Reason::BindingRefused,
        "RoleBinding payments/x: forbidden: attempt to grant extra privileges",
    );
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::BindingRefused);
    assert!(
        st.message.starts_with("RoleBinding payments/x: forbidden"),
        "{}",
        st.message
    );
}

#[test]
fn zero_subjects_means_no_binding_but_ready() {
    let mut w = world();
    w.groups.push(group("empty", &[]));
    w.mappings = vec![grm(
        "payments",
        "e",
        vec![by_name("empty")],
        cluster_role("edit"),
    )];
    let p = run(&w);
    assert!(p.bindings.is_empty());
    let st = status(&p, &ns_key("payments", "e"));
    assert!(st.ready);
    assert!(st.bindings.is_empty());
    assert!(st.message.contains("no subjects"), "{}", st.message);
}

#[test]
fn overlapping_namespace_roles_give_one_binding() {
    let mut w = world();
    w.mappings = vec![cgrm(
        "devs",
        vec![by_name("devs")],
        &[],
        vec![
            ns_role("edit", &["payments"], None),
            ns_role("edit", &[], Some(match_labels(&[("team", "pay")]))),
        ],
    )];
    let p = run(&w);
    assert_eq!(p.bindings.len(), 1);
}

// ----- names --------------------------------------------------------------------------

#[test]
fn plan_is_deterministic_and_order_independent() {
    let mut w = world();
    w.mappings = vec![
        devs_edit(),
        cgrm(
            "ops",
            vec![by_name("ops"), by_name("devs")],
            &["view"],
            vec![ns_role(
                "system:aggregate-to-edit",
                &["shop", "payments"],
                None,
            )],
        ),
    ];
    let a = run(&w);
    assert_eq!(a, run(&w));
    let mut shuffled = w.clone();
    shuffled.mappings.reverse();
    shuffled.groups.reverse();
    shuffled.users.reverse();
    shuffled.namespaces.reverse();
    for g in &mut shuffled.groups {
        g.members.reverse();
    }
    assert_eq!(a, run(&shuffled));
    let sanitized = a
        .bindings
        .iter()
        .find(|b| b.role_ref.name == "system:aggregate-to-edit")
        .unwrap();
    assert!(
        sanitized
            .name
            .starts_with("kube-scim.c.ops.system-aggregate-to-edit-"),
        "{}",
        sanitized.name
    );
}

#[test]
fn namespaced_and_cluster_mappings_of_one_name_do_not_collide() {
    let mut w = world();
    w.mappings = vec![
        devs_edit(),
        cgrm(
            "devs",
            vec![by_name("ops")],
            &[],
            vec![ns_role("edit", &["payments"], None)],
        ),
    ];
    let p = run(&w);
    assert_eq!(ids(&p).len(), 2);
    assert_eq!(of(&p, &ns_key("payments", "devs")).len(), 1);
    assert_eq!(of(&p, &c_key("devs")).len(), 1);
}

// ----- splitting ----------------------------------------------------------------------

#[test]
fn split_bindings_get_part_names() {
    let mut w = world();
    let members: Vec<String> = (0..20_000).map(|i| format!("u{i}")).collect();
    w.users = members
        .iter()
        .map(|id| UserInput {
            user_name: format!("{id:0>6}@payments-team.corp.example.com"),
            ..user(id)
        })
        .collect();
    w.groups = vec![GroupInput {
        members: members.clone(),
        ..group("everyone", &[])
    }];
    w.mappings = vec![cgrm(
        "everyone",
        vec![by_name("everyone")],
        &["view"],
        vec![],
    )];
    let p = run(&w);
    let base = naming::binding_name(
        &c_key("everyone"),
        BindingKind::ClusterRoleBinding,
        &cluster_role("view"),
    );
    let got: Vec<&str> = p.bindings.iter().map(|b| b.name.as_str()).collect();
    assert!(got.len() >= 2);
    let mut want: Vec<String> = (0..got.len())
        .map(|i| naming::part_name(&base, i))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        p.bindings.iter().map(|b| b.subjects.len()).sum::<usize>(),
        20_000
    );
    // The status has one entry for the logical binding, not one per part.
    let st = status(&p, &c_key("everyone"));
    assert_eq!(st.bindings.len(), 1);
    assert_eq!(st.bindings[0].name, base);
    assert_eq!(st.bindings[0].parts, Some(got.len() as u32));
    assert_eq!(st.bindings[0].subjects, 20_000);
    // Re-planning against what was applied keeps the same objects.
    w.existing = applied(&p);
    let again = run(&w);
    assert_eq!(again.bindings, p.bindings);
    assert!(again.prune.is_empty());
}

// ----- mass-removal guard ----------------------------------------------------------------

/// A mapping over group "big" with `n` members u00…, applied.
fn guarded_world(n: usize) -> PlanInput {
    let mut w = world();
    let ids: Vec<String> = (0..n).map(|i| format!("u{i:02}")).collect();
    w.users.extend(ids.iter().map(|id| user(id)));
    w.groups.push(GroupInput {
        members: ids,
        ..group("big", &[])
    });
    w.mappings = vec![cgrm(
        "big",
        vec![by_name("big")],
        &["view"],
        vec![ns_role("edit", &["payments", "shop"], None)],
    )];
    w.existing = applied(&run(&w));
    assert_eq!(w.existing.len(), 3);
    w
}

fn keep_members(w: &mut PlanInput, n: usize) {
    let g = w
        .groups
        .iter_mut()
        .find(|g| g.display_name == "big")
        .unwrap();
    g.members.truncate(n);
}

fn subject_count(p: &Plan, key: &MappingKey) -> BTreeSet<usize> {
    of(p, key).iter().map(|b| b.subjects.len()).collect()
}

#[test]
fn mass_removal_is_held_until_confirmed() {
    let mut w = guarded_world(20);
    let key = c_key("big");
    keep_members(&mut w, 5);
    let p = run(&w);
    assert_eq!(subject_count(&p, &key), [20].into(), "nobody loses access");
    assert!(p.prune.is_empty());
    let st = status(&p, &key);
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::RemovalHeld);
    let held = st.held_removals.clone().unwrap();
    assert_eq!((held.subjects, held.managed_subjects), (15, 20));
    assert!(st.message.contains(&held.confirm_token), "{}", st.message);
    assert!(st
        .events
        .iter()
        .any(|e| e.type_ == EventType::Warning && e.reason == "RemovalHeld"));
    assert_eq!(
        run(&w).mapping_status[&key].held_removals,
        Some(held.clone()),
        "stable token"
    );

    // Confirmed with the right token: the removal goes through.
    w.mappings[0].confirm_annotation = Some(held.confirm_token.clone());
    let p = run(&w);
    assert_eq!(subject_count(&p, &key), [5].into());
    let st = status(&p, &key);
    assert!(st.ready, "{st:?}");
    assert!(st.held_removals.is_none());
    assert!(st.events.iter().any(|e| e.reason == "RemovalConfirmed"));
}

#[test]
fn revocation_is_never_held_only_spec_edits_are() {
    // The spec is the one last reconciled: 15 of 20 members leaving (or being
    // deactivated, or deleted) is identity-side revocation and goes through at once.
    let mut w = guarded_world(20);
    let key = c_key("big");
    w.mappings[0].observed_generation = w.mappings[0].generation;
    keep_members(&mut w, 5);
    let p = run(&w);
    assert_eq!(subject_count(&p, &key), [5].into());
    let st = status(&p, &key);
    assert!(st.ready && st.held_removals.is_none(), "{st:?}");
    assert_eq!(st.observed_generation, w.mappings[0].generation);

    // An edit that drops the group is a configuration-driven wipe: held, and the
    // status keeps the generation last applied in full until it is confirmed.
    let mut w = guarded_world(20);
    w.mappings[0].observed_generation = Some(1);
    w.mappings[0].generation = Some(2);
    w.groups.push(group("small", &["u00"]));
    if let MappingSpec::Cluster(spec) = &mut w.mappings[0].spec {
        spec.groups = vec![by_name("small")];
    }
    let p = run(&w);
    let st = status(&p, &key);
    assert_eq!(st.reason, Reason::RemovalHeld);
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(subject_count(&p, &key), [20].into());
    w.mappings[0].confirm_annotation = Some(st.held_removals.clone().unwrap().confirm_token);
    let st = status(&run(&w), &key).clone();
    assert!(st.ready);
    assert_eq!(st.observed_generation, Some(2));
}

#[test]
fn a_different_removal_needs_a_new_confirmation() {
    let mut w = guarded_world(20);
    let key = c_key("big");
    keep_members(&mut w, 5);
    let first = run(&w).mapping_status[&key].held_removals.clone().unwrap();
    keep_members(&mut w, 2);
    w.mappings[0].confirm_annotation = Some(first.confirm_token.clone());
    let p = run(&w);
    let st = status(&p, &key);
    let second = st.held_removals.clone().unwrap();
    assert_ne!(second.confirm_token, first.confirm_token);
    assert_eq!(second.subjects, 18);
    assert!(
        st.message.contains("confirms a different removal"),
        "{}",
        st.message
    );
    assert_eq!(subject_count(&p, &key), [20].into());
}

#[test]
fn small_removals_pass_straight_through() {
    let mut w = guarded_world(20);
    let key = c_key("big");
    // Two deactivations: 10%.
    for u in w
        .users
        .iter_mut()
        .filter(|u| u.id == "u03" || u.id == "u07")
    {
        u.active = false;
    }
    let p = run(&w);
    assert_eq!(subject_count(&p, &key), [18].into());
    assert!(status(&p, &key).ready);
    // Exactly at the threshold (10 of 20 = 50%) still passes: the guard needs more.
    let mut w = guarded_world(20);
    keep_members(&mut w, 10);
    assert_eq!(subject_count(&run(&w), &key), [10].into());
}

#[test]
fn guard_needs_enough_managed_subjects() {
    let mut w = guarded_world(9); // dave is inactive, so 9 managed subjects < 10
    keep_members(&mut w, 0);
    let p = run(&w);
    assert!(p.bindings.is_empty());
    assert_eq!(p.prune.len(), 3);
    assert!(status(&p, &c_key("big")).ready);
}

#[test]
fn additions_pass_while_removals_are_held() {
    let mut w = guarded_world(20);
    let key = c_key("big");
    keep_members(&mut w, 5);
    w.users.push(user("newbie"));
    w.groups
        .iter_mut()
        .find(|g| g.display_name == "big")
        .unwrap()
        .members
        .push("newbie".into());
    let p = run(&w);
    for b in of(&p, &key) {
        assert_eq!(b.subjects.len(), 21);
        assert!(names(b).contains(&"newbie@example.com"));
    }
    assert_eq!(
        status(&p, &key).held_removals.as_ref().unwrap().subjects,
        15
    );
}

#[test]
fn held_subjects_keep_bindings_that_would_be_pruned() {
    let mut w = guarded_world(20);
    let key = c_key("big");
    keep_members(&mut w, 5);
    // At the same time the spec drops the shop namespace.
    w.mappings[0].spec = cgrm(
        "big",
        vec![by_name("big")],
        &["view"],
        vec![ns_role("edit", &["payments"], None)],
    )
    .spec;
    let p = run(&w);
    assert_eq!(of(&p, &key).len(), 2);
    assert!(
        p.prune.is_empty(),
        "the shop binding is held too: {:?}",
        p.prune
    );
    let st = status(&p, &key);
    assert_eq!(st.bindings.len(), 3);
    assert!(st
        .bindings
        .iter()
        .any(|b| b.namespace.as_deref() == Some("shop") && b.subjects == 20));
}

#[test]
fn scope_changes_are_not_guarded() {
    let mut w = guarded_world(20);
    w.mappings[0].spec = cgrm("big", vec![by_name("big")], &["view"], vec![]).spec;
    let p = run(&w);
    assert_eq!(p.prune.len(), 2);
    assert!(status(&p, &c_key("big")).ready);
}

#[test]
fn deleting_a_mapping_is_not_guarded() {
    let mut w = guarded_world(20);
    w.mappings[0].deleting = true;
    let p = run(&w);
    assert!(p.bindings.is_empty());
    assert_eq!(p.prune.len(), 3);
    assert!(!p.mapping_status.contains_key(&c_key("big")));
    assert!(p.group_status["id-big"].is_empty());
}

// ----- fan-out budget ----------------------------------------------------------------

fn run_with_budget(input: &PlanInput, max_fanout: u64) -> Plan {
    let settings = Settings {
        cluster_wide_roles: vec!["*".into()],
        max_fanout,
        ..Settings::default()
    };
    plan(&settings, input)
}

/// Group "big" with members u00…u03 bound by cgrm "big" (view cluster-wide, edit in
/// payments and shop: 3 bindings), applied: 4 × 3 = 12, the budget these tests use.
fn fan_world() -> PlanInput {
    let mut w = guarded_world(4);
    w.existing = applied(&run_with_budget(&w, 12));
    w
}

fn join(w: &mut PlanInput, id: &str) {
    w.users.push(user(id));
    w.groups
        .iter_mut()
        .find(|g| g.display_name == "big")
        .unwrap()
        .members
        .push(id.into());
}

fn bound_names(p: &Plan, key: &MappingKey) -> BTreeSet<Vec<String>> {
    of(p, key)
        .iter()
        .map(|b| names(b).into_iter().map(str::to_owned).collect())
        .collect()
}

fn members(ids: &[&str]) -> BTreeSet<Vec<String>> {
    [ids.iter().map(|i| format!("{i}@example.com")).collect()].into()
}

#[test]
fn over_budget_a_mapping_keeps_its_subjects_and_adds_none() {
    let mut w = fan_world();
    let key = c_key("big");
    assert!(
        status(&run_with_budget(&w, 12), &key).ready,
        "exactly at the budget fits"
    );
    join(&mut w, "newbie");
    let p = run_with_budget(&w, 12);
    assert_eq!(
        bound_names(&p, &key),
        members(&["u00", "u01", "u02", "u03"])
    );
    assert_eq!(of(&p, &key).len(), 3);
    assert!(p.prune.is_empty());
    let st = status(&p, &key);
    assert!(!st.ready);
    assert_eq!(st.reason, Reason::FanOutExceeded);
    assert_eq!(st.subject_count, Some(4));
    let fan = st.fan_out.clone().expect("fan-out");
    assert_eq!(
        (fan.subjects, fan.bindings, fan.total(), fan.budget),
        (5, 3, 15, 12)
    );
    assert_eq!(fan.withheld_subjects, 1);
    assert!(fan.withheld_bindings.is_empty());
    assert!(st.message.contains("--max-fanout"), "{}", st.message);
    assert!(st.message.contains("Group subjects"), "{}", st.message);
    assert!(
        st.message.contains("5 subject(s) × 3 binding(s) = 15 > 12"),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("as Group subjects: 1 × 3 = 3"),
        "{}",
        st.message
    );
    assert!(st
        .events
        .iter()
        .any(|e| e.type_ == EventType::Warning && e.reason == "FanOutExceeded"));
    // The newcomer has no access in its status either; the others keep theirs.
    assert!(p.user_status["newbie"].access().is_empty());
    assert_eq!(p.user_status["u00"].access().len(), 2);
    // The fast lane can still address every part (the kept list is hash-split).
    assert!(p.layouts[&key].targets.iter().all(|t| t.hashed));

    // One more newcomer: the condition's reason and the Event's note stay the same
    // (one Event per transition), only the note with the numbers moves.
    let first = st.problems.clone();
    join(&mut w, "second");
    let p = run_with_budget(&w, 12);
    assert_eq!(status(&p, &key).problems, first);
    assert!(status(&p, &key).message.contains("6 subject(s)"));
}

#[test]
fn removals_go_through_over_budget_and_fitting_again_lets_additions_in() {
    let mut w = fan_world();
    let key = c_key("big");
    join(&mut w, "n1");
    join(&mut w, "n2");
    w.existing = applied(&run_with_budget(&w, 12));
    assert_eq!(
        bound_names(&run_with_budget(&w, 12), &key),
        members(&["u00", "u01", "u02", "u03"])
    );

    // A deactivation while 5 × 3 = 15 is still over: u00 goes, nobody comes.
    w.users.iter_mut().find(|u| u.id == "u00").unwrap().active = false;
    let p = run_with_budget(&w, 12);
    assert_eq!(bound_names(&p, &key), members(&["u01", "u02", "u03"]));
    assert_eq!(status(&p, &key).reason, Reason::FanOutExceeded);
    assert_eq!(status(&p, &key).subject_count, Some(3));
    w.existing = applied(&p);

    // Leaving the group, same: 4 × 3 = 12 fits again, so the newcomers come in.
    keep_group(&mut w, &["u02", "u03", "n1", "n2"]);
    let p = run_with_budget(&w, 12);
    assert_eq!(bound_names(&p, &key), members(&["n1", "n2", "u02", "u03"]));
    let st = status(&p, &key);
    assert!(st.ready, "{st:?}");
    assert!(st.fan_out.is_none());
    assert!(!p.user_status["n1"].access().is_empty());

    // Or the operator raises the budget (or sets 0: unlimited).
    let mut w = fan_world();
    join(&mut w, "n1");
    assert!(!status(&run_with_budget(&w, 12), &key).ready);
    for budget in [15, 0] {
        let p = run_with_budget(&w, budget);
        assert!(status(&p, &key).ready);
        assert_eq!(
            bound_names(&p, &key),
            members(&["n1", "u00", "u01", "u02", "u03"])
        );
    }
}

fn keep_group(w: &mut PlanInput, ids: &[&str]) {
    w.groups
        .iter_mut()
        .find(|g| g.display_name == "big")
        .unwrap()
        .members = ids.iter().map(|i| i.to_string()).collect();
}

#[test]
fn over_budget_a_new_namespace_gets_nothing_until_the_mapping_fits() {
    let mut w = world();
    w.groups.push(GroupInput {
        members: vec!["alice".into(), "bob".into()],
        ..group("big", &[])
    });
    w.mappings = vec![cgrm(
        "big",
        vec![by_name("big")],
        &[],
        vec![ns_role("edit", &[], Some(match_labels(&[("tier", "web")])))],
    )];
    w.namespaces.push(namespace("web-1", &[("tier", "web")]));
    w.namespaces.push(namespace("web-2", &[("tier", "web")]));
    let key = c_key("big");
    w.existing = applied(&run_with_budget(&w, 4));
    assert_eq!(of(&run_with_budget(&w, 4), &key).len(), 2);

    w.namespaces.push(namespace("web-3", &[("tier", "web")]));
    let p = run_with_budget(&w, 4);
    let where_: BTreeSet<Option<String>> =
        of(&p, &key).iter().map(|b| b.namespace.clone()).collect();
    assert_eq!(where_, [Some("web-1".into()), Some("web-2".into())].into());
    let st = status(&p, &key);
    assert_eq!(st.reason, Reason::FanOutExceeded);
    let fan = st.fan_out.as_ref().unwrap();
    assert_eq!(fan.withheld_subjects, 0);
    assert_eq!(
        fan.withheld_bindings,
        [(Some("web-3".to_owned()), cluster_role("edit"))]
    );
    assert!(
        st.message.contains("(ClusterRole/edit in web-3)"),
        "{}",
        st.message
    );
    // Existing subjects keep their grants in the namespaces they have.
    assert_eq!(p.user_status["alice"].access().len(), 1);

    // A member leaves: 1 × 3 fits, and web-3 gets its binding.
    w.groups.last_mut().unwrap().members = vec!["alice".into()];
    let p = run_with_budget(&w, 4);
    assert_eq!(of(&p, &key).len(), 3);
    assert!(status(&p, &key).ready);
}

#[test]
fn a_new_mapping_over_budget_binds_nothing_and_group_subjects_fit() {
    let mut w = guarded_world(6);
    w.existing.clear();
    let key = c_key("big");
    let p = run_with_budget(&w, 12);
    assert!(of(&p, &key).is_empty());
    assert!(p.prune.is_empty());
    let st = status(&p, &key);
    assert_eq!(st.reason, Reason::FanOutExceeded);
    assert_eq!(st.subject_count, Some(0));
    assert_eq!(st.fan_out.as_ref().unwrap().withheld_subjects, 6);
    assert_eq!(st.fan_out.as_ref().unwrap().withheld_bindings.len(), 3);
    assert!(p.user_status["u00"].access().is_empty());

    // The same mapping with Group subjects: 1 × 3.
    set_subjects(
        &mut w.mappings[0],
        SubjectOptions {
            kind: Some(SubjectKind::Group),
            ..Default::default()
        },
    );
    let p = run_with_budget(&w, 12);
    assert!(status(&p, &key).ready);
    assert_eq!(bound_names(&p, &key), [vec!["gx-big".to_owned()]].into());
    assert_eq!(p.user_status["u00"].access().len(), 2);
}

#[test]
fn over_budget_the_guard_still_holds_a_mass_removal_and_the_prune_of_its_bindings() {
    // 20 subjects × 3 = 60; the edit drops shop and swaps the group for one of 5
    // old and 50 new members (55 × 2 = 110 > 60): the removal of 15 is held, none of
    // the 50 is added.
    let mut w = guarded_world(20);
    let key = c_key("big");
    let newcomers: Vec<String> = (0..50).map(|i| format!("new{i:02}")).collect();
    w.users.extend(newcomers.iter().map(|id| user(id)));
    let mut members: Vec<String> = (0..5).map(|i| format!("u{i:02}")).collect();
    members.extend(newcomers.iter().cloned());
    w.groups.push(GroupInput {
        members,
        ..group("other", &[])
    });
    w.mappings[0].spec = cgrm(
        "big",
        vec![by_name("other")],
        &["view"],
        vec![ns_role("edit", &["payments"], None)],
    )
    .spec;
    let p = run_with_budget(&w, 60);
    let st = status(&p, &key);
    assert_eq!(st.reason, Reason::FanOutExceeded, "{}", st.message);
    assert!(st.problems.iter().any(|p| p.reason == Reason::RemovalHeld));
    assert_eq!(
        subject_count(&p, &key),
        [20].into(),
        "nobody lost or gained"
    );
    assert!(p.prune.is_empty(), "shop is held: {:?}", p.prune);
    assert!(p.user_status["new00"].access().is_empty());
}

// ----- pruning --------------------------------------------------------------------------

#[test]
fn stale_managed_bindings_are_pruned() {
    let mut w = world();
    w.mappings = vec![devs_edit()];
    let current = applied(&run(&w));
    let stale = |ns: Option<&str>, name: &str, mapping: Option<MappingKey>| ExistingBinding {
        kind: if ns.is_some() {
            BindingKind::RoleBinding
        } else {
            BindingKind::ClusterRoleBinding
        },
        namespace: ns.map(str::to_owned),
        name: name.into(),
        role_ref: cluster_role("view"),
        mapping,
        subjects: vec![Subject::user("x")].into(),
    };
    w.existing = current.clone();
    w.existing.extend([
        stale(
            Some("payments"),
            "old-role",
            Some(ns_key("payments", "devs")),
        ),
        stale(None, "gone-mapping", Some(c_key("gone"))),
        stale(Some("shop"), "orphan", None),
        stale(Some("dying"), "in-terminating-ns", Some(c_key("gone"))),
        stale(Some("vanished"), "in-missing-ns", Some(c_key("gone"))),
    ]);
    let p = run(&w);
    let pruned: Vec<&str> = p.prune.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(pruned, ["old-role", "orphan", "gone-mapping"]);
    assert_eq!(p.bindings.len(), 1);
    assert_eq!(p.bindings[0].name, current[0].name);
}

// ----- user and group status ------------------------------------------------------------

#[test]
fn user_and_group_status_explain_access() {
    let mut w = world();
    w.groups.push(group("unused", &["erin"]));
    w.mappings = vec![
        devs_edit(),
        cgrm(
            "ops",
            vec![by_name("ops")],
            &["view"],
            vec![ns_role("edit", &["shop"], None)],
        ),
    ];
    let p = run(&w);
    assert_eq!(p.user_status.len(), w.users.len());
    let alice = &p.user_status["alice"];
    let group_ids: Vec<&str> = alice.groups.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(group_ids, ["id-devs", "id-ops"]);
    assert_eq!(alice.groups[0].display_name.as_deref(), Some("devs"));
    let access = alice.access();
    let grants: Vec<(Option<&str>, &str, &str, &str)> = access
        .iter()
        .map(|a| {
            (
                a.namespace.as_deref(),
                a.role_name.as_str(),
                a.mapping.as_str(),
                a.group.as_str(),
            )
        })
        .collect();
    assert_eq!(
        grants,
        [
            (None, "view", "ops", "ops"),
            (Some("payments"), "edit", "payments/devs", "devs"),
            (Some("shop"), "edit", "ops", "ops"),
        ]
    );
    assert!(access.iter().all(|a| a.role_kind == "ClusterRole"));
    // Inactive: still a member, but no access.
    assert_eq!(p.user_status["dave"].groups.len(), 1);
    assert!(p.user_status["dave"].access().is_empty());
    // Member of an unmapped group only.
    assert_eq!(p.user_status["erin"].groups.len(), 1);
    assert!(p.user_status["erin"].access().is_empty());

    assert_eq!(p.group_status["id-devs"], ["payments/devs"]);
    assert_eq!(p.group_status["id-ops"], ["ops"]);
    assert!(p.group_status["id-unused"].is_empty());

    // A user in no group at all still gets an (empty) entry so old statuses clear.
    w.groups.retain(|g| g.display_name != "unused");
    let p = run(&w);
    assert_eq!(p.user_status["erin"], UserAccess::default());
}

#[test]
fn group_subjects_grant_access_to_active_members() {
    let mut w = world();
    let mut m = devs_edit();
    set_kind(&mut m, SubjectKind::Group);
    w.users[0].work_email = None;
    w.mappings = vec![m];
    let p = run(&w);
    assert_eq!(p.user_status["bob"].access().len(), 1);
    assert!(p.user_status["dave"].access().is_empty());
}

// ----- scale ---------------------------------------------------------------------------

/// 50 mappings × 2,000 groups × 50,000 users (+ one 50,000-member group), 100 namespaces.
/// `cargo test --release -- --ignored --nocapture plan_at_scale`
#[test]
#[ignore]
fn plan_at_scale() {
    let users: Vec<UserInput> = (0..50_000).map(|i| user(&format!("user-{i:05}"))).collect();
    let mut groups: Vec<GroupInput> = (0..2_000)
        .map(|g| group(&format!("g{g:04}"), &[]))
        .collect();
    for (j, u) in users.iter().enumerate() {
        for g in [(j * 7) % 2000, (j * 13 + 5) % 2000, (j * 31 + 11) % 2000] {
            groups[g].members.push(u.id.clone());
        }
    }
    groups.push(GroupInput {
        members: users.iter().map(|u| u.id.clone()).collect(),
        ..group("everyone", &[])
    });
    let namespaces: Vec<NamespaceInput> = (0..100)
        .map(|i| namespace(&format!("ns-{i:03}"), &[("tier", &(i % 5).to_string())]))
        .collect();
    let refs = |m: usize| {
        (0..40)
            .map(|k| by_name(&format!("g{:04}", (m * 40 + k) % 2000)))
            .collect::<Vec<_>>()
    };
    let mut mappings = Vec::new();
    for m in 0..25 {
        mappings.push(grm(
            &format!("ns-{m:03}"),
            &format!("m{m}"),
            refs(m),
            cluster_role("edit"),
        ));
    }
    for m in 25..49 {
        mappings.push(cgrm(
            &format!("m{m}"),
            refs(m),
            &["view"],
            vec![ns_role("edit", &[], Some(match_labels(&[("tier", "1")])))],
        ));
    }
    mappings.push(cgrm(
        "everyone",
        vec![by_name("everyone")],
        &["view"],
        vec![],
    ));
    let mut input = PlanInput {
        mappings,
        groups,
        users,
        namespaces,
        cluster_roles: ["edit", "view"].iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    };
    let settings = Settings::default();

    let t = std::time::Instant::now();
    let p = plan(&settings, &input);
    let cold = t.elapsed();
    input.existing = applied(&p);
    let t = std::time::Instant::now();
    let again = plan(&settings, &input);
    let warm = t.elapsed();
    let t = std::time::Instant::now();
    let grants: usize = again.user_status.values().map(|u| u.access().len()).sum();
    let materialize = t.elapsed();
    println!(
        "plan_at_scale: {} bindings, {} subjects, {grants} grants; first plan {cold:?}, re-plan against applied state {warm:?}, materializing every user's access one by one {materialize:?}",
        again.bindings.len(),
        again.bindings.iter().map(|b| b.subjects.len()).sum::<usize>(),
    );
    assert!(again.prune.is_empty());
    assert_eq!(again.bindings, p.bindings);
    assert!(again.mapping_status.values().all(|s| s.ready));
}
