//! The operator's settings, for planning on the caller's machine exactly as the
//! controller plans in the cluster.
//!
//! Design: the settings that shape a plan (subject naming, protected roles and
//! namespaces, cluster-wide roles, the mass-removal guard, part sizes) are `kube-scim
//! run` flags with `KUBE_SCIM_*` environment fallbacks, and the chart sets them as plain
//! `value:` entries in the controller Deployment's container. So the CLI reads that
//! Deployment in the operator's namespace (`-n`, found by the chart's labels
//! `app.kubernetes.io/part-of=kube-scim,app.kubernetes.io/component=controller`, or named
//! with `--deployment`), takes its container's `run` arguments and environment, lets
//! `--setting NAME=VALUE` override any of them, and parses the result with the very clap
//! definition of `kube-scim run` ([`RunConfig`]), then derives the plan's settings with
//! [`crate::controller::settings`]: no default, name or parser is written twice.
//! Precedence is the operator's own: a flag beats its environment variable.
//!
//! When the Deployment cannot be read (none found, not allowed to read it, a value the
//! CLI cannot see such as a `secretKeyRef`), the CLI says so on stderr and uses the
//! defaults for what it could not read: a plan made with other settings than the
//! controller's is worth a warning, not a refusal (`--setting` can fill the gap).
use std::collections::BTreeMap;

use clap::{Args, FromArgMatches};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use kube::api::{Api, ListParams};

use crate::config::RunConfig;
use crate::controller::plan::Settings;

/// Labels of the chart's controller Deployment.
pub const CONTROLLER_SELECTOR: &str =
    "app.kubernetes.io/part-of=kube-scim,app.kubernetes.io/component=controller";

/// Environment the chart sets from the pod itself (`fieldRef`): not settings.
const FROM_POD: [&str; 2] = ["KUBE_SCIM_NAMESPACE", "POD_NAME"];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--setting {0:?}: expected NAME=VALUE, e.g. cluster-wide-roles=view,edit")]
    Malformed(String),
    #[error(
        "--setting {name}: not a `kube-scim run` flag or KUBE_SCIM_* variable (known: {known})"
    )]
    Unknown { name: String, known: String },
    #[error("invalid settings: {0}")]
    Invalid(String),
    #[error("Deployment {namespace}/{name}: {message}")]
    Deployment {
        namespace: String,
        name: String,
        message: String,
    },
}

/// The plan's settings and where they came from.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    pub settings: Settings,
    /// `Deployment NS/NAME`, or `defaults`.
    pub source: String,
    /// For stderr: what could not be read, what was assumed.
    pub warnings: Vec<String>,
}

/// One `run` argument: its clap id, flag and environment variable.
struct Flag {
    id: String,
    long: String,
    env: Option<String>,
}

fn run_command() -> clap::Command {
    RunConfig::augment_args(clap::Command::new("run"))
        .no_binary_name(true)
        // Only what is given counts: never the caller's own environment.
        .mut_args(|a| a.env(None::<&'static str>))
}

fn flags() -> Vec<Flag> {
    RunConfig::augment_args(clap::Command::new("run"))
        .get_arguments()
        .filter_map(|a| {
            Some(Flag {
                id: a.get_id().to_string(),
                long: a.get_long()?.to_owned(),
                env: a.get_env().map(|e| e.to_string_lossy().into_owned()),
            })
        })
        .collect()
}

/// Container `command` + `args` after `run` (the image's entrypoint is the binary and
/// its default argument is `run`).
pub fn run_args(container: &Container) -> Vec<String> {
    let all: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .cloned()
        .collect();
    match all.iter().position(|a| a == "run") {
        Some(i) => all[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

/// `run` configuration from a container's `run` arguments and plain environment values,
/// `overrides` (`NAME=VALUE`, NAME a flag without dashes or a variable) on top; the
/// operator's namespace is `namespace` unless they set it.
pub fn run_config(
    args: &[String],
    env: &BTreeMap<String, String>,
    overrides: &[String],
    namespace: &str,
) -> Result<RunConfig, SettingsError> {
    let flags = flags();
    // Clap id → raw values, lowest precedence first.
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    values.insert("namespace".into(), vec![namespace.to_owned()]);
    for f in &flags {
        if let Some(v) = f.env.as_ref().and_then(|e| env.get(e)) {
            values.insert(f.id.clone(), vec![v.clone()]);
        }
    }
    if !args.is_empty() {
        let matches = run_command()
            .try_get_matches_from(args)
            .map_err(|e| SettingsError::Invalid(first_line(&e.to_string())))?;
        for f in &flags {
            if matches.value_source(&f.id) == Some(clap::parser::ValueSource::CommandLine) {
                let raw: Vec<String> = matches
                    .get_raw(&f.id)
                    .into_iter()
                    .flatten()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                values.insert(f.id.clone(), raw);
            }
        }
    }
    for o in overrides {
        let (name, value) = o
            .split_once('=')
            .ok_or_else(|| SettingsError::Malformed(o.clone()))?;
        let name = name.trim().trim_start_matches("--");
        let flag = flags
            .iter()
            .find(|f| f.long == name || f.env.as_deref() == Some(name))
            .ok_or_else(|| SettingsError::Unknown {
                name: name.to_owned(),
                known: flags
                    .iter()
                    .map(|f| f.long.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        values.insert(flag.id.clone(), vec![value.to_owned()]);
    }
    let argv: Vec<String> = flags
        .iter()
        .flat_map(|f| {
            values
                .get(&f.id)
                .into_iter()
                .flatten()
                .map(move |v| format!("--{}={v}", f.long))
        })
        .collect();
    let matches = run_command()
        .try_get_matches_from(argv)
        .map_err(|e| SettingsError::Invalid(first_line(&e.to_string())))?;
    RunConfig::from_arg_matches(&matches)
        .map_err(|e| SettingsError::Invalid(first_line(&e.to_string())))
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or(s)
        .trim_start_matches("error: ")
        .to_owned()
}

/// Plain values of the container's environment, and warnings about the entries whose
/// value the CLI cannot see.
pub fn container_env(container: &Container) -> (BTreeMap<String, String>, Vec<String>) {
    let known: Vec<String> = flags().into_iter().filter_map(|f| f.env).collect();
    let mut env = BTreeMap::new();
    let mut warnings = Vec::new();
    for e in container.env.iter().flatten() {
        match (&e.value, &e.value_from) {
            (_, Some(_)) if FROM_POD.contains(&e.name.as_str()) => {}
            (_, Some(_)) if known.contains(&e.name) => warnings.push(format!(
                "{} is set from a Secret, ConfigMap or field, which the CLI does not read: assuming its default (override with --setting {}=...)",
                e.name, e.name
            )),
            (Some(v), None) => {
                env.insert(e.name.clone(), v.clone());
            }
            (None, None) => {
                env.insert(e.name.clone(), String::new());
            }
            _ => {}
        }
    }
    if container.env_from.as_ref().is_some_and(|f| !f.is_empty()) {
        warnings.push(
            "the container also takes variables from envFrom, which the CLI does not read".into(),
        );
    }
    (env, warnings)
}

/// The plan's settings from a `run` configuration.
pub fn plan_settings(config: &RunConfig) -> Result<Settings, SettingsError> {
    crate::controller::settings(&config.controller, &config.namespace)
        .map_err(|e| SettingsError::Invalid(e.to_string()))
}

/// Settings from `container` of the Deployment `namespace/name`, with `overrides`.
/// What cannot be used is a warning and the defaults (plus `overrides`) are used; bad
/// `overrides` are an error.
pub fn from_container(
    namespace: &str,
    name: &str,
    container: &Container,
    overrides: &[String],
) -> Result<OperatorSettings, SettingsError> {
    let (env, mut warnings) = container_env(container);
    let args = run_args(container);
    let parsed = run_config(&args, &env, overrides, namespace).and_then(|c| plan_settings(&c));
    match parsed {
        Ok(settings) => Ok(OperatorSettings {
            settings,
            source: format!("Deployment {namespace}/{name}"),
            warnings,
        }),
        Err(e) => {
            let mut fallback = defaults(namespace, overrides)?;
            warnings.push(format!(
                "the settings of Deployment {namespace}/{name} do not parse ({e}): using the defaults"
            ));
            warnings.append(&mut fallback.warnings);
            fallback.warnings = warnings;
            Ok(fallback)
        }
    }
}

/// The default settings (an operator in `namespace`), with `overrides`.
pub fn defaults(namespace: &str, overrides: &[String]) -> Result<OperatorSettings, SettingsError> {
    let config = run_config(&[], &BTreeMap::new(), overrides, namespace)?;
    Ok(OperatorSettings {
        settings: plan_settings(&config)?,
        source: "defaults".into(),
        warnings: Vec::new(),
    })
}

/// Read the controller Deployment (`deployment`, else the one the chart's labels find)
/// in `namespace` and derive the settings; fall back to the defaults with a warning
/// when there is none or it may not be read. A named Deployment that does not exist
/// is an error.
pub async fn load(
    client: &kube::Client,
    namespace: &str,
    deployment: Option<&str>,
    overrides: &[String],
) -> Result<OperatorSettings, SettingsError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let found = match deployment {
        Some(name) => match api.get_opt(name).await {
            Ok(Some(d)) => Ok(vec![d]),
            Ok(None) => {
                return Err(SettingsError::Deployment {
                    namespace: namespace.into(),
                    name: name.into(),
                    message: "not found".into(),
                })
            }
            Err(e) => Err(e),
        },
        None => api
            .list(&ListParams::default().labels(CONTROLLER_SELECTOR))
            .await
            .map(|l| l.items),
    };
    let mut deployments = match found {
        Ok(d) => d,
        Err(e) => {
            let mut s = defaults(namespace, overrides)?;
            s.warnings.push(format!(
                "cannot read the controller Deployment in namespace {namespace} ({}): planning with the default settings; pass --setting to match the operator",
                super::kube_message(&e)
            ));
            return Ok(s);
        }
    };
    deployments.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let Some(d) = deployments.first() else {
        let mut s = defaults(namespace, overrides)?;
        s.warnings.push(format!(
            "no kube-scim controller Deployment in namespace {namespace} (labels {CONTROLLER_SELECTOR}): planning with the default settings; pass -n, --deployment or --setting to match the operator"
        ));
        return Ok(s);
    };
    let name = d.metadata.name.clone().unwrap_or_default();
    let containers = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    let Some(container) = containers
        .iter()
        .find(|c| c.name == "kube-scim")
        .or(containers.first())
    else {
        let mut s = defaults(namespace, overrides)?;
        s.warnings.push(format!(
            "Deployment {namespace}/{name} has no container: planning with the default settings"
        ));
        return Ok(s);
    };
    let mut s = from_container(namespace, &name, container, overrides)?;
    if deployments.len() > 1 {
        let others: Vec<&str> = deployments[1..]
            .iter()
            .filter_map(|d| d.metadata.name.as_deref())
            .collect();
        s.warnings.push(format!(
            "several controller Deployments in namespace {namespace}; using {name} (not {}): pass --deployment to choose",
            others.join(", ")
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SubjectKind;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).expect("container")
    }

    #[test]
    fn the_charts_environment_becomes_the_settings() {
        let c = container(json!({
            "name": "kube-scim", "args": ["run"],
            "env": [
                {"name": "KUBE_SCIM_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "KUBE_SCIM_SUBJECT_KIND", "value": "user-and-group"},
                {"name": "KUBE_SCIM_GROUP_PREFIX", "value": "oidc:"},
                {"name": "KUBE_SCIM_PROTECTED_ROLES", "value": "cluster-admin,admin"},
                {"name": "KUBE_SCIM_CLUSTER_WIDE_ROLES", "value": "view,team-*"},
                {"name": "KUBE_SCIM_BINDABLE_PROTECTED_NAMESPACES", "value": ""},
                {"name": "KUBE_SCIM_MASS_REMOVAL_THRESHOLD", "value": "0.25"},
                {"name": "KUBE_SCIM_MAX_FANOUT", "value": "250000"},
                {"name": "KUBE_SCIM_WEBHOOK_CERT_FILE", "value": "/etc/tls.crt"},
                {"name": "KUBE_SCIM_WEBHOOK_KEY_FILE", "value": "/etc/tls.key"},
                {"name": "KUBE_SCIM_LOG", "value": "info"}
            ]
        }));
        let s = from_container("ops", "kube-scim-controller", &c, &[]).expect("settings");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.source, "Deployment ops/kube-scim-controller");
        let st = &s.settings;
        assert_eq!(st.subjects.kind, SubjectKind::UserAndGroup);
        assert_eq!(st.subjects.group_prefix, "oidc:");
        assert!(st.protected_roles.contains("admin"));
        assert_eq!(st.cluster_wide_roles, ["view", "team-*"]);
        assert_eq!(st.mass_removal_threshold, 0.25);
        assert_eq!(st.max_fanout, 250_000);
        // The operator's own namespace is protected.
        assert!(st.protected_namespaces.contains("ops"));
        assert!(st.protected_namespaces.contains("kube-system"));
    }

    #[test]
    fn flags_beat_environment_and_overrides_beat_both() {
        let c = container(json!({
            "name": "kube-scim",
            "command": ["/kube-scim"],
            "args": ["run", "--cluster-wide-roles", "view,edit", "--subject-kind=group"],
            "env": [{"name": "KUBE_SCIM_CLUSTER_WIDE_ROLES", "value": "view"},
                    {"name": "KUBE_SCIM_USER_PREFIX", "value": "oidc:"}]
        }));
        let s = from_container("ops", "c", &c, &[]).unwrap().settings;
        assert_eq!(s.cluster_wide_roles, ["view", "edit"]);
        assert_eq!(s.subjects.kind, SubjectKind::Group);
        assert_eq!(s.subjects.user_prefix, "oidc:");
        let s = from_container(
            "ops",
            "c",
            &c,
            &[
                "cluster-wide-roles=admin".into(),
                "KUBE_SCIM_SUBJECT_KIND=user".into(),
                "--bindable-protected-namespaces=ops".into(),
                "max-fanout=0".into(),
            ],
        )
        .unwrap()
        .settings;
        assert_eq!(s.cluster_wide_roles, ["admin"]);
        assert_eq!(s.max_fanout, 0, "0 = unlimited, as the operator reads it");
        assert_eq!(s.subjects.kind, SubjectKind::User);
        assert!(!s.protected_namespaces.contains("ops"));
    }

    #[test]
    fn what_cannot_be_read_warns_and_bad_overrides_fail() {
        let c = container(json!({
            "name": "kube-scim",
            "env": [{"name": "KUBE_SCIM_USER_PREFIX", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "KUBE_SCIM_MASS_REMOVAL_THRESHOLD", "value": "lots"}],
            "envFrom": [{"configMapRef": {"name": "x"}}]
        }));
        let s = from_container("ops", "c", &c, &[]).unwrap();
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("KUBE_SCIM_USER_PREFIX"),
            "{:?}",
            s.warnings
        );
        assert!(s.warnings[2].contains("do not parse"), "{:?}", s.warnings);
        assert_eq!(s.settings, defaults("ops", &[]).unwrap().settings);

        assert!(matches!(
            defaults("ops", &["no-such-flag=1".into()]),
            Err(SettingsError::Unknown { .. })
        ));
        assert!(matches!(
            defaults("ops", &["subject-kind".into()]),
            Err(SettingsError::Malformed(_))
        ));
        assert!(matches!(
            defaults("ops", &["subject-kind=robots".into()]),
            Err(SettingsError::Invalid(_))
        ));
        assert!(matches!(
            defaults("ops", &["mass-removal-threshold=0".into()]),
            Err(SettingsError::Invalid(_))
        ));
    }

    #[test]
    fn the_callers_environment_is_ignored() {
        // SAFETY: a test-only variable no other test reads.
        unsafe { std::env::set_var("KUBE_SCIM_GROUP_PREFIX", "from-my-shell:") };
        let s = defaults("ops", &[]).unwrap();
        assert_eq!(s.settings.subjects.group_prefix, "");
        unsafe { std::env::remove_var("KUBE_SCIM_GROUP_PREFIX") };
    }
}
