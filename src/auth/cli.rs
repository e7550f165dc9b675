//! `kube-scim token create|list|revoke`.
//!
//! Rotation without downtime: `create` a second token, put it into Entra / Okta, then
//! `revoke` the first. Both are valid in between.
use std::io::Write;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::ResourceExt;

use super::store::{self, entry_from_secret, new_secret, token_name_of};
use super::token::{self, TokenError};
use super::usage;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Create a token and print it once on stdout. Only its SHA-256 is stored.
    Create {
        /// Token name (lowercase letters, digits, '-'), e.g. `entra` or `entra-2025-06`.
        name: String,
        /// Namespace of the operator, where token Secrets live.
        #[arg(
            short = 'n',
            long,
            env = "KUBE_SCIM_NAMESPACE",
            default_value = "kube-scim"
        )]
        namespace: String,
        /// Expire the token after this long, e.g. 90d, 12h, 30m, 3600s. Never when absent.
        #[arg(long, value_parser = parse_expires_in)]
        expires_in: Option<std::time::Duration>,
    },
    /// List tokens: name, creation, expiry, status and last use (as recorded by the SCIM
    /// side, at most once a minute per replica). Never prints tokens or hashes.
    List {
        /// Namespace of the operator, where token Secrets live.
        #[arg(
            short = 'n',
            long,
            env = "KUBE_SCIM_NAMESPACE",
            default_value = "kube-scim"
        )]
        namespace: String,
    },
    /// Revoke a token (delete its Secret). Running operators stop accepting it within seconds.
    Revoke {
        /// Token name.
        name: String,
        /// Namespace of the operator, where token Secrets live.
        #[arg(
            short = 'n',
            long,
            env = "KUBE_SCIM_NAMESPACE",
            default_value = "kube-scim"
        )]
        namespace: String,
    },
}

fn parse_expires_in(s: &str) -> Result<std::time::Duration, TokenError> {
    token::parse_duration(s)
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("token '{name}' already exists in namespace {namespace}; to rotate, create a token with another name, switch the identity provider to it, then revoke '{name}'")]
    AlreadyExists { name: String, namespace: String },
    #[error("no token named '{name}' in namespace {namespace}")]
    NotFound { name: String, namespace: String },
    #[error("namespace {0} does not exist")]
    NamespaceNotFound(String),
    #[error("permission denied to {action} Secrets in namespace {namespace}: {message}")]
    Forbidden {
        action: &'static str,
        namespace: String,
        message: String,
    },
    #[error("failed to {action} token Secrets in namespace {namespace}: {source}")]
    Kube {
        action: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("expiry out of range")]
    ExpiryOutOfRange,
    #[error("failed to write output: {0}")]
    Io(#[from] std::io::Error),
}

fn kube_error(action: &'static str, namespace: &str, e: kube::Error) -> AuthError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => AuthError::Forbidden {
            action,
            namespace: namespace.to_string(),
            message: s.message.clone(),
        },
        _ => AuthError::Kube {
            action,
            namespace: namespace.to_string(),
            source: e,
        },
    }
}

pub async fn run(client: kube::Client, cmd: TokenCommand) -> Result<(), AuthError> {
    match cmd {
        TokenCommand::Create {
            name,
            namespace,
            expires_in,
        } => create(client, &name, &namespace, expires_in).await,
        TokenCommand::List { namespace } => list(client, &namespace).await,
        TokenCommand::Revoke { name, namespace } => revoke(client, &name, &namespace).await,
    }
}

async fn create(
    client: kube::Client,
    name: &str,
    namespace: &str,
    expires_in: Option<std::time::Duration>,
) -> Result<(), AuthError> {
    token::validate_name(name)?;
    let expires_at = match expires_in {
        None => None,
        Some(d) => {
            let d = chrono::TimeDelta::from_std(d).map_err(|_| AuthError::ExpiryOutOfRange)?;
            Some(
                Utc::now()
                    .checked_add_signed(d)
                    .ok_or(AuthError::ExpiryOutOfRange)?,
            )
        }
    };
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    // Refuse to shadow an existing token of the same name that lives under another Secret
    // name (hand-made), which the create below would not catch.
    if !find_by_name(&secrets, name, namespace).await?.is_empty() {
        return Err(AuthError::AlreadyExists {
            name: name.to_string(),
            namespace: namespace.to_string(),
        });
    }
    let tok = token::generate()?;
    let secret = new_secret(name, &tok.hash(), expires_at);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(AuthError::AlreadyExists {
                name: name.to_string(),
                namespace: namespace.to_string(),
            })
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(AuthError::NamespaceNotFound(namespace.to_string()))
        }
        Err(e) => return Err(kube_error("create", namespace, e)),
    }
    // The token on stdout, alone, so scripts can capture it; everything else on stderr.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", tok.expose())?;
    out.flush()?;
    let expiry = expires_at.map_or_else(
        || "it does not expire".to_string(),
        |t| format!("it expires at {}", fmt_time(t)),
    );
    eprintln!(
        "Created token '{name}' in namespace {namespace} (Secret {}); {expiry}.\n\
         This is the only time the token is shown: store it now (e.g. in Entra's Secret Token field).",
        store::secret_name(name)
    );
    Ok(())
}

async fn list(client: kube::Client, namespace: &str) -> Result<(), AuthError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut items = secrets
        .list(&ListParams::default().labels(&store::selector()))
        .await
        .map_err(|e| kube_error("list", namespace, e))?
        .items;
    items.sort_by_key(token_name_of);
    let now = Utc::now();
    let last_used = last_uses(client, namespace).await;
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|s| {
            let created = s.creation_timestamp().map_or_else(
                || "-".to_string(),
                |t| {
                    DateTime::from_timestamp(t.0.as_second(), 0)
                        .map_or_else(|| t.0.to_string(), fmt_time)
                },
            );
            // An unusable Secret authenticates nothing; say so instead of hiding it.
            let (expires, status) = match entry_from_secret(s) {
                Err(e) => ("-".to_string(), format!("invalid: {e}")),
                Ok(e) => match e.expires_at {
                    None => ("never".to_string(), "active".to_string()),
                    Some(t) => (
                        fmt_time(t),
                        if e.is_expired(now) {
                            "expired"
                        } else {
                            "active"
                        }
                        .to_string(),
                    ),
                },
            };
            let name = token_name_of(s);
            let used = match &last_used {
                None => "?".to_string(),
                Some(uses) => uses
                    .get(&name)
                    .map_or_else(|| "never".to_string(), |t| ago(*t, now)),
            };
            [name, created, expires, status, used]
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        eprintln!("No tokens in namespace {namespace}.");
        return Ok(());
    }
    let header = ["NAME", "CREATED", "EXPIRES", "STATUS", "LAST USED"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        writeln!(
            out,
            "{:<w0$}   {:<w1$}   {:<w2$}   {:<w3$}   {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        )?;
    }
    out.flush()?;
    if last_used.is_none() {
        eprintln!(
            "LAST USED is unknown: could not list Leases ({}) in namespace {namespace}.",
            usage::TOKEN_USE_LABEL
        );
    }
    Ok(())
}

/// Last recorded use per token name, from the use Leases; None when they can't be read
/// (the listing still works without them).
async fn last_uses(
    client: kube::Client,
    namespace: &str,
) -> Option<BTreeMap<String, DateTime<Utc>>> {
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let list = leases
        .list(&ListParams::default().labels(&format!("{}=true", usage::TOKEN_USE_LABEL)))
        .await
        .ok()?;
    let mut out = BTreeMap::new();
    for lease in &list.items {
        if let (Some(name), Some(t)) = (usage::token_of(lease), usage::last_use(lease)) {
            // The Lease must be the one its name says: a stray label is not a record.
            if lease.metadata.name.as_deref() == Some(usage::lease_name(name).as_str()) {
                out.insert(name.to_string(), t);
            }
        }
    }
    Some(out)
}

/// `2025-06-01T10:00:00Z (3m ago)`.
fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds().max(0);
    let rel = match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    };
    format!("{} ({rel} ago)", fmt_time(t))
}

async fn revoke(client: kube::Client, name: &str, namespace: &str) -> Result<(), AuthError> {
    token::validate_name(name)?;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    // By token name among labelled Secrets, not by Secret name: this never deletes an
    // unrelated Secret that happens to be called kube-scim-token-<name>, and it also
    // revokes hand-made token Secrets.
    let found = find_by_name(&secrets, name, namespace).await?;
    if found.is_empty() {
        return Err(AuthError::NotFound {
            name: name.to_string(),
            namespace: namespace.to_string(),
        });
    }
    for s in found {
        let secret_name = s.name_any();
        // The uid precondition: delete the Secret we looked at, not a namesake created since.
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: s.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match secrets.delete(&secret_name, &dp).await {
            Ok(_) => {}
            // Someone revoked it at the same time: the outcome is the one asked for.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_error("delete", namespace, e)),
        }
        eprintln!("Revoked token '{name}' (deleted Secret {namespace}/{secret_name}).");
    }
    // Its last-use record goes too, so a new token of the same name starts at "never".
    // Best effort: a leftover record is only information.
    let leases: Api<Lease> = Api::namespaced(secrets.into_client(), namespace);
    let _ = leases
        .delete(&usage::lease_name(name), &DeleteParams::default())
        .await;
    Ok(())
}

async fn find_by_name(
    secrets: &Api<Secret>,
    name: &str,
    namespace: &str,
) -> Result<Vec<Secret>, AuthError> {
    let items = secrets
        .list(&ListParams::default().labels(&store::selector()))
        .await
        .map_err(|e| kube_error("list", namespace, e))?
        .items;
    Ok(items
        .into_iter()
        .filter(|s| token_name_of(s) == name)
        .collect())
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: TokenCommand,
    }

    #[test]
    fn last_use_is_shown_with_its_age() {
        let now = DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: i64| now - chrono::TimeDelta::seconds(s);
        assert_eq!(ago(at(42), now), "2025-06-01T11:59:18Z (42s ago)");
        assert_eq!(ago(at(600), now), "2025-06-01T11:50:00Z (10m ago)");
        assert_eq!(ago(at(7200), now), "2025-06-01T10:00:00Z (2h ago)");
        assert_eq!(ago(at(3 * 86_400), now), "2025-05-29T12:00:00Z (3d ago)");
        // Clock skew between replicas and the admin's machine: never "-5s ago".
        assert_eq!(ago(at(-5), now), "2025-06-01T12:00:05Z (0s ago)");
    }

    #[test]
    fn create_parses_expiry_and_rejects_garbage() {
        let cli = Cli::try_parse_from([
            "x",
            "create",
            "entra",
            "--namespace",
            "ns",
            "--expires-in",
            "90d",
        ])
        .unwrap();
        match cli.cmd {
            TokenCommand::Create {
                name,
                namespace,
                expires_in,
            } => {
                assert_eq!(name, "entra");
                assert_eq!(namespace, "ns");
                assert_eq!(
                    expires_in,
                    Some(std::time::Duration::from_secs(90 * 86_400))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["x", "create", "entra", "--expires-in", "soon"]).is_err());
        assert!(Cli::try_parse_from(["x", "revoke"]).is_err());
    }

    /// `-n` as in kubectl, on every subcommand (the docs use it).
    #[test]
    fn namespace_has_the_kubectl_short_flag() {
        for args in [
            &["x", "list", "-n", "ns"][..],
            &["x", "create", "entra", "-n", "ns"][..],
            &["x", "revoke", "entra", "-n", "ns"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let ns = match cli.cmd {
                TokenCommand::Create { namespace, .. }
                | TokenCommand::List { namespace }
                | TokenCommand::Revoke { namespace, .. } => namespace,
            };
            assert_eq!(ns, "ns", "{args:?}");
        }
    }
}
