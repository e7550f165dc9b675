//! ScimUser reads and writes.
use std::sync::Arc;

use kube::api::{Api, PostParams};
use serde_json::{Map, Value};

use super::index::{self, USER_EMAIL, USER_NAME};
use super::names::NameKind;
use super::resource::{self, ResourceMeta};
use super::{
    api_error, confirm_if_match, delete_checked, is_conflict, objects, probe, read_index,
    rv_at_least, with_timeout, Probe, Store, FIELD_MANAGER, MAX_CONFLICT_RETRIES,
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
    /// caller checks the attributes), in the default list order. O(hits).
    pub fn users_probed(&self, probes: &[Probe]) -> Result<Vec<Arc<ScimUser>>, ScimError> {
        self.ensure_synced()?;
        let mut probes = probes.to_vec();
        if probes
            .iter()
            .any(|p| matches!(p, Probe::Field(f, _) if *f == USER_EMAIL))
        {
            probes.push(Probe::Field(USER_EMAIL, index::ODD_EMAIL.to_string()));
        }
        Ok(probe(&self.inner.users, &self.inner.user_index, &probes))
    }

    pub fn user(&self, id: &str) -> Result<Arc<ScimUser>, ScimError> {
        self.ensure_synced()?;
        self.inner
            .users
            .get(id)
            .ok_or_else(|| ScimError::not_found(format!("User {id} not found")))
    }

    /// The user holding `user_name` (case-insensitively), other than `except_id`.
    fn user_name_taken(&self, user_name: &str, except_id: Option<&str>) -> bool {
        // Equal ignoring ASCII case implies equal lower-cased, so the index finds them all.
        let key = user_name.to_lowercase();
        probe(
            &self.inner.users,
            &self.inner.user_index,
            &[Probe::Field(USER_NAME, key)],
        )
        .iter()
        .any(|u| {
            u.spec.user_name.eq_ignore_ascii_case(user_name)
                && u.metadata.name.as_deref() != except_id
        })
    }

    pub async fn create_user(&self, attrs: Map<String, Value>) -> Result<Arc<ScimUser>, ScimError> {
        self.ensure_synced()?;
        let spec = resource::user_spec(attrs)?;
        let _claim = self.claim(format!("user:{}", spec.user_name.to_lowercase()))?;
        if self.user_name_taken(&spec.user_name, None) {
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
        let mut current = self.user(id)?;
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
                if self.user_name_taken(&spec.user_name, Some(id)) {
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
        let current = self.user(id)?;
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
