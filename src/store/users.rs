//! ScimUser reads and writes.
use std::sync::Arc;

use kube::api::{Api, PostParams};
use serde_json::{Map, Value};

use super::index::{self, USER_EMAIL, USER_NAME};
use super::names::NameKind;
use super::resource::{self, ResourceMeta};
use super::{
    api_error, confirm_if_match, delete_checked, fetch_opt, is_conflict, objects, probe,
    read_index, rv_at_least, sort_default, with_timeout, Probe, Store, FIELD_MANAGER,
    MAX_CONFLICT_RETRIES,
};
use crate::crd::{ScimUser, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::scim::error::ScimError;

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
    /// server (see [`Store::confirm_user_probes`]).
    pub async fn users_probed(&self, probes: &[Probe]) -> Result<Vec<Arc<ScimUser>>, ScimError> {
        self.ensure_synced()?;
        let mut probes = probes.to_vec();
        if probes
            .iter()
            .any(|p| matches!(p, Probe::Field(f, _) if *f == USER_EMAIL))
        {
            probes.push(Probe::Field(USER_EMAIL, index::ODD_EMAIL.to_string()));
        }
        let mut found = probe(&self.inner.users, &self.inner.user_index, &probes);
        let missed = self.confirm_user_probes(&probes, &found).await?;
        if !missed.is_empty() {
            found.extend(missed);
            sort_default(&mut found);
        }
        Ok(found)
    }

    /// The users behind the `id` and `userName` probes that the cache has no answer for,
    /// as the API server has them: a user created a moment ago through another replica
    /// (Entra looks it up by id or userName next, and an empty answer makes it create the
    /// user again, which then fails as a duplicate). A userName leads to its id through the
    /// cluster-wide name claim (see `names`). Costs API calls only on a miss; Entra's
    /// lookup before each create is one (a Lease GET, usually 404).
    async fn confirm_user_probes(
        &self,
        probes: &[Probe],
        found: &[Arc<ScimUser>],
    ) -> Result<Vec<Arc<ScimUser>>, ScimError> {
        let mut out: Vec<Arc<ScimUser>> = Vec::new();
        let known = |id: &str, out: &[Arc<ScimUser>]| {
            self.inner.users.contains(id)
                || out.iter().any(|u| u.metadata.name.as_deref() == Some(id))
        };
        for p in probes {
            let fetched = match p {
                Probe::Id(id) if !known(id, &out) => {
                    fetch_opt(&self.users_api(), id, "User").await?
                }
                Probe::Field(USER_NAME, key)
                    if !found
                        .iter()
                        .any(|u| u.spec.user_name.to_lowercase() == *key) =>
                {
                    match self.name_holder(NameKind::UserName, key).await? {
                        Some(holder) if !known(&holder, &out) => {
                            fetch_opt(&self.users_api(), &holder, "User")
                                .await?
                                .filter(|u| u.spec.user_name.to_lowercase() == *key)
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            out.extend(fetched);
        }
        Ok(out)
    }

    /// The user `id` from the cache; on a miss, from the API server (404 only when it has
    /// none either: see [`fetch_opt`]).
    pub async fn user(&self, id: &str) -> Result<Arc<ScimUser>, ScimError> {
        self.ensure_synced()?;
        if let Some(u) = self.inner.users.get(id) {
            return Ok(u);
        }
        fetch_opt(&self.users_api(), id, "User")
            .await?
            .ok_or_else(|| ScimError::not_found(format!("User {id} not found")))
    }

    /// Whether a user other than `except_id` holds `user_name` (case-insensitively). The
    /// cache answers "free" (the cluster-wide name claim then settles races with other
    /// replicas); "taken" is confirmed against the API server first, because the holder
    /// may have been deleted or renamed through another replica a moment ago.
    async fn user_name_taken(
        &self,
        user_name: &str,
        except_id: Option<&str>,
    ) -> Result<bool, ScimError> {
        // Equal ignoring ASCII case implies equal lower-cased, so the index finds them all.
        let key = user_name.to_lowercase();
        let holders: Vec<String> = probe(
            &self.inner.users,
            &self.inner.user_index,
            &[Probe::Field(USER_NAME, key)],
        )
        .iter()
        .filter(|u| {
            u.spec.user_name.eq_ignore_ascii_case(user_name)
                && u.metadata.name.as_deref() != except_id
        })
        .filter_map(|u| u.metadata.name.clone())
        .collect();
        for holder in holders {
            let now = fetch_opt(&self.users_api(), &holder, "User").await?;
            if now.is_some_and(|u| u.spec.user_name.eq_ignore_ascii_case(user_name)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub async fn create_user(&self, attrs: Map<String, Value>) -> Result<Arc<ScimUser>, ScimError> {
        self.ensure_synced()?;
        let spec = resource::user_spec(attrs)?;
        let _claim = self.claim(format!("user:{}", spec.user_name.to_lowercase()))?;
        if self.user_name_taken(&spec.user_name, None).await? {
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
                if self.user_name_taken(&spec.user_name, Some(id)).await? {
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
        let by_name = |key: &str| Probe::Field(USER_NAME, key.to_string());
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
        assert!(store.user_name_taken("ann@X", None).await.unwrap());
        assert!(!store.user_name_taken("ann@X", Some("u-1")).await.unwrap());
        feed.api_has("scimusers", &user("u-1", "ann.renamed@x"));
        assert!(!store.user_name_taken("ann@x", None).await.unwrap());
        feed.api_lacks("scimusers", "u-1");
        assert!(!store.user_name_taken("ann@x", None).await.unwrap());
    }
}
