//! Bearer tokens on the real API server: the real binary's `token` CLI writes Secrets, a
//! `TokenStore` reflector in the test reads them, and authentication follows create,
//! rotation, expiry and revocation.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use kube_scim::auth::{AuthFailure, TokenHash, TokenIdentity, TokenStore};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::{kube_scim_cli, poll_until, token_client, TestEnv};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Run the CLI off the async thread, so the reflector under test keeps running meanwhile.
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kube_scim_cli(&args)
    })
    .await
    .expect("cli thread")
}

fn args(a: &[&str], namespace: &str) -> Vec<String> {
    let mut v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
    v.extend(["--namespace".to_string(), namespace.to_string()]);
    v
}

/// `token create`, asserting success and the exact stdout format; returns the token.
async fn create(env: &TestEnv, extra: &[&str]) -> String {
    let mut a = vec!["token", "create"];
    a.extend_from_slice(extra);
    let out = cli(args(&a, &env.namespace)).await;
    let stdout = String::from_utf8(out.stdout).expect("utf8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "token create {extra:?}: {stderr}");
    // Exactly the token and a newline: scripts capture stdout.
    let token = stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no trailing newline: {stdout:?}"));
    assert!(token.starts_with("kscim_"), "{token:?}");
    assert!(!token.contains(char::is_whitespace), "{stdout:?}");
    assert!(token.len() >= 6 + 64, "{token:?}");
    // The human note goes to stderr and doesn't repeat the token.
    assert!(stderr.contains("only time"), "{stderr}");
    assert!(!stderr.contains(token));
    token.to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn auth(store: &TokenStore, token: &str) -> Result<TokenIdentity, AuthFailure> {
    store.authenticate(Some(&bearer(token)))
}

async fn start_store(env: &TestEnv, shutdown: &CancellationToken) -> TokenStore {
    let store = TokenStore::start(env.client.clone(), &env.namespace, shutdown.clone());
    tokio::time::timeout(TIMEOUT, store.wait_synced())
        .await
        .expect("token store synced in time");
    assert!(store.is_synced());
    store
}

#[tokio::test]
async fn create_rotate_list_revoke() {
    let env = TestEnv::new("auth-lifecycle").await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let first = create(&env, &["entra"]).await;

    // The Secret holds the hash, and the token appears nowhere in it (plain or base64).
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = secrets
        .get("kube-scim-token-entra")
        .await
        .expect("token Secret");
    let whole = serde_json::to_string(&secret).expect("secret json");
    let token_b64 = serde_json::to_string(&ByteString(first.clone().into_bytes())).unwrap();
    assert!(!whole.contains(&first), "token stored in the Secret");
    assert!(
        !whole.contains(token_b64.trim_matches('"')),
        "token stored in the Secret"
    );
    let stored = secret
        .data
        .as_ref()
        .and_then(|d| d.get("sha256"))
        .expect("sha256 key");
    assert_eq!(
        String::from_utf8(stored.0.clone()).unwrap(),
        TokenHash::of(&first).to_hex()
    );
    assert_eq!(
        secret
            .labels()
            .get("scim.kubescim.io/token")
            .map(String::as_str),
        Some("true")
    );

    let store = start_store(&env, &shutdown).await;
    assert_eq!(
        auth(&store, &first),
        Ok(TokenIdentity {
            name: "entra".into()
        })
    );
    assert_eq!(
        store.authenticate(Some(&format!("bearer {first}"))),
        Ok(TokenIdentity {
            name: "entra".into()
        })
    );
    assert_eq!(auth(&store, "kscim_0000"), Err(AuthFailure::Unknown));
    assert_eq!(
        auth(&store, &format!("{first}x")),
        Err(AuthFailure::Unknown)
    );
    assert_eq!(
        store.authenticate(Some(&format!("Basic {first}"))),
        Err(AuthFailure::Malformed)
    );
    assert_eq!(store.authenticate(None), Err(AuthFailure::Missing));

    // Same name again: refused, nothing printed on stdout, the first token still works.
    let out = cli(args(&["token", "create", "entra"], &env.namespace)).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An invalid name never reaches the cluster.
    let out = cli(args(&["token", "create", "Not_A_Label"], &env.namespace)).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    // Rotation: a second token, valid alongside the first as soon as the watch delivers it.
    let second = create(&env, &["entra-next"]).await;
    assert_ne!(first, second);
    poll_until(TIMEOUT, "second token accepted", || async {
        auth(&store, &second).ok()
    })
    .await;
    assert_eq!(
        auth(&store, &first),
        Ok(TokenIdentity {
            name: "entra".into()
        })
    );
    assert_eq!(
        auth(&store, &second),
        Ok(TokenIdentity {
            name: "entra-next".into()
        })
    );

    // list: names and dates, never a token or a hash.
    let out = cli(args(&["token", "list"], &env.namespace)).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed.contains("NAME"), "{listed}");
    assert!(listed.contains("entra "), "{listed}");
    assert!(listed.contains("entra-next"), "{listed}");
    assert!(listed.contains("never"), "{listed}");
    for secret_text in [&first, &second] {
        assert!(!listed.contains(secret_text.as_str()));
        assert!(!listed.contains(&TokenHash::of(secret_text).to_hex()));
        assert!(!listed.contains(&TokenHash::of(secret_text).to_hex()[..16]));
    }

    // Revoke the first: it stops working once the deletion is watched; the second lives on.
    let out = cli(args(&["token", "revoke", "entra"], &env.namespace)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll_until(TIMEOUT, "revoked token refused", || async {
        (auth(&store, &first) == Err(AuthFailure::Unknown)).then_some(())
    })
    .await;
    assert!(auth(&store, &second).is_ok());
    assert!(secrets
        .get_opt("kube-scim-token-entra")
        .await
        .unwrap()
        .is_none());

    // Revoking what isn't there is an error, not a silent success.
    let out = cli(args(&["token", "revoke", "entra"], &env.namespace)).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no token named"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn tokens_expire() {
    let env = TestEnv::new("auth-expiry").await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let token = create(&env, &["short", "--expires-in", "2s"]).await;
    let store = start_store(&env, &shutdown).await;

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = secrets.get("kube-scim-token-short").await.expect("Secret");
    let expires_at = secret
        .annotations()
        .get("scim.kubescim.io/expires-at")
        .expect("expiry annotation");
    let expires_at = chrono::DateTime::parse_from_rfc3339(expires_at)
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc);
    let from_now = expires_at - chrono::Utc::now();
    assert!(from_now <= chrono::TimeDelta::seconds(3), "{from_now}");

    // Valid just before its expiry (checked at a fixed instant: no race with the clock)...
    let header = bearer(&token);
    assert_eq!(
        store.authenticate_at(Some(&header), expires_at - chrono::TimeDelta::seconds(1)),
        Ok(TokenIdentity {
            name: "short".into()
        })
    );
    // ...and refused, by name, once the real clock passes it.
    poll_until(TIMEOUT, "token expired", || async {
        (auth(&store, &token)
            == Err(AuthFailure::Expired {
                name: "short".into(),
            }))
        .then_some(())
    })
    .await;

    let out = cli(args(&["token", "list"], &env.namespace)).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("short") && l.contains("expired")),
        "{listed}"
    );

    // A zero expiry (a token born dead) is refused up front.
    let out = cli(args(
        &["token", "create", "zero", "--expires-in", "0s"],
        &env.namespace,
    ))
    .await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

/// GitOps/Helm path: a hand-made Opaque Secret with the label and a `sha256` key works,
/// with any Secret name; a labelled Secret without a usable hash authenticates nothing.
#[tokio::test]
async fn hand_made_secrets() {
    let env = TestEnv::new("auth-handmade").await;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let store = start_store(&env, &shutdown).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);

    let token = "kscim_hand-made-token-from-a-password-manager";
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "okta-scim",
            "labels": {"scim.kubescim.io/token": "true", "app.kubernetes.io/managed-by": "Helm"}
        },
        "type": "Opaque",
        "stringData": {"sha256": format!("{}\n", TokenHash::of(token).to_hex())}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let broken: Secret = serde_json::from_value(json!({
        "metadata": {"name": "broken", "labels": {"scim.kubescim.io/token": "true"}},
        "stringData": {"sha256": "not-a-hash"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &broken)
        .await
        .unwrap();

    let who = poll_until(TIMEOUT, "hand-made token accepted", || async {
        auth(&store, token).ok()
    })
    .await;
    assert_eq!(who.name, "okta-scim");
    assert_eq!(auth(&store, "not-a-hash"), Err(AuthFailure::Unknown));

    // The CLI revokes it by token name, too.
    let out = cli(args(&["token", "revoke", "okta-scim"], &env.namespace)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll_until(TIMEOUT, "hand-made token revoked", || async {
        auth(&store, token).is_err().then_some(())
    })
    .await;

    // `list` flags the unusable Secret instead of hiding it.
    let out = cli(args(&["token", "list"], &env.namespace)).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("broken") && l.contains("invalid")),
        "{listed}"
    );

    // revoke only deletes labelled token Secrets, never a namesake without the label.
    let plain: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kube-scim-token-plain"},
        "stringData": {"anything": "else"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    let out = cli(args(&["token", "revoke", "plain"], &env.namespace)).await;
    assert!(!out.status.success());
    assert!(secrets
        .get_opt("kube-scim-token-plain")
        .await
        .unwrap()
        .is_some());
}

/// Fail closed while the watch can't list Secrets (here: no RBAC yet), never crash, and
/// recover on the watcher's own retry once access is granted.
#[tokio::test]
async fn store_fails_closed_until_it_can_watch() {
    let env = TestEnv::new("auth-rbac").await;
    let token = create(&env, &["entra"]).await;
    let sa_token = env.service_account_token("scim").await;
    let client = token_client(&sa_token).await;

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let store = TokenStore::start(client, &env.namespace, shutdown.clone());
    // Let a few watch attempts fail (403) before granting access.
    let not_synced = tokio::time::timeout(Duration::from_secs(2), store.wait_synced()).await;
    assert!(not_synced.is_err(), "synced without RBAC");
    assert!(!store.is_synced());
    assert_eq!(auth(&store, &token), Err(AuthFailure::NotReady));

    let roles: Api<Role> = Api::namespaced(env.client.clone(), &env.namespace);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "token-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(env.client.clone(), &env.namespace);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "token-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "token-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "scim", "namespace": env.namespace}]
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The default backoff caps well below this.
    tokio::time::timeout(Duration::from_secs(60), store.wait_synced())
        .await
        .expect("synced after RBAC was granted");
    assert_eq!(
        auth(&store, &token),
        Ok(TokenIdentity {
            name: "entra".into()
        })
    );
}

/// `token list` shows when each token was last used, recorded by the operator in a Lease
/// of its own (the SCIM side has no write access to Secrets: one that could write them
/// could mint tokens), at most once a minute per token, so a busy client doesn't turn
/// every request into an API write. The token's expiry is a metric; revocation removes both.
#[tokio::test]
async fn last_use_is_recorded_in_a_lease_and_expiry_is_a_metric() {
    let op = crate::harness::operator().await;
    let client = crate::harness::admin_client().await;
    let name = crate::harness::unique("last-use");
    let ns = op.namespace.clone();
    let out = cli(args(&["token", "create", &name, "--expires-in", "7d"], &ns)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let list_row = || {
        let (ns, name) = (ns.clone(), name.clone());
        async move {
            let out = cli(args(&["token", "list"], &ns)).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let listed = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(listed.starts_with("NAME"), "{listed}");
            assert!(
                listed.lines().next().unwrap_or("").contains("LAST USED"),
                "{listed}"
            );
            listed
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in {listed}"))
                .to_string()
        }
    };
    assert!(list_row().await.ends_with("never"), "not used yet");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret_version = secrets
        .get(&format!("kube-scim-token-{name}"))
        .await
        .expect("token Secret")
        .resource_version();
    let http = reqwest::Client::new();
    let url = format!("{}/ServiceProviderConfig", op.base_url);
    poll_until(TIMEOUT, "the new token accepted", || async {
        let r = http.get(&url).bearer_auth(&token).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease_name = kube_scim::auth::usage::lease_name(&name);
    let lease = poll_until(TIMEOUT, "the use Lease", || async {
        leases.get_opt(&lease_name).await.ok().flatten()
    })
    .await;
    let used = kube_scim::auth::usage::last_use(&lease).expect("renewTime");
    let age = chrono::Utc::now() - used;
    assert!(
        age < chrono::TimeDelta::seconds(30) && age > chrono::TimeDelta::seconds(-30),
        "{used}"
    );
    assert_eq!(
        lease
            .annotations()
            .get("scim.kubescim.io/token-name")
            .map(String::as_str),
        Some(name.as_str())
    );
    // A burst of requests within the minute: no more writes.
    for _ in 0..20 {
        let r = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200);
    }
    let row = list_row().await;
    assert!(
        row.contains(&used.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            && row.ends_with(" ago)"),
        "{row}"
    );
    let after = leases.get(&lease_name).await.expect("use Lease");
    assert_eq!(
        after.resource_version(),
        lease.resource_version(),
        "one record per minute, not one per request"
    );
    // The Secret was never written.
    assert_eq!(
        secrets
            .get(&format!("kube-scim-token-{name}"))
            .await
            .expect("token Secret")
            .resource_version(),
        secret_version
    );

    // Expiry as a metric, labelled with the token's name.
    let expires_at = chrono::DateTime::parse_from_rfc3339(
        secrets
            .get(&format!("kube-scim-token-{name}"))
            .await
            .expect("token Secret")
            .annotations()
            .get("scim.kubescim.io/expires-at")
            .expect("expiry"),
    )
    .expect("RFC 3339")
    .timestamp();
    let series = format!("kube_scim_token_expiry_timestamp_seconds{{token=\"{name}\"}}");
    let metrics_url = format!("{}/metrics", op.probe_url);
    let metrics = || {
        let (http, metrics_url) = (http.clone(), metrics_url.clone());
        async move { http.get(&metrics_url).send().await.ok()?.text().await.ok() }
    };
    poll_until(TIMEOUT, "the expiry metric", || async {
        metrics()
            .await?
            .contains(&format!("{series} {expires_at}"))
            .then_some(())
    })
    .await;

    // Revoked: the record and the series go with the token.
    let out = cli(args(&["token", "revoke", &name], &ns)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(leases.get_opt(&lease_name).await.expect("get").is_none());
    poll_until(TIMEOUT, "the expiry series removed", || async {
        (!metrics().await?.contains(&series)).then_some(())
    })
    .await;
}
