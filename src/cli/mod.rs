//! `kube-scim access|who|plan`, also run as the kubectl plugin `kubectl scim`: the thin
//! I/O around [`crate::explain`]. One LIST of each kind the controller watches, with
//! the caller's own kubeconfig and rights, becomes the plan's input through the
//! controller's own conversion ([`Objects::plan_input`]); the settings come from the
//! operator's Deployment ([`settings`]); the plan is the controller's [`plan::plan`].
//! Nothing is written.
pub mod file;
pub mod settings;

use std::ffi::OsStr;
use std::fmt::Debug;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, ObjectList, PartialObjectMeta};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::de::DeserializeOwned;

use crate::controller::bindings::{BindingInterner, CachedBinding};
use crate::controller::plan::{self, MappingKey, Reason};
use crate::controller::users::CachedUser;
use crate::controller::world::Objects;
use crate::crd::{
    ClusterGroupRoleMapping, GroupRoleMapping, MappingStatus, ScimGroup, ScimGroupMembers,
    ScimUser, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use crate::explain::{self, diff, Facts, Format, LiveStatus, Person};

/// The name the binary answers to as a kubectl plugin (`kubectl scim …`).
pub const PLUGIN_NAME: &str = "kubectl-scim";

/// Whether the binary was invoked as `kubectl-scim` (by kubectl, or a symlink).
pub fn invoked_as_plugin(argv0: &OsStr) -> bool {
    Path::new(argv0)
        .file_stem()
        .is_some_and(|s| s == OsStr::new(PLUGIN_NAME))
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("cannot list {what}: {message}")]
    List { what: &'static str, message: String },
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    #[error(transparent)]
    Access(#[from] explain::access::AccessError),
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Render(#[from] explain::RenderError),
}

/// A kube error for people: a refusal says what it refused.
pub(crate) fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden ({}): the command reads with your own kubeconfig and rights",
            s.message
        ),
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Where the cluster is, and the operator's settings (shared by access, who and plan).
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Namespace of the operator: its controller Deployment gives the settings.
    #[arg(
        short = 'n',
        long,
        env = "KUBE_SCIM_NAMESPACE",
        default_value = "kube-scim"
    )]
    pub namespace: String,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The controller Deployment whose settings to plan with (default: the one labelled
    /// app.kubernetes.io/part-of=kube-scim,app.kubernetes.io/component=controller).
    #[arg(long, value_name = "NAME")]
    pub deployment: Option<String>,
    /// Plan with the default settings (and --setting) instead of the Deployment's.
    #[arg(long, conflicts_with = "deployment")]
    pub no_deployment: bool,
    /// An operator setting over the Deployment's: a `kube-scim run` flag or its
    /// variable, e.g. `--setting cluster-wide-roles=view,edit` or
    /// `--setting KUBE_SCIM_SUBJECT_KIND=group`. Repeatable.
    #[arg(long = "setting", value_name = "NAME=VALUE")]
    pub settings: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AccessArgs {
    /// The user: SCIM id, userName (any case) or email.
    pub user: String,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WhoArgs {
    /// The namespace to look at.
    #[arg(value_name = "NAMESPACE")]
    pub target: String,
    /// Only this role: `edit`, or with its kind, `ClusterRole/edit`, `Role/deployer`.
    #[arg(long)]
    pub role: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// A file of GroupRoleMappings and ClusterGroupRoleMappings (multi-document YAML or
    /// JSON), a directory of such files, or `-` for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The cluster as the plan sees it, read once.
pub struct Loaded {
    pub facts: Facts,
    /// The namespace of the caller's kubeconfig context.
    pub default_namespace: String,
}

async fn client(args: &ClusterArgs) -> Result<Client, CliError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| CliError::Kubeconfig(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| CliError::Kubeconfig(e.to_string()))?
        }
        None if args.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| CliError::Kubeconfig(e.to_string()))?,
        None => Config::infer()
            .await
            .map_err(|e| CliError::Kubeconfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| CliError::Kubeconfig(e.to_string()))
}

/// Every object of a kind (following continue tokens, should the server page).
async fn list_all<K, F, Fut>(what: &'static str, list: F) -> Result<Vec<Arc<K>>, CliError>
where
    K: Clone + DeserializeOwned + Debug,
    F: Fn(ListParams) -> Fut,
    Fut: std::future::Future<Output = Result<ObjectList<K>, kube::Error>>,
{
    let mut out = Vec::new();
    // From the API server's watch cache, in one response, as the controller's caches make
    // their first list (`--initial-list cache`): much faster than pages from etcd with a
    // large tenant, and as fresh as what the controller sees.
    let mut lp = ListParams::default().match_any();
    loop {
        let page = list(lp.clone()).await.map_err(|e| CliError::List {
            what,
            message: match &e {
                kube::Error::Api(s) if s.code == 404 => {
                    "the API server does not serve it: is kube-scim (its CRDs) installed in this cluster?".to_owned()
                }
                _ => kube_message(&e),
            },
        })?;
        out.extend(page.items.into_iter().map(Arc::new));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Every `K` (with `labels`, if given).
async fn list_objects_of<K>(
    client: &Client,
    what: &'static str,
    labels: Option<&str>,
) -> Result<Vec<Arc<K>>, CliError>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    list_all(what, |lp| {
        let api = api.clone();
        let lp = labels.map_or(lp.clone(), |l| lp.labels(l));
        async move { api.list(&lp).await }
    })
    .await
}

/// The metadata of every `K`.
async fn list_metadata_of<K>(
    client: &Client,
    what: &'static str,
) -> Result<Vec<Arc<PartialObjectMeta<K>>>, CliError>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    list_all(what, |lp| {
        let api = api.clone();
        async move { api.list_metadata(&lp).await }
    })
    .await
}

/// One LIST of each kind the controller watches; the users also in full (the reports
/// show their emails and displayName, which the controller's compact users lack).
pub async fn list_objects(client: &Client) -> Result<(Objects, Vec<Arc<ScimUser>>), CliError> {
    let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    let c = client;
    let (users, groups, shards, mappings, cluster_mappings) = futures::try_join!(
        list_objects_of::<ScimUser>(c, "scimusers.scim.kubescim.io", None),
        list_objects_of::<ScimGroup>(c, "scimgroups.scim.kubescim.io", None),
        list_objects_of::<ScimGroupMembers>(c, "scimgroupmembers.scim.kubescim.io", None),
        list_objects_of::<GroupRoleMapping>(c, "grouprolemappings.scim.kubescim.io", None),
        list_objects_of::<ClusterGroupRoleMapping>(
            c,
            "clustergrouprolemappings.scim.kubescim.io",
            None
        ),
    )?;
    let (namespaces, cluster_roles, roles, role_bindings, cluster_role_bindings) = futures::try_join!(
        list_metadata_of::<Namespace>(c, "namespaces"),
        list_metadata_of::<ClusterRole>(c, "clusterroles"),
        list_metadata_of::<Role>(c, "roles (all namespaces)"),
        list_objects_of::<RoleBinding>(c, "rolebindings (all namespaces)", Some(&managed)),
        list_objects_of::<ClusterRoleBinding>(c, "clusterrolebindings", Some(&managed)),
    )?;
    // Repeating parts shared, as in the controller's cache.
    let lists = BindingInterner::default();
    let objects = Objects {
        users: users
            .iter()
            .map(|u| Arc::new(CachedUser::from_user(u)))
            .collect(),
        groups,
        shards,
        mappings,
        cluster_mappings,
        namespaces,
        cluster_roles,
        roles,
        role_bindings: role_bindings
            .iter()
            .map(|b| Arc::new(CachedBinding::from_object((**b).clone(), &lists)))
            .collect(),
        cluster_role_bindings: cluster_role_bindings
            .iter()
            .map(|b| Arc::new(CachedBinding::from_object((**b).clone(), &lists)))
            .collect(),
    };
    Ok((objects, users))
}

/// The reports' facts from listed objects, planned at `now`.
pub fn facts(
    objects: &Objects,
    users: &[Arc<ScimUser>],
    settings: plan::Settings,
    now: k8s_openapi::jiff::Timestamp,
) -> Facts {
    let (input, _) = objects.plan_input(now);
    let people = users
        .iter()
        .filter_map(|u| {
            let emails = u
                .spec
                .attributes
                .get("emails")
                .and_then(|e| e.as_array())
                .map(|list| {
                    list.iter()
                        .filter_map(|e| e.get("value")?.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Some((
                u.metadata.name.clone()?,
                Person {
                    display_name: u.spec.display_name.clone(),
                    emails,
                },
            ))
        })
        .collect();
    let ready = |s: Option<&MappingStatus>| {
        let c = s?.conditions.iter().find(|c| c.type_ == "Ready")?;
        Some(LiveStatus {
            reason: Some(c.reason.clone()),
            message: Some(c.message.clone()),
        })
    };
    let mut live_status = std::collections::BTreeMap::new();
    for m in &objects.mappings {
        if let (Some(namespace), Some(name), Some(s)) = (
            m.metadata.namespace.clone(),
            m.metadata.name.clone(),
            ready(m.status.as_ref()),
        ) {
            live_status.insert(MappingKey::Namespaced { namespace, name }, s);
        }
    }
    for m in &objects.cluster_mappings {
        if let (Some(name), Some(s)) = (m.metadata.name.clone(), ready(m.status.as_ref())) {
            live_status.insert(MappingKey::Cluster { name }, s);
        }
    }
    Facts {
        settings,
        input,
        people,
        live_status,
    }
}

/// Read the cluster and the settings, printing the settings' warnings on stderr.
pub async fn load(args: &ClusterArgs) -> Result<Loaded, CliError> {
    let client = client(args).await?;
    let settings = if args.no_deployment {
        settings::defaults(&args.namespace, &args.settings)?
    } else {
        settings::load(
            &client,
            &args.namespace,
            args.deployment.as_deref(),
            &args.settings,
        )
        .await?
    };
    for w in &settings.warnings {
        eprintln!("warning: {w}");
    }
    let (objects, users) = list_objects(&client).await?;
    Ok(Loaded {
        facts: facts(
            &objects,
            &users,
            settings.settings,
            k8s_openapi::jiff::Timestamp::now(),
        ),
        default_namespace: client.default_namespace().to_owned(),
    })
}

fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `kube-scim access USER`.
pub async fn access(args: AccessArgs) -> Result<ExitCode, CliError> {
    let loaded = load(&args.cluster).await?;
    let facts = &loaded.facts;
    let plan = plan::plan(&facts.settings, &facts.input);
    let report = explain::access::report(facts, &plan, &args.user)?;
    print(&explain::render(
        &report,
        args.cluster.output,
        explain::access::table,
    )?);
    Ok(ExitCode::SUCCESS)
}

/// `kube-scim who NAMESPACE [--role R]`.
pub async fn who(args: WhoArgs) -> Result<ExitCode, CliError> {
    let loaded = load(&args.cluster).await?;
    let facts = &loaded.facts;
    let plan = plan::plan(&facts.settings, &facts.input);
    let report = explain::who::report(facts, &plan, &args.target, args.role.as_deref());
    print(&explain::render(
        &report,
        args.cluster.output,
        explain::who::table,
    )?);
    Ok(ExitCode::SUCCESS)
}

/// Exit code of `plan` when something would change (1 is an error, as with `kubectl diff`).
pub const EXIT_CHANGES: u8 = 2;

/// The text of `-f` arguments: files, the files of a directory (`.yaml`, `.yml`,
/// `.json`, sorted), or stdin for `-`.
fn read_sources(paths: &[PathBuf]) -> Result<Vec<(String, String)>, CliError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CliError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| CliError::Read {
                    path: "stdin".into(),
                    source,
                })?;
            out.push(("stdin".to_owned(), text));
        } else if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|source| CliError::Read {
                    path: p.display().to_string(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            files.sort();
            for f in files {
                out.push((f.display().to_string(), read(&f)?));
            }
        } else {
            out.push((p.display().to_string(), read(p)?));
        }
    }
    Ok(out)
}

/// The edits in `sources`, checked against the cluster: one mapping per name, in a
/// namespace that exists.
pub fn edits(
    sources: &[(String, String)],
    facts: &Facts,
    default_namespace: &str,
) -> Result<Vec<diff::Edit>, CliError> {
    let mut mappings: Vec<file::FileMapping> = Vec::new();
    for (name, text) in sources {
        mappings.extend(file::parse(name, text, default_namespace)?);
    }
    let mut problems = Vec::new();
    for (i, m) in mappings.iter().enumerate() {
        if let Some(first) = mappings[..i].iter().find(|x| x.edit.key == m.edit.key) {
            problems.push(format!(
                "{}: {} is also in {}",
                m.origin, m.edit.key, first.origin
            ));
        }
        if let Some(ns) = m.edit.key.namespace() {
            if !facts.input.namespaces.iter().any(|n| n.name == ns) {
                problems.push(format!("{}: namespace {ns} not found", m.origin));
            }
        }
    }
    if mappings.is_empty() {
        problems.push("no GroupRoleMapping or ClusterGroupRoleMapping in the files".into());
    }
    if !problems.is_empty() {
        return Err(CliError::Invalid(problems.join("\n")));
    }
    Ok(mappings.into_iter().map(|m| m.edit).collect())
}

/// `kube-scim plan -f FILE`: exit 0 when no binding would change, 2 when some would.
pub async fn plan_files(args: PlanArgs) -> Result<ExitCode, CliError> {
    // The files first: a typo is reported without waiting for the cluster.
    let sources = read_sources(&args.files)?;
    for (name, text) in &sources {
        file::parse(name, text, "default")?;
    }
    let loaded = load(&args.cluster).await?;
    let facts = &loaded.facts;
    let edits = edits(&sources, facts, &loaded.default_namespace)?;
    let before = plan::plan(&facts.settings, &facts.input);
    let after_input = diff::apply_edits(&facts.input, &edits);
    let after = plan::plan(&facts.settings, &after_input);
    // What the CRD schema refuses at apply time (and the plan freezes) is an error here.
    let invalid: Vec<String> = edits
        .iter()
        .filter_map(|e| {
            let o = after.mapping_status.get(&e.key)?;
            let problems: Vec<&str> = o
                .problems
                .iter()
                .filter(|p| p.reason == Reason::InvalidSpec)
                .map(|p| p.message.as_str())
                .collect();
            (!problems.is_empty())
                .then(|| format!("{} {}: {}", e.key.kind(), e.key, problems.join("; ")))
        })
        .collect();
    if !invalid.is_empty() {
        return Err(CliError::Invalid(format!(
            "invalid mapping(s), which the API server would refuse:\n{}",
            invalid.join("\n")
        )));
    }
    let report = diff::report(&facts.input, &before, &after_input, &after, &edits);
    print(&explain::render(&report, args.cluster.output, diff::table)?);
    Ok(if report.changed {
        ExitCode::from(EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn facts_carry_every_email_and_the_ready_condition() {
        let user: ScimUser = serde_json::from_value(json!({
            "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "ScimUser",
            "metadata": {"name": "u1"},
            "spec": {"userName": "a@x", "displayName": "A", "emails": [
                {"value": "home@x", "type": "home"}, {"value": "work@x", "type": "work"}]}
        }))
        .unwrap();
        let mapping: GroupRoleMapping = serde_json::from_value(json!({
            "apiVersion": "scim.kubescim.io/v1alpha1", "kind": "GroupRoleMapping",
            "metadata": {"name": "m", "namespace": "ns", "generation": 2},
            "spec": {"groups": [{"displayName": "g"}], "roleRef": {"kind": "ClusterRole", "name": "edit"}},
            "status": {"observedGeneration": 2, "conditions": [{
                "type": "Ready", "status": "False", "reason": "BindingRefused",
                "message": "forbidden", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let objects = Objects {
            users: vec![Arc::new(CachedUser::from_user(&user))],
            mappings: vec![Arc::new(mapping)],
            ..Objects::default()
        };
        let f = facts(
            &objects,
            &[Arc::new(user)],
            plan::Settings::default(),
            Default::default(),
        );
        assert_eq!(f.input.users[0].work_email.as_deref(), Some("work@x"));
        assert_eq!(f.people["u1"].emails, ["home@x", "work@x"]);
        assert_eq!(f.people["u1"].display_name.as_deref(), Some("A"));
        let key = MappingKey::Namespaced {
            namespace: "ns".into(),
            name: "m".into(),
        };
        assert_eq!(f.binding_refused(&key), Some("forbidden"));
        assert_eq!(f.input.mappings[0].observed_generation, Some(2));
    }

    #[test]
    fn the_plugin_name_is_recognised_wherever_it_lives() {
        assert!(invoked_as_plugin(OsStr::new("kubectl-scim")));
        assert!(invoked_as_plugin(OsStr::new("/usr/local/bin/kubectl-scim")));
        assert!(invoked_as_plugin(OsStr::new("C:\\bin\\kubectl-scim.exe")) || cfg!(unix));
        assert!(!invoked_as_plugin(OsStr::new("/usr/bin/kube-scim")));
        assert!(!invoked_as_plugin(OsStr::new("kubectl")));
    }
}
