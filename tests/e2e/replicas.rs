//! Two replicas serve SCIM side by side (the chart runs two): a create retried against
//! the other replica while the first is still writing must not make a duplicate.
use serde_json::json;

use crate::harness::{kubeconfig_path, operator, spawn_operator, unique};

#[tokio::test]
async fn same_create_on_two_replicas_makes_one_resource() {
    let op = operator().await;
    // A second replica sharing the operator's namespace (tokens, name claims).
    let (ns, token) = (op.namespace.clone(), op.token.clone());
    let replica = tokio::task::spawn_blocking(move || {
        spawn_operator(
            kubeconfig_path(),
            &ns,
            &token,
            &["--enable-controller=false"],
        )
    })
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

        // And both replicas come to see exactly one (the one that didn't write it learns
        // of it through its watch), never two.
        for base in &bases {
            let filter = format!("userName eq \"{user_name}\"");
            crate::harness::poll_until(
                std::time::Duration::from_secs(20),
                "each replica to see the one user",
                || async {
                    let list: serde_json::Value = http
                        .get(format!("{base}/Users"))
                        .query(&[("filter", filter.as_str())])
                        .bearer_auth(&op.token)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    let total = list["totalResults"].as_u64()?;
                    assert!(total <= 1, "a duplicate appeared: {list}");
                    (total == 1).then_some(())
                },
            )
            .await;
        }
    }
}
