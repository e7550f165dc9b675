//! SubjectAccessReview I/O: answers each [`Check`] for the mapping's author the way the
//! API server's escalation check would. First `bind` on the role in the scope; failing
//! that, the role's rules, each permission asked as a SubjectAccessReview in the scope
//! ("holds its permissions"). `Need::Bind` checks only ask `bind`.
use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::api::{Api, PostParams};
use kube::Client;

use super::review::{Check, Finding, Need, Permission, Rule};
use crate::crd::RoleKind;

/// SubjectAccessReviews in flight per check.
const CONCURRENCY: usize = 16;
/// Missing permissions named in a refusal.
const SAMPLE: usize = 3;

/// The requesting user, from the AdmissionReview's userInfo.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Asking the API server failed (answered as a denial: the webhook fails closed).
#[derive(Debug, thiserror::Error)]
pub enum SarError {
    #[error("SubjectAccessReview failed: {0}")]
    Review(#[source] kube::Error),
    #[error("reading {what} failed: {source}")]
    ReadRole {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Answers checks with SubjectAccessReviews as the operator's ServiceAccount.
#[derive(Clone)]
pub struct Authorizer {
    client: Client,
}

impl Authorizer {
    pub fn new(client: Client) -> Authorizer {
        Authorizer { client }
    }

    /// The finding of every check, in order.
    pub async fn answer(
        &self,
        who: &Requester,
        checks: &[Check],
    ) -> Result<Vec<(Check, Finding)>, SarError> {
        let mut out = Vec::with_capacity(checks.len());
        for check in checks {
            out.push((check.clone(), self.finding(who, check).await?));
        }
        Ok(out)
    }

    async fn finding(&self, who: &Requester, check: &Check) -> Result<Finding, SarError> {
        let bind = ResourceAttributes {
            verb: Some("bind".into()),
            group: Some("rbac.authorization.k8s.io".into()),
            resource: Some(check.rbac_resource().into()),
            name: Some(check.role.clone()),
            namespace: Some(check.scope.sar_namespace().to_string()),
            ..Default::default()
        };
        if self.allowed(who, Some(bind), None).await? {
            return Ok(Finding::Bind);
        }
        if check.need == Need::Bind {
            return Ok(Finding::Missing(Vec::new()));
        }
        let Some(rules) = self.rules(check).await? else {
            return Ok(Finding::RoleNotFound);
        };
        let namespace = check.scope.sar_namespace().to_string();
        let perms = super::review::permissions(&rules);
        let mut answers = futures::stream::iter(perms.into_iter().map(|p| {
            let namespace = namespace.clone();
            async move {
                let (res, non) = attributes(&p, &namespace);
                self.allowed(who, res, non).await.map(|ok| (p, ok))
            }
        }))
        .buffered(CONCURRENCY);
        let mut missing = Vec::new();
        while let Some(answer) = answers.next().await {
            let (perm, ok) = answer?;
            if !ok {
                missing.push(perm.to_string());
                // One miss decides; a few more make the message useful.
                if missing.len() >= SAMPLE {
                    break;
                }
            }
        }
        if missing.is_empty() {
            Ok(Finding::HoldsPermissions)
        } else {
            Ok(Finding::Missing(missing))
        }
    }

    /// The role's rules, or None when it does not exist.
    async fn rules(&self, check: &Check) -> Result<Option<Vec<Rule>>, SarError> {
        let (what, rules) = match (check.kind, &check.role_namespace) {
            (RoleKind::Role, Some(ns)) => {
                let api: Api<Role> = Api::namespaced(self.client.clone(), ns);
                let what = format!("Role {ns}/{}", check.role);
                let role = api
                    .get_opt(&check.role)
                    .await
                    .map_err(|source| SarError::ReadRole {
                        what: what.clone(),
                        source,
                    })?;
                (what, role.map(|r| r.rules.unwrap_or_default()))
            }
            _ => {
                let api: Api<ClusterRole> = Api::all(self.client.clone());
                let what = format!("ClusterRole {}", check.role);
                let role = api
                    .get_opt(&check.role)
                    .await
                    .map_err(|source| SarError::ReadRole {
                        what: what.clone(),
                        source,
                    })?;
                (what, role.map(|r| r.rules.unwrap_or_default()))
            }
        };
        tracing::debug!(role = %what, found = rules.is_some(), "read role rules");
        Ok(rules.map(|rules| rules.iter().map(rule).collect()))
    }

    async fn allowed(
        &self,
        who: &Requester,
        resource_attributes: Option<ResourceAttributes>,
        non_resource_attributes: Option<NonResourceAttributes>,
    ) -> Result<bool, SarError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.username.clone()),
                uid: who.uid.clone(),
                groups: Some(who.groups.clone()),
                extra: (!who.extra.is_empty()).then(|| who.extra.clone()),
                resource_attributes,
                non_resource_attributes,
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(SarError::Review)?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

fn rule(r: &PolicyRule) -> Rule {
    Rule {
        verbs: r.verbs.clone(),
        api_groups: r.api_groups.clone().unwrap_or_default(),
        resources: r.resources.clone().unwrap_or_default(),
        resource_names: r.resource_names.clone().unwrap_or_default(),
        non_resource_urls: r.non_resource_urls.clone().unwrap_or_default(),
    }
}

fn attributes(
    p: &Permission,
    namespace: &str,
) -> (Option<ResourceAttributes>, Option<NonResourceAttributes>) {
    match p {
        Permission::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
        } => (
            Some(ResourceAttributes {
                verb: Some(verb.clone()),
                group: Some(group.clone()),
                resource: Some(resource.clone()),
                subresource: (!subresource.is_empty()).then(|| subresource.clone()),
                name: (!name.is_empty()).then(|| name.clone()),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            }),
            None,
        ),
        Permission::NonResource { verb, path } => (
            None,
            Some(NonResourceAttributes {
                verb: Some(verb.clone()),
                path: Some(path.clone()),
            }),
        ),
    }
}
