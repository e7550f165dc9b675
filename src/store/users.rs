//! ScimUser reads and writes.
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde_json::{Map, Value};

use super::index::{self, USER_EMAIL};
use super::names::NameKind;
use super::resource::{self, ResourceMeta};
use super::{
    api_error, confirm_if_match, delete_checked, is_conflict, objects, read_index, rv_at_least,
    with_timeout, Probe, Store, FIELD_MANAGER, MAX_CONFLICT_RETRIES, USERS,
};
use crate::crd::{
    user_partition, ScimUser, MANAGED_BY_LABEL, MANAGED_BY_VALUE, USER_PARTITION_LABEL,
};
use crate::scim::error::ScimError;

/// Give the user `id` its [`USER_PARTITION_LABEL`] unless it has one.
fn label_partition(meta: &mut ObjectMeta, id: &str) {
    meta.labels
        .get_or_insert_with(Default::default)
        .entry(USER_PARTITION_LABEL.to_string())
        .or_insert_with(|| user_partition(id));
}

fn post_params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_string()),
    }
}

impl Store {
    fn users_api(&self) -> Api<ScimUser> {
        Api::all(self.client().clone())
    }

    /// Every user in the cache, in no particular order.
    pub fn users(&self) -> Result<Vec<Arc<ScimUser>>, ScimError> {
        self.ensure_synced()?;
        Ok(self.inner.users.state())
    }

    /// Every user in the default list order (SCIM `meta.created`, then id).
    pub fn users_ordered(&self) -> Result<Vec<Arc<ScimUser>>, ScimError> {
        self.ensure_synced()?;
        let ids = read_index(&self.inner.user_index).ordered();
        Ok(objects(&self.inner.users, &ids))
    }

    /// The number of users, without touching any of them.
    pub fn user_count(&self) -> Result<usize, ScimError> {
        self.ensure_synced()?;
        Ok(read_index(&self.inner.user_index).len())
    }

    /// Users `skip..skip + take` in the default list order: O(skip + take).
    pub fn users_page(&self, skip: usize, take: usize) -> Result<Vec<Arc<ScimUser>>, ScimError> {
        self.ensure_synced()?;
        let ids = read_index(&self.inner.user_index).page(skip, take);
        Ok(objects(&self.inner.users, &ids))
    }

    /// Users that may satisfy one of `probes` (fields `index::USER_*`; a superset, the
    /// caller checks the attributes), in the default list order. O(hits). An `id` or
    /// `userName` probe that finds nothing in the cache is confirmed against the API
    /// server (see [`Store::probed`]).
    pub async fn users_probed(&self, probes: &[Probe]) -> Result<Vec<Arc<ScimUser>>, ScimError> {
        self.ensure_synced()?;
        let mut probes = probes.to_vec();
        if probes
            .iter()
            .any(|p| matches!(p, Probe::Field(f, _) if *f == USER_EMAIL))
        {
            probes.push(Probe::Field(USER_EMAIL, index::ODD_EMAIL.to_string()));
        }
        self.probed(&USERS, &probes).await
    }

    /// The user `id` from the cache; on a miss, from the API server.
    pub async fn user(&self, id: &str) -> Result<Arc<ScimUser>, ScimError> {
        self.confirmed(&USERS, id).await
    }

    pub async fn create_user(&self, attrs: Map<String, Value>) -> Result<Arc<ScimUser>, ScimError> {
        self.ensure_synced()?;
        let spec = resource::user_spec(attrs)?;
        let _claim = self.claim(format!("user:{}", spec.user_name.to_lowercase()))?;
        if self.name_taken(&USERS, &spec.user_name, None).await? {
            return Err(ScimError::uniqueness(format!(
                "userName {:?} is already in use",
                spec.user_name
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.claim_name(NameKind::UserName, &spec.user_name, &id)
            .await?;
        let user_name = spec.user_name.clone();
        let mut user = ScimUser::new(&id, spec);
        user.metadata.labels =
            Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into());
        label_partition(&mut user.metadata, &id);
        resource::stamp(&mut user.metadata, 1, None);
        let created = with_timeout(self.users_api().create(&post_params(), &user))
            .await
            .and_then(|r| r.map_err(|e| api_error(e, "User")));
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                // The name stays free for the client's retry.
                self.release_name(NameKind::UserName, &user_name, &id).await;
                return Err(e);
            }
        };
        self.await_user(&created).await;
        Ok(Arc::new(created))
    }

    /// Apply `change` to the current attributes of a user, with optimistic concurrency:
    /// on a conflict the user is re-read from the API server and `change` applied again.
    /// `change` returns `None` when nothing changes (no write, version unchanged).
    pub async fn update_user(
        &self,
        id: &str,
        if_match: Option<&str>,
        mut change: impl FnMut(&Map<String, Value>) -> Result<Option<Map<String, Value>>, ScimError>,
    ) -> Result<Arc<ScimUser>, ScimError> {
        // A stale cached version fails the write's resourceVersion precondition and is
        // re-read below; a missing one is read from the API server here.
        let mut current = self.user(id).await?;
        for _ in 0..MAX_CONFLICT_RETRIES {
            confirm_if_match(&self.users_api(), &mut current, id, if_match, "User").await?;
            let meta = ResourceMeta::of(&current.metadata);
            let attrs = resource::user_attributes(&current);
            let Some(new_attrs) = change(&attrs)? else {
                return Ok(current);
            };
            let spec = resource::user_spec(new_attrs)?;
            if spec == current.spec {
                return Ok(current);
            }
            let renamed = !spec.user_name.eq_ignore_ascii_case(&current.spec.user_name);
            let _claim = if renamed {
                let claim = self.claim(format!("user:{}", spec.user_name.to_lowercase()))?;
                if self.name_taken(&USERS, &spec.user_name, Some(id)).await? {
                    return Err(ScimError::uniqueness(format!(
                        "userName {:?} is already in use",
                        spec.user_name
                    )));
                }
                self.claim_name(NameKind::UserName, &spec.user_name, id)
                    .await?;
                Some(claim)
            } else {
                None
            };
            let (old_name, new_name) = (current.spec.user_name.clone(), spec.user_name.clone());
            let mut obj = (*current).clone();
            obj.spec = spec;
            obj.status = None;
            // Users written before the partition label get it with their next change.
            label_partition(&mut obj.metadata, id);
            resource::stamp(&mut obj.metadata, meta.version + 1, Some(&meta.created));
            match with_timeout(self.users_api().replace(id, &post_params(), &obj)).await {
                Ok(Ok(written)) => {
                    if renamed {
                        self.release_name(NameKind::UserName, &old_name, id).await;
                    }
                    self.await_user(&written).await;
                    return Ok(Arc::new(written));
                }
                Ok(Err(e)) if is_conflict(&e) => {
                    current = Arc::new(self.fetch_user(id).await?);
                }
                Ok(Err(e)) => {
                    if renamed {
                        self.release_name(NameKind::UserName, &new_name, id).await;
                    }
                    return Err(api_error(e, "User"));
                }
                Err(e) => {
                    if renamed {
                        self.release_name(NameKind::UserName, &new_name, id).await;
                    }
                    return Err(e);
                }
            }
        }
        Err(ScimError::Unavailable {
            retry_after_secs: 1,
            detail: "too many concurrent changes to this User; retry".into(),
        })
    }

    async fn fetch_user(&self, id: &str) -> Result<ScimUser, ScimError> {
        with_timeout(self.users_api().get(id))
            .await?
            .map_err(|e| api_error(e, &format!("User {id}")))
    }

    /// Delete a user. With If-Match the delete carries a resourceVersion precondition;
    /// the controller's status writes change the resourceVersion but not the SCIM
    /// version, so on a conflict the user is re-read and If-Match checked again.
    pub async fn delete_user(&self, id: &str, if_match: Option<&str>) -> Result<(), ScimError> {
        let current = self.user(id).await?;
        let user_name = current.spec.user_name.clone();
        delete_checked(&self.users_api(), current, id, if_match, "User").await?;
        self.release_name(NameKind::UserName, &user_name, id).await;
        let id = id.to_string();
        self.wait_for_cache(|inner| !inner.users.contains(&id))
            .await;
        Ok(())
    }

    async fn await_user(&self, written: &ScimUser) {
        let Some(rv) = written.metadata.resource_version.clone() else {
            return;
        };
        let id = written.metadata.name.clone().unwrap_or_default();
        self.wait_for_cache(|inner| {
            inner
                .users
                .get(&id)
                .is_some_and(|u| rv_at_least(u.metadata.resource_version.as_deref(), &rv))
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ScimUserSpec;
    use crate::store::names::claim_name;
    use crate::store::TestFeed;
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use kube::runtime::watcher;

    fn user(id: &str, user_name: &str) -> ScimUser {
        let mut u = ScimUser::new(
            id,
            ScimUserSpec {
                user_name: user_name.into(),
                external_id: None,
                display_name: None,
                active: Some(true),
                attributes: Map::new(),
            },
        );
        u.metadata.annotations = Some(Default::default());
        u
    }

    fn claim(user_name: &str, holder: &str) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.name = Some(claim_name(NameKind::UserName, user_name));
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            ..LeaseSpec::default()
        });
        lease
    }

    fn ids(users: &[Arc<ScimUser>]) -> Vec<&str> {
        users
            .iter()
            .filter_map(|u| u.metadata.name.as_deref())
            .collect()
    }

    /// A relist split in several requests hands on a user that moved between them once
    /// per version (`crate::watch`): the index keeps only the last.
    #[tokio::test]
    async fn a_user_relisted_twice_is_indexed_once_as_last_seen() {
        let mut feed = TestFeed::new(vec![], vec![]);
        feed.user(watcher::Event::Init);
        feed.user(watcher::Event::InitApply(user("u1", "old@x")));
        feed.user(watcher::Event::InitApply(user("u2", "other@x")));
        feed.user(watcher::Event::InitApply(user("u1", "new@x")));
        feed.user(watcher::Event::InitDone);
        let store = &feed.store;
        assert_eq!(store.user_count().unwrap(), 2);
        assert_eq!(ids(&store.users_page(0, 10).unwrap()).len(), 2);
        let by_name = |key: &str| Probe::Field(index::USER_NAME, key.to_string());
        let found = store.users_probed(&[by_name("new@x")]).await.unwrap();
        assert_eq!(ids(&found), ["u1"]);
        feed.api_lacks("scimusers", "u1");
        let found = store.users_probed(&[by_name("old@x")]).await.unwrap();
        assert!(found.is_empty(), "{:?}", ids(&found));
    }

    /// Issue 10, item 3: a user created through another replica, not yet in this one's
    /// cache, is found by id and by userName; what the API server doesn't have stays 404.
    #[tokio::test]
    async fn a_cache_miss_is_answered_from_the_api_server() {
        let feed = TestFeed::new(vec![user("u-cached", "cached@x")], vec![]);
        let store = &feed.store;
        feed.api_has("scimusers", &user("u-fresh", "Fresh@X"));
        feed.api_has("leases", &claim("fresh@x", "u-fresh"));

        assert_eq!(
            store.user("u-fresh").await.unwrap().spec.user_name,
            "Fresh@X"
        );
        for missing in ["u-none", "Not/A Name"] {
            let e = store.user(missing).await.unwrap_err();
            assert!(matches!(e, ScimError::NotFound(_)), "{e:?}");
        }
        let by_name = |key: &str| Probe::Field(index::USER_NAME, key.to_string());
        let found = store.users_probed(&[by_name("fresh@x")]).await.unwrap();
        assert_eq!(ids(&found), ["u-fresh"]);
        let found = store
            .users_probed(&[Probe::Id("u-fresh".into()), by_name("fresh@x")])
            .await
            .unwrap();
        assert_eq!(ids(&found), ["u-fresh"], "found once");
        // A cache hit asks nothing; a name nobody claimed is a miss the API confirms.
        let found = store
            .users_probed(&[by_name("cached@x"), by_name("nobody@x")])
            .await
            .unwrap();
        assert_eq!(ids(&found), ["u-cached"]);
        // A claim whose holder has another name now (renamed) finds nothing.
        feed.api_has("leases", &claim("old@x", "u-fresh"));
        assert!(store
            .users_probed(&[by_name("old@x")])
            .await
            .unwrap()
            .is_empty());

        // Unreachable: hits are served, misses are a 503, never a false "not found".
        let cut_off = TestFeed::unreachable(vec![user("u-cached", "cached@x")], vec![]);
        assert!(cut_off.store.user("u-cached").await.is_ok());
        let e = cut_off.store.user("u-fresh").await.unwrap_err();
        assert!(matches!(e, ScimError::Unavailable { .. }), "{e:?}");
    }

    /// A name the cache says is taken is confirmed: its holder may be gone or renamed.
    #[tokio::test]
    async fn taken_names_are_confirmed_with_the_api_server() {
        let feed = TestFeed::new(vec![user("u-1", "Ann@x")], vec![]);
        let store = &feed.store;
        assert!(store.name_taken(&USERS, "ann@X", None).await.unwrap());
        assert!(!store
            .name_taken(&USERS, "ann@X", Some("u-1"))
            .await
            .unwrap());
        feed.api_has("scimusers", &user("u-1", "ann.renamed@x"));
        assert!(!store.name_taken(&USERS, "ann@x", None).await.unwrap());
        feed.api_lacks("scimusers", "u-1");
        assert!(!store.name_taken(&USERS, "ann@x", None).await.unwrap());
    }
}
