//! What one revocation's writes cost the API server, by request shape (not part of the
//! test suite; run by hand, figures in docs/scale.md "Revocation writes").
//!
//! Creates `NAMESPACES` namespaces `pb-<i>`, each with one RoleBinding "part" of
//! `SUBJECTS` User subjects (~100 bytes each, as the controller's parts), then, per
//! round and variant, removes the first subject from every namespace's part at once
//! (`CONCURRENCY` in flight, as the fast lane does) and polls a SubjectAccessReview for
//! that user in one of the namespaces until the authorizer denies. Prints, per variant,
//! the median and last acknowledgement of the round's writes, and the denial.
//!
//!   cargo run --release --example revocation-writes -- \
//!       [NAMESPACES=100] [SUBJECTS=80] [ROUNDS=10] [CONCURRENCY=32] [VARIANTS=typed,put]
//!
//! Variants: `typed` (JSON patch, as kube's typed API sends it), `rawjson` (the same
//! patch, response not decoded), `proto` (the same, protobuf response), `nofm` (no
//! fieldManager), `put` (a replace of the whole object), `merge` (a merge patch of the
//! whole subject list). `NOWATCH=1` leaves out the RoleBinding watch the controller
//! would hold. Uses the current kubeconfig; leaves the namespaces behind.
use std::time::{Duration, Instant};

use futures::{stream, StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use serde_json::json;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let nss: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(100);
    let subjects: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(80);
    let rounds: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10);
    let conc: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(32);
    let variants: Vec<String> = args
        .get(5)
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or(vec!["typed".into(), "proto".into(), "rawjson".into()]);
    let client = Client::try_default().await?;
    let pp = PostParams::default();
    // Setup.
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for i in 0..nss {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(format!("pb-{i}"));
        let _ = nsapi.create(&pp, &ns).await;
    }
    let subj = |j: usize| Subject {
        kind: "User".into(),
        name: format!("bench-user-{j:06}@bench.example.com"),
        api_group: Some("rbac.authorization.k8s.io".into()),
        namespace: None,
    };
    let total = subjects + rounds * variants.len();
    let mut names: Vec<String> = (0..total).map(|j| subj(j).name).collect();
    for i in 0..nss {
        let api: Api<RoleBinding> = Api::namespaced(client.clone(), &format!("pb-{i}"));
        let _ = api.delete("part", &Default::default()).await;
    }
    for i in 0..nss {
        let api: Api<RoleBinding> = Api::namespaced(client.clone(), &format!("pb-{i}"));
        let mut rb = RoleBinding::default();
        rb.metadata.name = Some("part".into());
        rb.role_ref = RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "view".into(),
        };
        rb.subjects = Some((0..total).map(subj).collect());
        api.create(&pp, &rb).await?;
    }
    // Our own binding watch, as the controller has.
    let w = client.clone();
    if std::env::var("NOWATCH").is_err() {
        tokio::spawn(async move {
            let api: Api<RoleBinding> = Api::all(w);
            let s = watcher(api, watcher::Config::default());
            futures::pin_mut!(s);
            while let Ok(Some(_)) = s.try_next().await {}
        });
    }
    let mut gaps: std::collections::BTreeMap<String, Vec<(Duration, Duration)>> =
        Default::default();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut results: std::collections::BTreeMap<String, Vec<(Duration, Duration)>> =
        Default::default();
    for r in 0..rounds {
        for v in &variants {
            let victim = names[0].clone();
            let ops = json!([
                {"op": "test", "path": "/subjects/0/name", "value": victim},
                {"op": "test", "path": "/subjects/0/kind", "value": "User"},
                {"op": "remove", "path": "/subjects/0"}
            ]);
            names.remove(0);
            let remaining: Vec<Subject> = names
                .iter()
                .map(|n| Subject {
                    kind: "User".into(),
                    name: n.clone(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    namespace: None,
                })
                .collect();
            let t = Instant::now();
            let acks: Vec<(usize, Duration)> = stream::iter(0..nss)
                .map(|i| {
                    let client = client.clone();
                    let ops = ops.clone();
                    let v = v.clone();
                    let remaining = remaining.clone();
                    async move {
                        let ns = format!("pb-{i}");
                        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
                        let params = PatchParams { field_manager: Some("kube-scim".into()), ..Default::default() };
                        match v.as_str() {
                            "typed" => {
                                Api::<RoleBinding>::namespaced(client, &ns).patch("part", &params, &Patch::<()>::Json(patch)).await.unwrap();
                            }
                            "proto" | "rawjson" | "nofm" => {
                                let params = if v == "nofm" { PatchParams::default() } else { params };
                                let req = kube::core::Request::new(format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"));
                                let mut req = req.patch("part", &params, &Patch::<()>::Json(patch)).unwrap();
                                if v == "proto" {
                                    req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static("application/vnd.kubernetes.protobuf"));
                                }
                                let res = client.send(req.map(kube::client::Body::from)).await.unwrap();
                                let st = res.status();
                                let _b = res.into_body().collect().await.unwrap().to_bytes();
                                assert!(st.is_success(), "{st}");
                            }
                            "put" => {
                                let mut rb = RoleBinding::default();
                                rb.metadata.name = Some("part".into());
                                rb.role_ref = RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: "view".into() };
                                rb.subjects = Some(remaining);
                                let req = kube::core::Request::new(format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"));
                                let mut req = req.replace("part", &PostParams { dry_run: false, field_manager: Some("kube-scim".into()) }, serde_json::to_vec(&rb).unwrap()).unwrap();
                                req.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static("application/vnd.kubernetes.protobuf"));
                                let res = client.send(req.map(kube::client::Body::from)).await.unwrap();
                                let st = res.status();
                                let _b = res.into_body().collect().await.unwrap().to_bytes();
                                assert!(st.is_success(), "{st}");
                            }
                            "merge" => {
                                let body = json!({"subjects": remaining});
                                Api::<RoleBinding>::namespaced(client, &ns).patch("part", &params, &Patch::Merge(body)).await.unwrap();
                            }
                            _ => panic!("variant"),
                        }
                        (i, t.elapsed())
                    }
                })
                .buffer_unordered(conc)
                .collect()
                .await;
            let polled = (r * 37) % nss;
            let ack_polled = acks.iter().find(|a| a.0 == polled).unwrap().1;
            // poll SAR until denied (started right away would be better, but the acks are in).
            loop {
                use k8s_openapi::api::authorization::v1::{
                    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
                };
                let sar = SubjectAccessReview {
                    spec: SubjectAccessReviewSpec {
                        user: Some(victim.clone()),
                        resource_attributes: Some(ResourceAttributes {
                            namespace: Some(format!("pb-{polled}")),
                            verb: Some("get".into()),
                            resource: Some("configmaps".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let res = Api::<SubjectAccessReview>::all(client.clone())
                    .create(&PostParams::default(), &sar)
                    .await
                    .unwrap();
                if !res.status.map(|s| s.allowed).unwrap_or(false) {
                    break;
                }
            }
            let denied = t.elapsed();
            gaps.entry(v.clone())
                .or_default()
                .push((ack_polled, denied));
            let mut acks: Vec<Duration> = acks.into_iter().map(|a| a.1).collect();
            acks.sort();
            results
                .entry(v.clone())
                .or_default()
                .push((acks[acks.len() / 2], acks[acks.len() - 1]));
            let _ = r;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for (v, gaps) in &gaps {
        let mut g: Vec<_> = gaps.iter().map(|(a, d)| d.saturating_sub(*a)).collect();
        g.sort();
        let mut dn: Vec<_> = gaps.iter().map(|(_, d)| *d).collect();
        dn.sort();
        println!(
            "{v:8} polled namespace denied p50 {:>7.1?} | after its own ack p50 {:>7.1?} max {:>7.1?}",
            dn[dn.len() / 2],
            g[g.len() / 2],
            g[g.len() - 1]
        );
    }
    for (v, rs) in &results {
        let mut med: Vec<_> = rs.iter().map(|r| r.0).collect();
        let mut last: Vec<_> = rs.iter().map(|r| r.1).collect();
        med.sort();
        last.sort();
        println!(
            "{v:8} median-ack p50 {:>7.1?} | last-ack p50 {:>7.1?} min {:>7.1?} max {:>7.1?}",
            med[med.len() / 2],
            last[last.len() / 2],
            last[0],
            last[last.len() - 1]
        );
    }
    Ok(())
}
