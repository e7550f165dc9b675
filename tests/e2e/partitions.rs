//! ScimUser watches can split their start-up list by the partition label into concurrent
//! requests (`--user-list-requests`, `src/watch.rs`). A replica starting that way on a
//! tenant must still see every user:
//! those without the label (written before it existed, or by hand), with a value outside
//! the buckets, or in a bucket that isn't theirs; and a user's first change through
//! SCIM gives it the label.
use kube::api::{Api, DeleteParams, PostParams};
use kube_scim::crd::{
    user_partition, ScimUser, ScimUserSpec, MANAGED_BY_LABEL, MANAGED_BY_VALUE, USER_PARTITIONS,
    USER_PARTITION_LABEL,
};
use serde_json::json;

use crate::harness::{
    admin_client, enc, kubeconfig_path, operator, scim, scim_client_at, spawn_operator,
    stored_user, unique, USER_SCHEMA,
};

fn partition_label(u: &ScimUser) -> Option<String> {
    u.metadata
        .labels
        .as_ref()?
        .get(USER_PARTITION_LABEL)
        .cloned()
}

#[tokio::test]
async fn a_starting_replica_lists_every_user_whatever_its_partition_label() {
    let op = operator().await;
    let s = scim().await;
    let api = Api::<ScimUser>::all(admin_client().await);
    let run = unique("partition");

    // Through SCIM: the store labels it.
    let name = format!("{run}-scim@example.com");
    let r = s
        .post(
            "/Users",
            &json!({"schemas": [USER_SCHEMA], "userName": name, "active": true}),
        )
        .await;
    r.created();
    let scim_id = r.id();
    let stored = stored_user(&scim_id).await.expect("stored");
    assert_eq!(
        partition_label(&stored),
        Some(user_partition(&scim_id)),
        "a created user carries its partition"
    );
    let mut users = vec![(scim_id.clone(), name)];

    // Straight through the API server: no label, out of range, not a number, a wrong bucket.
    let unlabelled = uuid::Uuid::new_v4().to_string();
    let wrong_bucket = {
        let id = uuid::Uuid::new_v4().to_string();
        let right: u32 = user_partition(&id).parse().expect("bucket");
        (id, ((right + 1) % USER_PARTITIONS).to_string())
    };
    let raw = [
        (unlabelled.clone(), None),
        (uuid::Uuid::new_v4().to_string(), Some("99".to_string())),
        (
            uuid::Uuid::new_v4().to_string(),
            Some("not-a-bucket".to_string()),
        ),
        (wrong_bucket.0, Some(wrong_bucket.1)),
    ];
    for (i, (id, label)) in raw.iter().enumerate() {
        let name = format!("{run}-raw{i}@example.com");
        let mut u = ScimUser::new(
            id,
            ScimUserSpec {
                user_name: name.clone(),
                external_id: None,
                display_name: None,
                active: Some(true),
                attributes: Default::default(),
            },
        );
        let mut labels = std::collections::BTreeMap::from([(
            MANAGED_BY_LABEL.to_string(),
            MANAGED_BY_VALUE.to_string(),
        )]);
        if let Some(l) = label {
            labels.insert(USER_PARTITION_LABEL.to_string(), l.clone());
        }
        u.metadata.labels = Some(labels);
        api.create(&PostParams::default(), &u)
            .await
            .expect("create ScimUser");
        users.push((id.clone(), name));
    }

    // A replica started now lists them all, and finds each through its index.
    let (ns, token) = (op.namespace.clone(), op.token.clone());
    let replica = tokio::task::spawn_blocking(move || {
        spawn_operator(
            kubeconfig_path(),
            &ns,
            &token,
            &["--enable-controller=false", "--user-list-requests", "8"],
        )
    })
    .await
    .expect("SCIM replica");
    let r = scim_client_at(&replica.base_url, &op.token);
    for (id, name) in &users {
        let got = r
            .get(&format!(
                "/Users?filter={}",
                enc(&format!("userName eq \"{name}\""))
            ))
            .await;
        got.expect(200);
        assert_eq!(got.body["totalResults"], 1, "{name}: {}", got.body);
        assert_eq!(got.body["Resources"][0]["id"], id.as_str(), "{name}");
    }

    // A user's first change labels it.
    r.patch_ops(
        &format!("/Users/{unlabelled}"),
        json!([{"op": "replace", "path": "displayName", "value": "Changed"}]),
    )
    .await
    .ok();
    let stored = stored_user(&unlabelled).await.expect("stored");
    assert_eq!(partition_label(&stored), Some(user_partition(&unlabelled)));

    for (id, _) in &users {
        let _ = api.delete(id, &DeleteParams::default()).await;
    }
}
