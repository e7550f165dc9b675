//! Two replicas serve SCIM side by side (the chart runs two): a create retried against
//! the other replica while the first is still writing must not make a duplicate.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{http_status, kubeconfig_path, operator, unique};

/// A second `kube-scim run` sharing the shared operator's namespace (tokens, claims).
struct Replica {
    base_url: String,
    _child: Child,
}

fn start_replica(namespace: &str) -> Replica {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let probe = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/e2e-replica-{namespace}.log"));
    let log = std::fs::File::create(log).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_kube-scim"))
        .env("KUBECONFIG", kubeconfig_path())
        .args([
            "run",
            "--exit-on-stdin-eof",
            "--enable-controller=false",
            "--namespace",
            namespace,
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--probe-listen",
            &format!("127.0.0.1:{probe}"),
        ])
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn replica");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(&format!("http://127.0.0.1:{probe}/readyz")) != Some(200) {
        assert!(Instant::now() < deadline, "replica not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    Replica {
        base_url: format!("http://127.0.0.1:{port}/scim/v2"),
        _child: child,
    }
}

#[tokio::test]
async fn same_create_on_two_replicas_makes_one_resource() {
    let op = operator().await;
    let ns = op.namespace.clone();
    let replica = tokio::task::spawn_blocking(move || start_replica(&ns))
        .await
        .expect("replica");
    let http = reqwest::Client::new();
    let bases = [op.base_url.clone(), replica.base_url.clone()];

    for round in 0..5 {
        let user_name = format!("{}@example.com", unique(&format!("twin{round}")));
        let display_name = unique(&format!("Twin Group {round}"));
        // The same user and group posted to both replicas at once, several times each.
        let mut requests = Vec::new();
        for i in 0..6 {
            let base = bases[i % 2].clone();
            let (http, token) = (http.clone(), op.token.clone());
            let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                              "userName": if i % 3 == 0 { user_name.to_uppercase() } else { user_name.clone() }});
            let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": display_name});
            requests.push(tokio::spawn(async move {
                let u = http
                    .post(format!("{base}/Users"))
                    .bearer_auth(&token)
                    .json(&user)
                    .send()
                    .await
                    .expect("POST");
                let g = http
                    .post(format!("{base}/Groups"))
                    .bearer_auth(&token)
                    .json(&group)
                    .send()
                    .await
                    .expect("POST");
                (u.status().as_u16(), g.status().as_u16())
            }));
        }
        let mut statuses = Vec::new();
        for r in requests {
            statuses.push(r.await.expect("request"));
        }
        let users_created = statuses.iter().filter(|(u, _)| *u == 201).count();
        let groups_created = statuses.iter().filter(|(_, g)| *g == 201).count();
        assert_eq!(
            users_created, 1,
            "exactly one userName create wins: {statuses:?}"
        );
        assert_eq!(
            groups_created, 1,
            "exactly one displayName create wins: {statuses:?}"
        );
        assert!(
            statuses
                .iter()
                .all(|(u, g)| [201, 409].contains(u) && [201, 409].contains(g)),
            "{statuses:?}"
        );

        // And both replicas agree there is one of each.
        for base in &bases {
            let filter = format!("userName eq \"{user_name}\"");
            let list: serde_json::Value = http
                .get(format!("{base}/Users"))
                .query(&[("filter", filter.as_str())])
                .bearer_auth(&op.token)
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("json");
            assert_eq!(list["totalResults"], 1, "{list}");
        }
    }
}
